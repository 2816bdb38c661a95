#!/usr/bin/env bash
# bash scripts/test.sh [pytest args]
# Sets up .venv (scripts/setup.sh) and runs the test suite. Slow and GPU tests are
# deselected by default; run them with: bash scripts/test.sh -m slow  (or -m gpu on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
