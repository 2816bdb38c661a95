#!/usr/bin/env bash
# bash scripts/setup.sh
# Creates (or updates) the virtual environment .venv/ with puma-ray and everything it needs.
# Idempotent: a second run with an unchanged pyproject.toml only checks and returns.
#
# torch is installed FIRST, so the package's unpinned torch requirement is already met:
#  - no GPU: the CPU build, PUMA_TORCH_SPEC (default torch==2.13.0; on the project's machines
#    that wheel is on local disk). Elsewhere set PUMA_TORCH_INDEX=https://download.pytorch.org/whl/cpu
#    or PyPI hands out a multi-GB CUDA build.
#  - a GPU: install your CUDA build of torch into .venv yourself first
#    (.venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128); this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] a GPU is present: installing PyPI's default (CUDA) torch; pre-install your own build to choose it"
    "${PIP[@]}" install torch
  else
    spec=${PUMA_TORCH_SPEC:-torch==2.13.0}
    echo "[setup] no GPU: installing the CPU build ($spec)"
    "${PIP[@]}" install "$spec" ${PUMA_TORCH_INDEX:+--index-url "$PUMA_TORCH_INDEX"}
  fi
fi
stamp=.venv/.puma-ray-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "[setup] installing puma-ray and its dependencies into .venv (about 2 minutes the first time)"
  "${PIP[@]}" install -e ".[test]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, ray, transformers; print(f"torch {torch.__version__}, ray {ray.__version__}, transformers {transformers.__version__}")')"
