"""Dependency floors that are true (issue 22): PostgreSQL's driver is the `postgres`
extra, and a PostgreSQL DATABASE_URL without it is one clear error; the rq and redis
floors are exercised by .ci/lowest_deps.sh (the queue tests on the lowest versions)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from squeezesam.backend.store import Store
from squeezesam.backend.store.db import POSTGRES_MISSING, StoreError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_psycopg_is_the_postgres_extra_not_a_core_dependency():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    assert "psycopg" not in core
    assert any(d.startswith("psycopg") for d in PYPROJECT["project"]["optional-dependencies"]
               ["postgres"])  # fmt: skip
    assert "postgres" in re.search(r"pip install -e '\.\[([^]]*)\]'",
                                   (REPO / ".ci/run").read_text()).group(1)  # fmt: skip


def test_a_postgres_database_url_without_psycopg_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "psycopg" else real(name, *a))  # fmt: skip
    with pytest.raises(StoreError) as caught:
        Store(tmp_path, "postgresql://u:secret@db.example:5432/labels")
    assert str(caught.value) == POSTGRES_MISSING
    assert "squeezesam[postgres]" in str(caught.value) and "secret" not in str(caught.value)


def test_the_lowest_versions_step_reads_the_floors_ci_runs():
    """.ci/run calls .ci/lowest_deps.sh, which pins the floors pyproject.toml states."""
    script = (REPO / ".ci/lowest_deps.sh").read_text()
    assert ".ci/lowest_deps.sh" in (REPO / ".ci/run").read_text()
    assert '"rq==$RQ" "redis==$REDIS"' in script
    for test in ("test_queues.py", "test_dispatch.py", "test_worker.py"):
        assert f"tests/backend/{test}" in script
    floors = dict(re.findall(r'"(rq|redis)>=([\d.]+)"', (REPO / "pyproject.toml").read_text()))
    assert set(floors) == {"rq", "redis"}
