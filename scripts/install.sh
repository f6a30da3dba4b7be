#!/usr/bin/env bash
# Sets up everything this project needs, on a fresh machine or an existing one.
# - torch: kept if already installed (GPU users install their CUDA build first); otherwise the
#   CPU build torch==2.13.0 is installed. Never an unpinned torch (it would pull CUDA packages).
# - the package itself, editable, with its C++ extension built against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[install] torch not found: installing the CPU build torch==2.13.0"
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet ninja "setuptools>=64" wheel
echo "[install] building ap3d-kernels (editable, C++ extension included)"
"$PY" -m pip install --quiet --no-build-isolation -e ".[test]"
"$PY" -c "import ap3d_kernels, torch; print(f'[install] torch {torch.__version__}; APM backends on CPU: {ap3d_kernels.available_backends(\"cpu\")}')"
