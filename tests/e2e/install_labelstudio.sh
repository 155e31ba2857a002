#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtual environment (default: .venv-labelstudio/
# at the repository root, gitignored) so its pins never touch ours, with every dependency
# at the version of tests/e2e/labelstudio-constraints.txt (Label Studio leaves most of them
# open, and a newer one can stop it from starting). Skips the install when that venv was
# already made from the same version and constraints (cache-friendly for CI).
#
# usage: tests/e2e/install_labelstudio.sh [VENV]
# env:   LS_VERSION (default 1.23.2), PYTHON (default python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-labelstudio}
LS_VERSION=${LS_VERSION:-1.23.2}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=tests/e2e/labelstudio-constraints.txt
# what the venv was made from: a changed constraints file reinstalls
made_from="label-studio==$LS_VERSION $(sha256sum "$CONSTRAINTS" | cut -c1-16)"

if [ -x "$VENV/bin/label-studio" ] && [ "$(cat "$VENV/.made-from" 2>/dev/null)" = "$made_from" ]; then
  echo "label-studio $LS_VERSION already in $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "label-studio==$LS_VERSION"
echo "$made_from" >"$VENV/.made-from"
"$VENV/bin/python" -c 'import importlib.metadata as m; print("label-studio", m.version("label-studio"))'
echo "installed label-studio $LS_VERSION into $VENV"
