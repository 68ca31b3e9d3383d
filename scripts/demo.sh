#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the demo: generate a data set, train the baseline and the
# modality-invariant recipe, evaluate both and write a report. Extra arguments go to `itmatch demo`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/venv.sh"
cd "$root"
exec "$root/.venv/bin/itmatch" demo "$@"
