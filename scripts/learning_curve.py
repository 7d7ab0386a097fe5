"""Learning curve: train one recipe at several training-set sizes, plot test MAE vs N on log-log axes.

    python scripts/learning_curve.py configs/schnet_qm9_u0.yaml --sizes 250 500 1000 2000 \
        --n-val 500 --n-test 1000 --set train.max_time=5 --out runs/lc_schnet_qm9

Every size uses the same validation and test molecules (drawn once with ``train.seed``) and its own run
directory ``<out>/n<N>``. Results go to ``<out>/learning_curve.json`` (sizes, energy/force MAE in eV and
kcal/mol) and ``<out>/learning_curve.png``; other curves (e.g. KRR) can be added to the JSON's ``curves``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from atomnet.data.splits import Split, save_split
from atomnet.training.commands import train
from atomnet.training.config import load_config
from atomnet.training.datamodule import cached_store, check_store
from atomnet.training.plots import learning_curve_plot


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training-set sizes N")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", default="runs/learning_curve")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, args.overrides)
    store = cached_store(base.data, base.data.cache_dir or str(Path(base.train.out_dir).resolve() / "cache"))
    n = check_store(store, base.data, need_forces=base.optim.forces_weight > 0)["n_molecules"]
    if max(args.sizes) + args.n_val + args.n_test > n:
        raise SystemExit(f"{n} molecules are not enough for N={max(args.sizes)} + val + test")
    perm = np.random.default_rng(base.train.seed).permutation(n)
    val, test = np.sort(perm[: args.n_val]), np.sort(perm[args.n_val : args.n_val + args.n_test])
    pool = perm[args.n_val + args.n_test :]

    results = {
        "config": str(args.config),
        "sizes": [],
        "energy_mae_kcal/mol": [],
        "forces_mae_kcal/mol/A": [],
    }
    for size in sorted(args.sizes):
        split_file = save_split(
            out / f"split_n{size}.npz", Split(np.sort(pool[:size]), val, test, base.train.seed)
        )
        cfg = load_config(args.config, [*args.overrides, f"data.split_file={split_file.resolve()}"])
        s = train(cfg, run_dir=out / f"n{size}")
        m = s["metrics"]
        results["sizes"].append(size)
        results["energy_mae_kcal/mol"].append(m["energy_mae_kcal/mol"])
        results["forces_mae_kcal/mol/A"].append(m.get("forces_mae_kcal/mol/A"))
        print(f"N={size}: energy MAE {m['energy_mae_kcal/mol']:.3f} kcal/mol", flush=True)
    label = f"{base.model.name}"
    results["curves"] = {label: [results["sizes"], results["energy_mae_kcal/mol"]]}
    (out / "learning_curve.json").write_text(json.dumps(results, indent=2))
    png = learning_curve_plot(
        {k: tuple(v) for k, v in results["curves"].items()},
        out / "learning_curve.png",
        "test energy MAE [kcal/mol]",
    )
    print(f"learning curve: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
