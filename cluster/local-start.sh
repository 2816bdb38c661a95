#!/usr/bin/env bash
# bash cluster/local-start.sh            (stop with: .venv/bin/ray stop)
# Starts a single-node Ray head on this machine for `ray job submit`, e.g.
#   .venv/bin/ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime-env.yaml --entrypoint-num-cpus 1 -- python jobs/demo.py --root "$PWD" --size tiny
# Token auth: `ray start` turns it on once ~/.ray/auth_token exists while CLI clients default to
# off, so the mode is set explicitly; export the same RAY_AUTH_MODE in the shell that submits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
# Jobs run `python` from the head's PATH: make it the environment puma-ray is installed in.
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ray start --head --dashboard-host 127.0.0.1 --dashboard-port 8265 --num-cpus "${PUMA_NUM_CPUS:-$(nproc)}"
echo "Ray head up: export RAY_AUTH_MODE=$RAY_AUTH_MODE RAY_ADDRESS=http://127.0.0.1:8265"
