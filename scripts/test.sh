#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up if needed, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${MTAD_VENV:-.venv}/bin/python" -m pytest -q "$@"
