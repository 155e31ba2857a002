""".ci/pip_audit.sh states pip-audit's verdict once, and truly (issue 20, item 11).

pip-audit itself prints "No known vulnerabilities found" even when it could audit no
package; CI printed that and then "NOT AUDITED". A stand-in `pip-audit` on PATH plays each
case: the script must print exactly one verdict line that matches what was checked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "pip_audit.sh"

FAKE = """#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
report = {report!r}
if report is not None:
    with open(args[args.index("-o") + 1], "w") as f:
        json.dump(report, f)
print("No known vulnerabilities found")  # what pip-audit says whatever it audited
sys.exit({rc})
"""


def run_audit(tmp_path: Path, report: dict | None, rc: int = 0) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pip-audit"
    fake.write_text(FAKE.format(report=report, rc=rc))
    fake.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def skipped(name: str) -> dict:
    return {"name": name, "skip_reason": f"Dependency not found on PyPI: {name}"}


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_nothing_audited_says_not_audited_once_and_never_no_vulnerabilities(tmp_path):
    result = run_audit(tmp_path, {"dependencies": [skipped("a"), skipped("b")]})
    assert result.returncode == 0
    out = lines(result)
    assert len(out) == 1, out
    assert out[0].startswith("pip-audit: NOT AUDITED") and "all 2 packages" in out[0]
    assert "no known vulnerabilities" not in (result.stdout + result.stderr).lower()


def test_audited_packages_without_vulnerabilities_give_one_clean_verdict(tmp_path):
    deps = [{"name": "a", "version": "1", "vulns": []}, skipped("local-only")]
    result = run_audit(tmp_path, {"dependencies": deps})
    assert result.returncode == 0
    assert lines(result) == [
        "pip-audit: 1 packages audited, no known vulnerabilities (1 not found on PyPI, not audited)"
    ]


def test_a_vulnerable_package_fails_and_is_named(tmp_path):
    vuln = {"id": "GHSA-xxxx", "fix_versions": ["2.0"]}
    deps = [{"name": "badpkg", "version": "1.0", "vulns": [vuln]}]
    result = run_audit(tmp_path, {"dependencies": deps}, rc=1)
    assert result.returncode != 0
    out = "\n".join(lines(result))
    assert "badpkg 1.0: GHSA-xxxx (fix: 2.0)" in out and "1 vulnerable package" in out
    assert "no known vulnerabilities" not in out.lower()


def test_no_report_is_not_audited(tmp_path):
    result = run_audit(tmp_path, None, rc=2)
    assert result.returncode == 0
    assert "pip-audit: NOT AUDITED: no report" in result.stdout
