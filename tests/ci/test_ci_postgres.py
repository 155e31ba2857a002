"""CI's PostgreSQL pass cannot skip silently (issue 20, item 10).

.ci/postgres.sh starts PostgreSQL on a free port (a fixed 55432 held by another program
made it fail), and says so loudly when the server does not start; .ci/postgres_tests.sh
fails, running nothing, without a URL; and its `-m postgres` selection holds every test
with a PostgreSQL case, wherever the test files move."""

from __future__ import annotations

import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO / ".ci" / "postgres.sh"
POSTGRES_TESTS = REPO / ".ci" / "postgres_tests.sh"
HAVE_POSTGRES = any(Path(p).is_file() for p in glob.glob("/usr/lib/postgresql/*/bin/initdb"))
needs_postgres = pytest.mark.skipif(
    not HAVE_POSTGRES, reason="no PostgreSQL server binaries (.ci/postgres.sh installs them)"
)


@pytest.fixture()
def pg_data():
    """A fresh cluster folder the `postgres` user can reach (as root the server runs as it);
    its server is stopped afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="squeezesam-pgtest-", dir="/var/tmp"))
    parent.chmod(0o755)
    data = parent / "pg"
    yield data
    env = os.environ | {"PG_DATA": str(data)}
    subprocess.run(["bash", str(POSTGRES_SH), "stop"], env=env, capture_output=True, timeout=60)
    subprocess.run(["rm", "-rf", str(parent)], check=False)


@pytest.fixture()
def port_55432_taken():
    """Another program on the port the old script always used (or it is already taken)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 55432))
        s.listen()
    except OSError:
        pass  # taken already: the same situation
    yield 55432
    s.close()


def postgres_sh(pg_data: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "PG_PORT"} | {"PG_DATA": str(pg_data)}
    return subprocess.run(
        ["bash", str(POSTGRES_SH)], env=full | env, capture_output=True, text=True, timeout=180
    )


@pytest.mark.postgres
@needs_postgres
def test_postgres_starts_on_a_free_port_when_55432_is_taken(pg_data, port_55432_taken):
    result = postgres_sh(pg_data)
    assert result.returncode == 0, result.stderr
    urls = re.findall(r"^export SQUEEZESAM_TEST_POSTGRES_URL=(\S+)$", result.stdout, re.M)
    assert len(urls) == 1, result.stdout
    port = int(re.search(r":(\d+)/", urls[0]).group(1))
    assert port != port_55432_taken
    import sqlalchemy as sa

    engine = sa.create_engine(urls[0].replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    again = postgres_sh(pg_data)  # idempotent: the running server, on its port
    assert again.returncode == 0 and urls[0] in again.stdout


@pytest.mark.postgres
@needs_postgres
def test_postgres_sh_fails_loudly_when_postgres_does_not_start(pg_data, port_55432_taken):
    result = postgres_sh(pg_data, PG_PORT=str(port_55432_taken))
    assert result.returncode != 0
    assert "export" not in result.stdout  # nothing a caller could eval into an empty URL
    assert "FAIL: PostgreSQL did not start on 127.0.0.1:55432" in result.stderr
    assert "server.log" in result.stderr  # and why: the end of the server log


@pytest.mark.parametrize(
    "fake",
    ["exit 1", "exit 0", "echo 'export SQUEEZESAM_TEST_POSTGRES_URL='"],
    ids=["postgres.sh fails", "no output", "empty URL"],
)
def test_postgres_pass_fails_and_runs_nothing_without_a_url(tmp_path, fake):
    script = tmp_path / "postgres.sh"
    script.write_text(f"#!/usr/bin/env bash\n{fake}\n")
    script.chmod(0o755)
    env = os.environ | {"SQUEEZESAM_POSTGRES_SH": str(script)}
    env.pop("SQUEEZESAM_TEST_POSTGRES_URL", None)
    result = subprocess.run(
        ["bash", str(POSTGRES_TESTS)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "FAIL:" in result.stderr and "no PostgreSQL pass" in result.stderr
    assert "passed" not in result.stdout and "skipped" not in result.stdout  # no pytest run


def collected(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args, "tests"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {line for line in result.stdout.splitlines() if "::" in line}


def test_every_test_with_a_postgresql_case_is_in_the_postgres_pass():
    selected = collected("-m", "postgres and not slow and not e2e")  # the pass's selection
    everything = collected()
    # every PostgreSQL case of the default run (parameter "postgresql") is in the pass...
    cases = {t for t in everything if re.search(r"[\[-]postgresql[\]-]", t)}
    assert cases and cases <= selected
    # ...from every file that uses the store fixture or open_store with a kind it does not
    # fix to SQLite (as the label store, the served regions and the dashboard figures do),
    # wherever those files are; open_store("sqlite", ...) alone has no PostgreSQL case
    files_with_cases = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        text = path.read_text()
        if re.search(r'open_store\((?!"sqlite")', text) or re.search(
            r"^def test_\w+\([^)]*\bstore\b", text, re.M
        ):
            files_with_cases.add(path.relative_to(REPO).as_posix())
    selected_files = {t.split("::")[0] for t in selected}
    assert files_with_cases and files_with_cases <= selected_files, (
        files_with_cases - selected_files
    )
