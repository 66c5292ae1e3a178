#!/usr/bin/env bash
# The whole test suite: unit tests, then lab tests on real hosts (as root; the lab is brought up here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1; then
    # Headless Chromium renders the HTML expiry report in a lab test.
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }) >/dev/null
fi
.venv/bin/python -m ruff check certfab tasks tests
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q tests/unit
.venv/bin/inv lab.up --hosts 28 --podman 1
CERTFAB_LAB_KEEP=1 .venv/bin/python -m pytest -q -x tests/lab "$@"
