#!/usr/bin/env bash
# A separate virtual environment for the side-by-side benchmarks (scripts/bench_peers.py, bench_md.py,
# bench_krr_qmllib.py): atomnet, schnetpack 2.1.1, PyTorch Geometric 2.8.1 and qmllib next to each other, on the
# same torch (a constraints file pins it, so no peer can replace it).
#
# schnetpack 2.1.1 cannot be installed by pip's resolver next to torch 2.13 (it pins sympy<=1.12, torch 2.13
# needs sympy>=1.13.3), so it is installed without its dependencies and then given the ones it imports at
# run time (its training/CLI extras such as tensorboard, black and pre-commit are left out). bench_md.py
# applies the two small shims schnetpack 2.1.1 needs under torch >= 2.6.
#
#   bash scripts/setup_bench_env.sh            # creates .venv-bench
#   .venv-bench/bin/python scripts/bench_md.py --threads 1
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-bench}
PY=${PYTHON:-python3}
PIP=(--quiet --disable-pip-version-check)
"$PY" -m venv "$VENV"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"
"$VENV/bin/python" -m pip install "${PIP[@]}" "torch==2.13.0"
"$VENV/bin/python" -m pip install "${PIP[@]}" -e .
"$VENV/bin/python" -m pip install "${PIP[@]}" --no-deps "schnetpack==2.1.1"
# PyG's pure-Python wheel; its compiled extras (pyg-lib, torch-scatter, torch-cluster) are not on the registry
# for torch 2.13, so bench_peers.py hands PyG's SchNet a pure-torch radius graph (interaction_graph=).
"$VENV/bin/python" -m pip install "${PIP[@]}" -c "$CONSTRAINTS" "torch_geometric==2.8.1"
"$VENV/bin/python" -m pip install "${PIP[@]}" -c "$CONSTRAINTS" hydra-core hydra-colorlog torch-ema matscipy torchmetrics \
    dirsync fasteners rich qmllib
"$VENV/bin/python" -c "import sys; sys.path.insert(0, 'scripts'); import bench_md, qmllib, torch, torch_geometric; \
print('bench env ready: schnetpack', bench_md.import_schnetpack().__version__, '| torch_geometric', torch_geometric.__version__, '| torch', torch.__version__)"
echo "benchmarks: $VENV/bin/python scripts/bench_peers.py; $VENV/bin/python scripts/bench_md.py --threads 1"
