"""Test MAE of a CMNet with its prediction averaged over k random sortings (Montavon et al. 2012's test-time trick).

    python scripts/cmnet_test_sortings.py --model cmnet-qm7 --split-file cmnet-qm7 --sortings 1 4 16

The sorted matrix (k = 1) is deterministic; k > 1 averages over k row-norm noise draws of the training σ
(the model's fixed evaluation table, from ``--seed``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from atomnet import keys
from atomnet.data.batch import make_batch
from atomnet.data.qm7 import read_qm7
from atomnet.data.splits import load_split
from atomnet.pretrained import load_model, resolve_split
from atomnet.units import unit_factor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cmnet-qm7")
    p.add_argument("--data", default=str(SHARED / "qm7" / "qm7.tar.gz"))
    p.add_argument("--split-file", default="cmnet-qm7")
    p.add_argument("--sortings", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    pot = load_model(args.model)
    table = read_qm7(args.data)
    test = load_split(resolve_split(args.split_file), table.n_molecules).test
    o = table.offsets
    batch = make_batch(
        torch.from_numpy(np.concatenate([table.numbers[o[i] : o[i + 1]] for i in test])),
        torch.from_numpy(np.concatenate([table.positions[o[i] : o[i + 1]] for i in test])).to(pot.dtype),
        torch.tensor(table.n_atoms[test]),
        None,
    )
    reference = table.properties["energy"][test]  # kcal/mol
    for k in args.sortings:
        pot.model.test_sortings, pot.model.sorting_seed = k, args.seed
        with torch.no_grad():
            energy = pot(batch, forces=False)[keys.ENERGY].double().numpy() / unit_factor("kcal/mol")
        print(
            f"{k:3d} sorting(s): test MAE {np.mean(np.abs(energy - reference)):.3f} kcal/mol ({len(test)} molecules)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
