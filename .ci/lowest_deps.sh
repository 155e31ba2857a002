#!/usr/bin/env bash
# The queue tests against the LOWEST rq and redis that pyproject.toml allows: a floor
# that is not tested is a guess (rq>=2.0 once imported a module only rq 3 has).
#
# A separate virtual environment over the installed packages (--system-site-packages), with
# rq and redis pinned to their floors inside it: everything else is what CI installed, and
# the main environment is left as it was.
#
# usage: .ci/lowest_deps.sh [VENV]   (default /tmp/squeezesam-lowest-deps)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/squeezesam-lowest-deps}
PYTHON=${PYTHON:-python3}

floor() {  # the version after ">=" of dependency $1 in pyproject.toml
  "$PYTHON" - "$1" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([0-9][^,;\s]*)", dep)
    if m and m.group(1).lower() == sys.argv[1]:
        print(m.group(2)); break
else:
    sys.exit(f"no '{sys.argv[1]}>=' floor in pyproject.toml")
PY
}
RQ=$(floor rq)
REDIS=$(floor redis)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q "rq==$RQ" "redis==$REDIS"
"$VENV/bin/python" - "$RQ" "$REDIS" <<'PY'
import sys
import redis, rq
print(f"lowest allowed: rq {rq.__version__} (floor {sys.argv[1]}), "
      f"redis {redis.__version__} (floor {sys.argv[2]})")
PY
# the workers these tests start run `sys.executable -m squeezesam.backend.cli`: this venv's
timeout 15m "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/backend/test_queues.py tests/backend/test_dispatch.py tests/backend/test_worker.py
