"""docker/: the Dockerfiles and compose.yaml, checked statically.

No docker daemon runs where the tests run, so nothing here builds or starts an image.
What is checked: compose.yaml is valid for the compose CLI when one is installed
(`docker compose` or Debian's `docker-compose`), brings up every part of the stack with
health checks and volumes, sets only environment variables our Settings know, and runs
only commands `squeezesam` has (parsed by the real argument parser); the Dockerfiles
follow the rules we care about (pinned base, non-root user, health check, no torch in
the serving image, CPU torch in the training image).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from squeezesam.backend.cli import build_parser
from squeezesam.backend.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
OURS = ("docker/Dockerfile", "docker/Dockerfile.train")
SETTINGS_ENV = {f.metadata["env"] for f in fields(Settings)}
COMPOSE_ENV = {"LS_TOKEN": "0" * 40, "LS_PASSWORD": "test"}  # the required ${...:?} vars


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def our_services(compose: dict) -> dict[str, dict]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if (svc.get("build") or {}).get("dockerfile") in OURS
    }


# --- Dockerfiles ------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", OURS)
def test_dockerfile_rules(dockerfile):
    steps = instructions(REPO / dockerfile)
    kinds = [k for k, _ in steps]
    [base] = [a for k, a in steps if k == "FROM"]
    # pinned: an exact python patch version, never latest or a bare major.minor
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT"), "USER before the entrypoint"
    assert "HEALTHCHECK" in kinds
    for _, arg in steps:
        if _ in ("COPY", "ADD"):
            for src in shlex.split(arg)[:-1]:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), f"{dockerfile} copies a missing {src}"


def test_the_serving_image_has_no_torch():
    runs = " ".join(a for k, a in instructions(DOCKER / "Dockerfile") if k == "RUN")
    assert "torch" not in runs.replace("find_spec('torch')", ""), "serving installs torch"
    assert "[train]" not in runs and re.search(r"pip install \.(\s|$)", runs), runs
    assert "find_spec('torch') is not None" in runs, "the build must prove torch is absent"


def test_the_training_image_has_cpu_torch_and_the_train_extra():
    runs = " ".join(a for k, a in instructions(DOCKER / "Dockerfile.train") if k == "RUN")
    pyproject = (REPO / "pyproject.toml").read_text()
    [pin] = re.findall(r'"(torch==[\d.]+)"', pyproject)
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in runs
    assert runs.index("download.pytorch.org") < runs.index("'.[train]'"), "torch first"


def test_the_build_context_leaves_out_the_heavy_and_private_parts():
    ignored = (REPO / ".dockerignore").read_text().split()
    for part in (".git", ".venv-labelstudio", "runs", "tests"):
        assert part in ignored or part + "/" in ignored, part


# --- compose.yaml --------------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_is_valid_for_the_compose_cli(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` or `docker-compose` here (.ci/run installs one)")
    import os

    env = os.environ | COMPOSE_ENV
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["services"]["interactive"]["deploy"]["replicas"] == 2


def test_compose_refuses_to_start_without_the_secrets(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI here")
    import os

    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    done = subprocess.run([*cli, "-f", str(COMPOSE), "config"], env=env, capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0 and "LS_TOKEN" in done.stderr + done.stdout


def test_compose_brings_up_the_whole_stack(compose):
    services = compose["services"]
    assert set(services) >= {
        "labelstudio", "redis", "web", "interactive", "preannotate", "trainer", "scheduler",
    }  # fmt: skip
    assert services["labelstudio"]["image"].startswith("heartexlabs/label-studio:1.23.")
    ls_env = services["labelstudio"]["environment"]
    for name, value in {
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
    }.items():
        assert ls_env[name] == value, name  # fmt: skip
    assert (
        ls_env["LABEL_STUDIO_USER_TOKEN"] == services["web"]["environment"]["LABEL_STUDIO_API_KEY"]
    ), "the backend must use the token Label Studio gives its user"
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["volumes"], "Redis persists to a volume"
    assert "replicas" in services["interactive"]["deploy"]
    assert services["trainer"]["build"]["dockerfile"] == "docker/Dockerfile.train"
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"].get("test"), f"{name}: no healthcheck"
    assert "/health" in " ".join(services["web"]["healthcheck"]["test"])
    for name, svc in our_services(compose).items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        env = svc["environment"]
        assert mounts.get(env["SQUEEZESAM_DATA_DIR"]) == "labels", name
        assert mounts.get(env["SQUEEZESAM_REGISTRY_DIR"]) == "registry", name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_compose_sets_only_settings_the_backend_knows(compose):
    for name, svc in our_services(compose).items():
        unknown = set(svc["environment"]) - SETTINGS_ENV
        assert not unknown, f"{name} sets {sorted(unknown)}, which Settings does not read"
    for dockerfile in OURS:
        for kind, arg in instructions(REPO / dockerfile):
            if kind == "ENV":
                names = {
                    n for n in re.findall(r"(\w+)=", arg) if not n.startswith(("PYTHON", "PIP_"))
                }
                unknown = sorted(names - SETTINGS_ENV)
                assert not unknown, f"{dockerfile} ENV {unknown}, which Settings does not read"


def _dockerfile_cmd(dockerfile: str) -> list[str]:
    import json

    steps = dict(instructions(REPO / dockerfile))
    assert json.loads(steps["ENTRYPOINT"]) == ["squeezesam"]
    return json.loads(steps["CMD"])


def test_every_command_is_a_squeezesam_command(compose):
    parser = build_parser()
    commands = {f"{n} (compose)": s["command"] for n, s in our_services(compose).items()}
    commands |= {f"{d} CMD": _dockerfile_cmd(d) for d in OURS}
    for where, argv in commands.items():
        try:
            args = parser.parse_args(argv)  # exits on an unknown command or flag
        except SystemExit:
            pytest.fail(f"{where}: `squeezesam {' '.join(argv)}` is not a valid command")
        assert getattr(args, "func", None), where
