#!/usr/bin/env bash
# Install atomnet and everything it needs into the current Python environment.
# torch is pinned first (2.13.0 resolves to the CPU wheel on our machines; an unpinned torch would pull a
# multi-GB CUDA build), then the package with its test/lint extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$PY" -c "import atomnet, torch; print(f'atomnet {atomnet.__version__} installed (torch {torch.__version__})')"
# compile the fused cfconv kernel once now (about a minute), not inside the first training or test
"$PY" -m atomnet.native || echo "setup: native kernels not built; atomnet uses the plain torch paths"
