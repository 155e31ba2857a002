#!/usr/bin/env bash
# Known vulnerabilities in the installed dependencies (pip-audit asks PyPI's advisory data),
# with one verdict line, and a true one:
#   "pip-audit: N packages audited, no known vulnerabilities (M not found on PyPI)"
#   "pip-audit: NOT AUDITED: ..." (the advisory data was out of reach: passes, but says so)
#   "pip-audit: <package> <version>: <ids>" per vulnerable package, then exit 1
# pip-audit's own summary ("No known vulnerabilities found", printed even when it could
# audit nothing) is kept out of the output; its log is shown only when it wrote no report.
set -euo pipefail

report=$(mktemp); log=$(mktemp)
trap 'rm -f "$report" "$log"' EXIT
audit_rc=0
pip-audit --progress-spinner off --skip-editable --desc off -f json -o "$report" \
    >"$log" 2>&1 || audit_rc=$?

python3 - "$report" "$log" "$audit_rc" <<'PY'
import json
import sys

report_file, log_file, audit_rc = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(report_file) as f:
        report = json.load(f)
except (OSError, ValueError) as exc:  # pip-audit died before writing its report
    with open(log_file, errors="replace") as f:
        sys.stderr.write(f.read()[-4000:])
    print(f"pip-audit: NOT AUDITED: no report ({exc}); pip-audit exit code {audit_rc}")
    sys.exit(0)
deps = report.get("dependencies", [])
audited = [d for d in deps if "skip_reason" not in d]
vulnerable = [d for d in audited if d.get("vulns")]
for d in vulnerable:
    ids = ", ".join(
        v["id"] + (f" (fix: {', '.join(v['fix_versions'])})" if v.get("fix_versions") else "")
        for v in d["vulns"]
    )
    print(f"pip-audit: {d['name']} {d['version']}: {ids}")
if vulnerable:
    sys.exit(f"pip-audit: {len(vulnerable)} vulnerable package(s)")
if not audited:
    print(
        f"pip-audit: NOT AUDITED: the vulnerability data was out of reach for all "
        f"{len(deps)} packages (no PyPI JSON API from this machine); nothing was checked"
    )
else:
    print(
        f"pip-audit: {len(audited)} packages audited, no known vulnerabilities "
        f"({len(deps) - len(audited)} not found on PyPI, not audited)"
    )
PY
