#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/venv.sh"
cd "$root"
# tests/test_browser.py drives Debian's chromium + chromedriver: install them when missing (root or sudo).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "[test] installing chromium + chromium-driver for the browser test" >&2
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
    || echo "[test] could not install chromium + chromium-driver; the browser test will skip" >&2
fi
exec "$root/.venv/bin/python" -m pytest -q "$@"
