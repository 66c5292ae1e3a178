#!/usr/bin/env bash
# The main job on the built-in lab: bring up test hosts, bootstrap them all, report expiry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
. .venv/bin/activate
inv lab.up --hosts "${HOSTS:-2}"
export CERTFAB_INVENTORY=lab/inventory.yaml
fab facts
inv deploy-all
fab report-expiry --html reports/expiry.html
