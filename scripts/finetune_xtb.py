"""Fine-tuning vs training from scratch on few frames: the shipped ``schnet-md17-ethanol`` (DFT, MD17) fine-tuned
on 50 and on 200 frames of the embedded GFN2-xTB ethanol data, against the same architecture trained from
random weights on the same frames with the same budget. One fixed test set (500 frames) and validation set
(100 frames) for every run; the training frames of the 50-frame runs are the first 50 of the 200.

    python scripts/finetune_xtb.py --minutes 4 --threads 1 --out runs/finetune_xtb

Writes ``<out>/finetune.json`` and a Markdown table ``<out>/finetune.md``; resumable (finished runs are kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from atomnet.data.splits import Split, save_split
from atomnet.pretrained import load_model
from atomnet.training.commands import train
from atomnet.training.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "ethanol_xtb.extxyz"
PRETRAINED = "schnet-md17-ethanol"


def run_config(mode: str, split_file: Path, out: Path, minutes: float, threads: int, lr: float) -> dict:
    arch = {k: v for k, v in load_model(PRETRAINED).model.hparams.items() if v is not None}
    model = {"init_from": PRETRAINED} if mode == "finetune" else {"name": "schnet", **arch}
    return {
        "model": model,
        "data": {"path": str(DATA), "energy_unit": "eV", "split_file": str(split_file), "batch_size": 10},
        "optim": {"lr": lr, "scheduler": "plateau", "plateau_patience": 10, "ema_decay": 0.99},
        "train": {
            "max_epochs": 100000,
            "max_time": minutes,
            "num_threads": threads,
            "out_dir": str(out),
            "progress_bar": False,
            "plots": False,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--out", default="runs/finetune_xtb")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    perm = np.random.default_rng(0).permutation(2000)
    test, val, pool = perm[:500], perm[500:600], perm[600:]
    results_file = out / "finetune.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for n in args.sizes:
        split_file = save_split(out / f"split_n{n}.npz", Split(pool[:n], val, test, 0))
        for mode in ("finetune", "scratch"):
            key = f"{mode}_n{n}"
            if key in results:
                continue
            cfg = config_from_dict(run_config(mode, split_file, out, args.minutes, args.threads, args.lr))
            s = train(cfg, run_dir=out / key, quiet=True, overwrite=True)  # an unfinished run: again
            m = s["metrics"]
            results[key] = {
                "mode": mode,
                "n_train": n,
                "epochs": s["epochs"],
                "train_seconds": s["train_seconds"],
                "energy_mae_meV": 1000 * m["energy_mae_eV"],
                "forces_mae_meV/A": 1000 * m["forces_mae_eV/A"],
            }
            results_file.write_text(json.dumps(results, indent=2))
            print(key, results[key], flush=True)
    lines = [
        "| training frames | start | test energy MAE (meV) | test forces MAE (meV/Å) | epochs | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for n in args.sizes:
        for mode in ("finetune", "scratch"):
            r = results.get(f"{mode}_n{n}")
            if r:
                start = PRETRAINED if mode == "finetune" else "random weights"
                lines.append(
                    f"| {n} | {start} | {r['energy_mae_meV']:.1f} | {r['forces_mae_meV/A']:.1f} | {r['epochs']} "
                    f"| {r['train_seconds']:.0f} |"
                )
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
