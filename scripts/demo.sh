#!/usr/bin/env bash
# bash scripts/demo.sh [--out DIR] [--size tiny|default|large|real] [key=value ...]
# Sets up .venv (scripts/setup.sh) and runs `puma-ray demo`, offline, on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/puma-ray demo "$@"
