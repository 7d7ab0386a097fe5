"""CMNet on QM7 with the 5 folds of ``scripts/krr_qm7.py`` (the paper's protocol: 5-fold cross-validation).

Each fold k holds out the k-th of the same shuffled folds KRR uses (``kfold_indices(7101, 5, seed)``) as the
test set; ``--n-val`` molecules of the rest (seeded) are the validation set of the plateau scheduler and of
checkpoint selection, the others train ``configs/cmnet_qm7.yaml`` for ``--minutes``. Resumable: a fold with a
``summary.json`` is read back, a fold with only ``last.ckpt`` continues from it (same split, optimiser state).
``--minutes`` is the fold's total training time: Lightning's timer is restored from the checkpoint, so a resumed
fold stops when the time before and after the interruption adds up to it (resume with a larger value to go on).
Writes ``cv.json`` and prints the mean ± std test MAE over the folds.

    python scripts/cmnet_qm7_cv.py --out runs/cmnet_qm7_cv --minutes 90      # 7.5 h on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from atomnet.baselines.krr import kfold_indices
from atomnet.data.qm7 import read_qm7
from atomnet.data.splits import Split, save_split
from atomnet.files import atomic_output
from atomnet.training.commands import resume_config, train
from atomnet.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def fold_splits(n: int, folds: int, n_val: int, seed: int) -> list[Split]:
    """The outer folds of scripts/krr_qm7.py as train / val / test splits (val drawn from the training part)."""
    out = []
    for k, (rest, test) in enumerate(kfold_indices(n, folds, seed)):
        perm = np.random.default_rng(seed + 1 + k).permutation(rest)
        out.append(Split(np.sort(perm[n_val:]), np.sort(perm[:n_val]), test, seed=seed))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "cmnet_qm7.yaml"))
    p.add_argument("--data", default=str(SHARED / "qm7" / "qm7.tar.gz"))
    p.add_argument("--out", default="runs/cmnet_qm7_cv", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only", type=int, nargs="*", default=None, help="run only these folds")
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=90.0, help="training time per fold, summed over resumes")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    n = len(read_qm7(args.data).n_atoms)
    results = {}
    for k, split in enumerate(fold_splits(n, args.folds, args.n_val, args.seed)):
        run = args.out / f"fold{k}"
        if (run / "summary.json").is_file():  # done (also when --only names other folds: cv.json has all)
            results[k] = json.loads((run / "summary.json").read_text())
            continue
        if args.only is not None and k not in args.only:
            continue
        split_file = save_split(args.out / f"fold{k}_split.npz", split)
        sets = [f"data.path={args.data}", f"data.split_file={split_file}", f"train.max_time={args.minutes}",
                "train.progress_bar=false", *args.overrides]  # fmt: skip
        if (run / "last.ckpt").is_file():
            cfg = resume_config(run / "last.ckpt", sets)
            results[k] = train(cfg, run_dir=run, resume=run / "last.ckpt", quiet=True)
        else:
            results[k] = train(load_config(args.config, sets), run_dir=run, quiet=True, overwrite=True)
        print(f"fold {k}: test MAE {results[k]['metrics']['energy_mae_kcal/mol']:.2f} kcal/mol", flush=True)
    maes = np.array([r["metrics"]["energy_mae_kcal/mol"] for r in results.values()])
    record = {
        "folds": {
            str(k): {
                "test_mae_kcal/mol": r["metrics"]["energy_mae_kcal/mol"],
                "epochs": r["epochs"],
                "train_seconds": r["train_seconds"],
            }
            for k, r in results.items()
        },  # fmt: skip
        "mean_mae_kcal/mol": float(maes.mean()) if len(maes) else None,
        "std_mae_kcal/mol": float(maes.std()) if len(maes) else None,
        "settings": {
            "minutes": args.minutes,
            "n_val": args.n_val,
            "seed": args.seed,
            "overrides": args.overrides,
        },
    }
    with atomic_output(args.out / "cv.json", ".json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    if len(maes):
        print(f"CMNet QM7, {len(maes)} folds: test MAE {maes.mean():.2f} ± {maes.std():.2f} kcal/mol")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
