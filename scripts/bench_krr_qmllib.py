"""Side-by-side: atomnet KRR vs qmllib (``pip install qmllib``, extra ``[bench]``) on QM7.

Same outer folds (5-fold over the 7,101 molecules), same representation (sorted Coulomb matrix with
distances in Å, qmllib's convention), same Laplacian kernel and the same (σ, λ): σ, λ are chosen once by
atomnet CV on the training part of fold 0 and then fixed, so the comparison measures the implementations.
Timed per fold: representation, fit (training kernel + Cholesky solve) and predict. MAE in kcal/mol.

    python scripts/bench_krr_qmllib.py --folds-run 2 --json bench.json
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


def qmllib_fold(numbers, positions, offsets, y, tr, te, sigma, lam) -> dict:
    from qmllib.kernels import laplacian_kernel, laplacian_kernel_symmetric
    from qmllib.representations import generate_coulomb_matrix
    from qmllib.solvers import cho_solve

    t0 = time.perf_counter()
    X = np.array([generate_coulomb_matrix(numbers[a:b], positions[a:b], size=23, sorting="row-norm")
                  for a, b in zip(offsets[:-1], offsets[1:], strict=True)])  # fmt: skip
    t1 = time.perf_counter()
    K = laplacian_kernel_symmetric(X[tr], sigma)  # qmllib's fastest training kernel (each pair once)
    K[np.diag_indices_from(K)] += lam
    alpha = cho_solve(K, y[tr])
    t2 = time.perf_counter()
    pred = laplacian_kernel(X[te], X[tr], sigma) @ alpha  # (n_test, n_train)
    t3 = time.perf_counter()
    return {**errors(y[te], pred), "rep_seconds": t1 - t0, "fit_seconds": t2 - t1, "predict_seconds": t3 - t2,
            "X": X}  # fmt: skip


def atomnet_fold(table, y, tr, te, sigma, lam) -> dict:
    t0 = time.perf_counter()
    X = coulomb_representation(table.numbers, table.positions, table.n_atoms, "sorted", size=23,
                               distance_unit="Angstrom")  # fmt: skip
    t1 = time.perf_counter()
    model = KernelRidge("laplacian", sigma, lam).fit(X[tr], y[tr])
    t2 = time.perf_counter()
    pred = model.predict(X[te])
    t3 = time.perf_counter()
    return {**errors(y[te], pred), "rep_seconds": t1 - t0, "fit_seconds": t2 - t1, "predict_seconds": t3 - t2,
            "X": X}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tar", default=str(SHARED / "qm7.tar.gz"))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--folds-run", type=int, default=5, help="run only the first N outer folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma", type=float, default=None, help="fix σ (with --lam) and skip the CV")
    p.add_argument("--lam", type=float, default=1e-9)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    table = read_qm7(args.tar)
    y = table.properties["energy"]
    outer = kfold_indices(table.n_molecules, args.folds, args.seed)
    X = coulomb_representation(
        table.numbers, table.positions, table.n_atoms, "sorted", distance_unit="Angstrom"
    )
    tr0 = outer[0][0]
    if args.sigma is None:
        cv = cross_validate(X[tr0], y[tr0], "laplacian", lams=[1e-9, 1e-6], folds=3, seed=args.seed)
        sigma, lam = cv.sigma, cv.lam
        print(f"sigma={sigma:.5g} lambda={lam:g} (atomnet 3-fold CV on the training part of fold 0)")
    else:
        sigma, lam = args.sigma, args.lam
    rows = []
    for k, (tr, te) in enumerate(outer[: args.folds_run]):
        q = qmllib_fold(table.numbers, table.positions, table.offsets, y, tr, te, sigma, lam)
        a = atomnet_fold(table, y, tr, te, sigma, lam)
        # same representation: identical sorted values per molecule (triangle order differs)
        same = np.allclose(np.sort(q.pop("X"), axis=1), np.sort(a.pop("X"), axis=1), rtol=1e-10, atol=1e-8)
        rows.append({"fold": k, "n_train": len(tr), "n_test": len(te), "qmllib": q, "atomnet": a,
                     "same_representation": bool(same)})  # fmt: skip
        for name, r in (("qmllib", q), ("atomnet", a)):
            print(f"fold {k} {name:8s} n_train={len(tr)} MAE={r['mae']:.3f} RMSE={r['rmse']:.3f} kcal/mol  "
                  f"rep={r['rep_seconds']:.2f}s fit={r['fit_seconds']:.2f}s predict={r['predict_seconds']:.2f}s",
                  flush=True)  # fmt: skip
        print(f"fold {k} same representation: {same}")
    for name in ("qmllib", "atomnet"):
        mae = np.mean([r[name]["mae"] for r in rows])
        fit = np.mean([r[name]["fit_seconds"] for r in rows])
        pred = np.mean([r[name]["predict_seconds"] for r in rows])
        print(
            f"{name:8s} mean over {len(rows)} folds: MAE {mae:.3f} kcal/mol, fit {fit:.2f}s, predict {pred:.2f}s"
        )
    if args.json:
        write_json(args.json, {"units": {"mae": "kcal/mol", "seconds": "s"}, "sigma": sigma, "lambda": lam,
                               "folds": rows})  # fmt: skip


if __name__ == "__main__":
    main()
