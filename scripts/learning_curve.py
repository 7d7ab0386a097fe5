"""Learning curves: neural networks (one or more recipes) and optionally Coulomb-matrix KRR, on the same splits.

Every training size N uses the same validation and test molecules (drawn once with ``train.seed`` of the
first config); the training sets are nested (see ``atomnet.data.splits.nested_splits``) and saved as
``<out>/split_n<N>.npz``, the files every model here reads, so the curves compare like with like. Each
neural-network run gets its own directory ``<out>/<model>/n<N>``; KRR fits on exactly the same N molecules
(cross-validating sigma and lambda on them only) and predicts the same test molecules.

Results go to ``<out>/learning_curve.json`` (``curves``: label -> [sizes, test energy MAE in kcal/mol];
``runs``: the details of each run), written after every run, and ``<out>/learning_curve.png`` (log-log).
Re-running with the same data, seed and split sizes skips the runs already in the JSON, so an interrupted
curve resumes where it stopped.

The QM9 U0 curve of the README (full QM9 from ``pip install qm9pack``):

    atomnet data convert qm9pack qm9.h5
    python scripts/learning_curve.py configs/schnet_qm9_u0.yaml configs/dtnn_qm9_u0.yaml --krr \
        --sizes 1000 2000 4000 10000 --n-val 1000 --n-test 2000 \
        --set data.path=qm9.h5 --set train.max_time=5 --out runs/lc_qm9
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from atomnet.data.splits import nested_splits, save_split
from atomnet.files import atomic_output
from atomnet.training.commands import train
from atomnet.training.config import load_config
from atomnet.training.datamodule import cached_store, check_store
from atomnet.training.plots import learning_curve_plot
from atomnet.units import convert_energy


def krr_run(store: Path, energy_key: str, split, representation: str, kernel: str, folds: int, seed: int):
    """Fit Coulomb-matrix KRR on ``split.train`` (CV on it only), test on ``split.test``; errors in kcal/mol."""
    from atomnet.baselines.commands import element_counts, learning_curve, load_dataset
    from atomnet.baselines.coulomb import coulomb_representation
    from atomnet.baselines.krr import DEFAULT_LAMS

    numbers, positions, n_atoms, y, unit, _, _ = load_dataset(store, energy_key)
    y = convert_energy(y, unit, "kcal/mol")
    keep = np.concatenate(
        [split.train, split.test]
    )  # only the molecules used: features for 2 x 10^4, not 10^5
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    atoms = np.concatenate([np.arange(starts[m], starts[m + 1]) for m in keep])
    numbers, positions, n_atoms, y = numbers[atoms], positions[atoms], n_atoms[keep], y[keep]
    X = coulomb_representation(numbers, positions, n_atoms, representation, seed=seed)
    offsets = element_counts(numbers, n_atoms, np.unique(numbers))
    train_idx, test_idx = np.arange(len(split.train)), np.arange(len(split.train), len(keep))
    n = len(train_idx)
    res = learning_curve(
        X, y, train_idx, test_idx, [n], kernel, folds, None, list(DEFAULT_LAMS), seed, offsets, progress=False
    )[n]
    return {"energy_mae_kcal/mol": res["mae"], "energy_rmse_kcal/mol": res["rmse"], **res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="training recipes (YAML); all must use the same data")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training-set sizes N")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--krr", action="store_true", help="add a Coulomb-matrix KRR curve on the same splits")
    p.add_argument("--krr-representation", default="sorted", choices=["plain", "sorted", "eigenvalue"])
    p.add_argument("--krr-kernel", default="laplacian", choices=["gaussian", "laplacian"])
    p.add_argument("--krr-folds", type=int, default=3, help="k of the k-fold CV of sigma and lambda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", default="runs/learning_curve")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [load_config(c, args.overrides) for c in args.configs]
    base = configs[0]
    store = cached_store(base.data, base.data.cache_dir or str(Path(base.train.out_dir).resolve() / "cache"))
    for c in configs:
        if cached_store(c.data, c.data.cache_dir or str(Path(c.train.out_dir).resolve() / "cache")) != store:
            raise SystemExit(
                f"all configs must read the same data; {c.data.path} differs from {base.data.path}"
            )
    n = check_store(store, base.data, need_forces=base.optim.forces_weight > 0)["n_molecules"]
    try:
        splits = nested_splits(n, args.sizes, args.n_val, args.n_test, base.train.seed)
    except ValueError as exc:
        raise SystemExit(f"{store}: {exc}") from None
    split_files = {size: save_split(out / f"split_n{size}.npz", sp) for size, sp in splits.items()}

    settings = {"store": str(Path(store).resolve()), "n_molecules": n, "n_val": args.n_val,
                "n_test": args.n_test, "seed": base.train.seed, "energy_key": base.data.energy_key}  # fmt: skip
    json_path = out / "learning_curve.json"
    results = {"units": {"mae": "kcal/mol"}, "settings": settings, "runs": {}, "curves": {}}
    if json_path.exists():
        old = json.loads(json_path.read_text())
        if old.get("settings") == settings:
            results["runs"] = old.get("runs", {})

    def record(label: str, size: int, run: dict) -> None:
        results["runs"].setdefault(label, {})[str(size)] = run
        for name, runs in results["runs"].items():
            done = sorted((int(k), v["energy_mae_kcal/mol"]) for k, v in runs.items())
            results["curves"][name] = [[s for s, _ in done], [m for _, m in done]]
        with atomic_output(json_path, ".json") as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")

    names = [c.model.name for c in configs]
    if len(set(names)) < len(names):  # two recipes of one model: label them by file name
        names = [Path(path).stem for path in args.configs]
    jobs = list(zip(names, configs, args.configs, strict=True))
    if args.krr:
        jobs.append((f"{args.krr_representation} CM + {args.krr_kernel} KRR", None, None))
    for label, cfg, path in jobs:
        for size, split in splits.items():
            if str(size) in results["runs"].get(label, {}):
                print(f"{label} N={size}: done before, skipped", flush=True)
                record(label, size, results["runs"][label][str(size)])
                continue
            t0 = time.perf_counter()
            if cfg is None:
                run = krr_run(store, base.data.energy_key, split, args.krr_representation, args.krr_kernel,
                              args.krr_folds, base.train.seed)  # fmt: skip
            else:
                cfg = load_config(path, [*args.overrides, f"data.split_file={split_files[size].resolve()}"])
                summary = train(cfg, run_dir=out / label / f"n{size}", overwrite=True)
                run = {**summary["metrics"], "run_dir": summary["run_dir"], "epochs": summary["epochs"]}
            run["seconds"] = round(time.perf_counter() - t0, 1)
            record(label, size, run)
            print(f"{label} N={size}: test energy MAE {run['energy_mae_kcal/mol']:.3f} kcal/mol "
                  f"({run['seconds']:.0f} s)", flush=True)  # fmt: skip

    png = learning_curve_plot(
        {k: tuple(v) for k, v in results["curves"].items()},
        out / "learning_curve.png",
        "test energy MAE [kcal/mol]",
        f"{Path(base.data.path).name} {base.data.energy_key}, {args.n_test} test molecules",
    )
    print(f"learning curve: {png}\nresults: {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
