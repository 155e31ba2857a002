"""docker/: the Dockerfiles and compose.yaml, checked statically.

Nothing here builds or starts an image: `docker/smoke.sh` (run by `.ci/run`) does that
with podman. What is checked here: compose.yaml is valid for the compose CLI when one is
installed (`docker compose` or Debian's `docker-compose`) and refuses to start without its
secrets, brings up every part of the stack with health checks and volumes, keeps Redis
off the host and Label Studio behind a profile, passes the auth pair and the webhook
secret to the backend, stops every process on SIGTERM, sets only environment variables
our Settings know, and runs only commands `squeezesam` has (parsed by the real argument
parser); `.env.example` holds no secret; the Dockerfiles follow the rules we care about
(pinned base, non-root user, health check, no torch in the serving image, CPU torch in
the training image, a complete backend as the serving image's default command).
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
ENV_EXAMPLE = DOCKER / ".env.example"
OURS = ("docker/Dockerfile", "docker/Dockerfile.train")
SETTINGS_ENV = {f.metadata["env"] for f in fields(Settings)}
# the required ${...:?} variables
COMPOSE_ENV = {"LS_TOKEN": "0" * 40, "LS_PASSWORD": "test", "BASIC_AUTH_PASS": "pass",
               "WEBHOOK_SECRET": "hook"}  # fmt: skip
SECRETS = ("LS_TOKEN", "BASIC_AUTH_PASS", "WEBHOOK_SECRET", "LS_PASSWORD")


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
    assert "train" not in runs and "pip install '.[postgres]'" in runs, runs  # DATABASE_URL
    assert "find_spec('torch') is not None" in runs, "the build must prove torch is absent"


def test_the_training_image_has_cpu_torch_and_the_train_extra():
    runs = " ".join(a for k, a in instructions(DOCKER / "Dockerfile.train") if k == "RUN")
    pyproject = (REPO / "pyproject.toml").read_text()
    [pin] = re.findall(r'"(torch==[\d.]+)"', pyproject)
    # the CPU index by default; a mounted folder with the CPU wheel where it is out of reach
    # (docker/smoke.sh), and then the build proves it got the CPU build
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in runs
    assert f'pip install {pin} --find-links "$TORCH_FIND_LINKS"' in runs
    assert "'+cpu' not in torch.__version__" in runs
    assert runs.index("download.pytorch.org") < runs.index("'.[train,postgres]'"), "torch first"
    assert runs.index("TORCH_FIND_LINKS") < runs.index("'.[train,postgres]'"), "torch first"


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


def _config(cli: list[str], env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV} | env
    env.pop("COMPOSE_PROFILES", None)
    return subprocess.run(
        [*cli, "-f", str(COMPOSE), "--profile", "labelstudio", "config"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip


def test_compose_config_is_valid_for_the_compose_cli(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` or `docker-compose` here (.ci/run installs one)")
    done = _config(cli, COMPOSE_ENV, tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["services"]["interactive"]["deploy"]["replicas"] == 2
    web = resolved["services"]["web"]["environment"]
    assert web["BASIC_AUTH_PASS"] == "pass" and web["WEBHOOK_SECRET"] == "hook"
    assert web["BASIC_AUTH_USER"] == "labelstudio"
    assert web["LABEL_STUDIO_URL"] == "http://labelstudio:8080"
    # joining an existing Label Studio: its URL reaches every backend service
    joined = yaml.safe_load(
        _config(cli, COMPOSE_ENV | {"LABEL_STUDIO_URL": "http://ls.example:8080"}, tmp_path).stdout
    )
    for name, svc in our_services(joined).items():
        assert svc["environment"]["LABEL_STUDIO_URL"] == "http://ls.example:8080", name
    # the trainer's base data: an empty named volume by default, BASE_DATA a host folder
    trainer = resolved["services"]["trainer"]
    assert trainer["environment"]["TRAIN_BASE_DATA"] == "/base-data"
    assert trainer["environment"]["REDIS_URL"] == "redis://redis:6379/0"  # merged, not lost
    assert "base-data:/base-data:ro" in trainer["volumes"], trainer["volumes"]
    mounted = yaml.safe_load(
        _config(cli, COMPOSE_ENV | {"BASE_DATA": str(tmp_path)}, tmp_path).stdout
    )["services"]["trainer"]["volumes"]
    assert f"{tmp_path}:/base-data:ro" in mounted, mounted
    assert {"labels:/data:rw", "registry:/registry:rw"} <= set(mounted), mounted


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_the_secrets(tmp_path, missing):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI here")
    for value in (None, ""):  # unset, and empty as in .env.example
        env = {k: v for k, v in COMPOSE_ENV.items() if k != missing}
        if value is not None:
            env[missing] = value
        done = _config(cli, env, tmp_path)
        assert done.returncode != 0, f"compose started with {missing}={value!r}"
        assert missing in done.stderr + done.stdout


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.split("#")[0].strip()
    return pairs


def test_the_env_example_names_every_required_variable_and_holds_no_secret(compose):
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required == set(SECRETS), required
    example = env_example()
    for name in required:
        assert name in example, f".env.example does not name {name}"
        assert example[name] == "", f".env.example ships a value for {name}: copied, it would"
    text = ENV_EXAMPLE.read_text()
    # how the same pair is entered in Label Studio
    assert "Use Basic Authentication" in text and "X-Webhook-Secret" in text
    assert example.get("COMPOSE_PROFILES") == "labelstudio", "the demo is the default"
    assert "LABEL_STUDIO_URL" in text, "how to join an existing Label Studio"


def test_compose_brings_up_the_whole_stack(compose):
    services = compose["services"]
    assert set(services) >= {
        "labelstudio", "redis", "web", "interactive", "preannotate", "trainer", "scheduler",
    }  # fmt: skip
    assert services["labelstudio"]["image"].startswith("heartexlabs/label-studio:1.23.")
    # the demo's Label Studio behind a profile; the backend never needs it
    assert services["labelstudio"]["profiles"] == ["labelstudio"]
    for name, svc in services.items():
        if name != "labelstudio":
            assert "profiles" not in svc, name
            assert "labelstudio" not in (svc.get("depends_on") or {}), name
        # PID 1 ignores SIGTERM without a handler: an init passes it on (`docker stop`)
        assert svc.get("init") is True, f"{name}: no init, SIGTERM would be ignored"
        assert str(svc.get("stop_grace_period", "10s")) == "10s", name
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
    assert "ports" not in services["redis"], "Redis (no password) must stay off the host"
    assert "replicas" in services["interactive"]["deploy"]
    assert services["interactive"]["deploy"]["mode"] == "replicated"  # podman-compose
    # the web service is the one the world reaches: Basic auth and the webhook secret,
    # required (compose refuses to start without them)
    # Label Studio creates the model's webhook only for a URL Django's URLValidator takes
    # (a dot in the host): the demo connects the model by this alias, not `web`
    [alias] = services["web"]["networks"]["default"]["aliases"]
    assert "." in alias and alias in COMPOSE.read_text().split("aliases")[0], alias
    web_env = services["web"]["environment"]
    assert web_env["BASIC_AUTH_PASS"].startswith("${BASIC_AUTH_PASS:?")
    assert web_env["WEBHOOK_SECRET"].startswith("${WEBHOOK_SECRET:?")
    assert web_env["BASIC_AUTH_USER"].startswith("${BASIC_AUTH_USER")
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


def test_the_trainer_gets_base_data_read_only(compose):
    """TRAIN_BASE_DATA=/base-data, mounted read-only from BASE_DATA (a host folder, as
    the project's ../shared/data) or an empty named volume; the backend's own two
    volumes repeated (YAML merge is shallow); .env.example says how to mount the data."""
    trainer = compose["services"]["trainer"]
    assert trainer["environment"]["TRAIN_BASE_DATA"] == "/base-data"
    web_env = compose["services"]["web"]["environment"]
    for name in ("REDIS_URL", "SQUEEZESAM_DATA_DIR", "SQUEEZESAM_REGISTRY_DIR",
                 "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):  # fmt: skip
        assert trainer["environment"][name] == web_env[name], name
    [base] = [v for v in trainer["volumes"] if v.endswith(":/base-data:ro")]
    assert base == "${BASE_DATA:-base-data}:/base-data:ro", base
    assert "base-data" in compose["volumes"]
    assert {"labels:/data", "registry:/registry"} <= set(trainer["volumes"])
    for name, svc in compose["services"].items():  # only the trainer trains
        if name != "trainer":
            assert "TRAIN_BASE_DATA" not in (svc.get("environment") or {}), name
    text = ENV_EXAMPLE.read_text()
    assert "BASE_DATA=" in text and "TRAIN_BASE_DATA" in text and "read-only" in text
    assert "BASE_DATA" not in env_example(), "commented out: unset means no base data"


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


def test_the_serving_image_alone_is_a_complete_backend():
    # `docker run -p 9090:9090 <image>`: serve (embedded Redis, web, workers) on every
    # interface of the container, on the port the HEALTHCHECK asks
    args = build_parser().parse_args(_dockerfile_cmd("docker/Dockerfile"))
    assert args.func.__name__ == "cmd_serve"
    assert args.host == "0.0.0.0" and args.port == 9090
    steps = dict(instructions(DOCKER / "Dockerfile"))
    assert "127.0.0.1:9090/health" in steps["HEALTHCHECK"] and steps["EXPOSE"] == "9090"


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
