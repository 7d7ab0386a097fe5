"""Larger batches instead of learning-rate decay (Smith et al. 2017) on QM9 U0: the same SchNet recipe
(`configs/schnet_qm9_u0.yaml`, 5,000 / 500 / 1,000 molecules of the shared QM9 subset, one split for every run)
trained for the same number of epochs with three schedules:

- ``plateau``: the recipe's ReduceLROnPlateau (factor 0.5, patience 5);
- ``step``: the learning rate divided by 5 at the milestones;
- ``batch_growth``: the batch size multiplied by 5 at the same milestones instead.

    python scripts/batch_growth_qm9.py --epochs 40 --milestones 20 30 --threads 1 --out runs/batch_growth

Writes ``<out>/batch_growth.json`` and ``<out>/batch_growth.md`` (test MAE, parameter updates, wall time);
resumable (finished runs are kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atomnet.training.commands import train
from atomnet.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "schnet_qm9_u0.yaml"
SCHEDULES = ("plateau", "step", "batch_growth")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--milestones", type=int, nargs="+", default=[20, 30])
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/batch_growth")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "batch_growth.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    split = out / "plateau" / "split.npz"
    for name in SCHEDULES:
        if name in results:
            continue
        sets = [
            f"train.max_epochs={args.epochs}",
            "train.max_time=null",
            f"train.num_threads={args.threads}",
            "train.progress_bar=false",
            f"optim.scheduler={name}",
        ]
        if name != "plateau":
            sets += [f"optim.milestones={args.milestones}", f"optim.step_factor={args.factor}"]
        if split.exists():  # every schedule on the split of the first run
            sets.append(f"data.split_file={split}")
        cfg = load_config(RECIPE, sets)
        s = train(cfg, run_dir=out / name, quiet=True, overwrite=True)
        results[name] = {
            "epochs": s["epochs"],
            "optimizer_steps": s["optimizer_steps"],
            "train_seconds": s["train_seconds"],
            "test_mae_kcal/mol": s["metrics"]["energy_mae_kcal/mol"],
            "test_mae_meV": 1000 * s["metrics"]["energy_mae_eV"],
        }
        results_file.write_text(json.dumps(results, indent=2))
        print(name, results[name], flush=True)
    lines = [
        f"| schedule ({args.epochs} epochs, milestones {args.milestones}, factor {args.factor:g}) | test MAE (kcal/mol) "
        "| parameter updates | wall time (s) |",
        "|---|---|---|---|",
    ]
    for name in SCHEDULES:
        r = results.get(name)
        if r:
            lines.append(
                f"| {name} | {r['test_mae_kcal/mol']:.3f} | {r['optimizer_steps']} | {r['train_seconds']:.0f} |"
            )
    (out / "batch_growth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
