#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtual environment (default: .venv-labelstudio/
# at the repository root, gitignored) so its pins never touch ours. Skips the install when
# that venv already has the right version (cache-friendly for CI).
#
# usage: tests/e2e/install_labelstudio.sh [VENV]
# env:   LS_VERSION (default 1.23.2), PYTHON (default python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-labelstudio}
LS_VERSION=${LS_VERSION:-1.23.2}
PYTHON=${PYTHON:-python3}

if [ -x "$VENV/bin/label-studio" ] &&
   [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" = "$LS_VERSION" ]; then
  echo "label-studio $LS_VERSION already in $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "label-studio==$LS_VERSION"
"$VENV/bin/python" -c 'import importlib.metadata as m; print("label-studio", m.version("label-studio"))'
echo "installed label-studio $LS_VERSION into $VENV"
