"""QM7 accuracy of Coulomb-matrix KRR with honest 5-fold cross-validation.

Outer loop: 5 folds over the 7,101 molecules (~5,681 train / ~1,420 test each). Inside each outer fold,
(σ, λ) are chosen by k-fold CV on the training part only, then the model is refitted on the whole
training part and evaluated on the held-out fold. Energies: PBE0 atomization energies, kcal/mol.

    python scripts/krr_qm7.py --json krr_qm7.json
    python scripts/krr_qm7.py --setups sorted:laplacian --inner-folds 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from atomnet.baselines.commands import write_json
from atomnet.baselines.coulomb import coulomb_representation
from atomnet.baselines.krr import KernelRidge, cross_validate, errors, kfold_indices
from atomnet.data.qm7 import read_qm7

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qm7"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tar", default=str(SHARED / "qm7.tar.gz"))
    p.add_argument(
        "--setups", default="sorted:laplacian,eigenvalue:gaussian", help="representation:kernel,..."
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--inner-folds", type=int, default=3)
    p.add_argument("--lambdas", default="1e-9,1e-6")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    lams = [float(x) for x in args.lambdas.split(",")]

    table = read_qm7(args.tar)
    y = table.properties["energy"]
    outer = kfold_indices(table.n_molecules, args.folds, args.seed)
    report = {"units": {"mae": "kcal/mol", "rmse": "kcal/mol", "seconds": "s"}, "settings": vars(args)}
    for setup in args.setups.split(","):
        rep, kernel = setup.split(":")
        X = coulomb_representation(table.numbers, table.positions, table.n_atoms, rep)
        rows = []
        for k, (tr, te) in enumerate(outer):
            t0 = time.perf_counter()
            cv = cross_validate(X[tr], y[tr], kernel, lams=lams, folds=args.inner_folds, seed=args.seed + k)
            model = KernelRidge(kernel, cv.sigma, cv.lam).fit(X[tr], y[tr])
            err = errors(y[te], model.predict(X[te]))
            row = {**err, "n_train": len(tr), "n_test": len(te), "sigma": cv.sigma, "lambda": cv.lam,
                   "fit_seconds": model.fit_seconds_, "seconds": time.perf_counter() - t0}  # fmt: skip
            rows.append(row)
            print(f"{rep}/{kernel} fold {k}: n_train={len(tr)} MAE={err['mae']:.3f} RMSE={err['rmse']:.3f} "
                  f"sigma={cv.sigma:.4g} lambda={cv.lam:g} fit={model.fit_seconds_:.1f}s "
                  f"total={row['seconds']:.1f}s", flush=True)  # fmt: skip
        mae = np.array([r["mae"] for r in rows])
        print(f"{rep}/{kernel}: MAE {mae.mean():.3f} ± {mae.std(ddof=1):.3f} kcal/mol over {len(rows)} folds")
        report[setup] = {"folds": rows, "mae_mean": float(mae.mean()), "mae_std": float(mae.std(ddof=1)),
                         "rmse_mean": float(np.mean([r["rmse"] for r in rows]))}  # fmt: skip
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
