"""Copy a finished run's exported model into atomnet/pretrained/ and record it in index.json.

    python scripts/ship_pretrained.py runs/schnet_md17_ethanol schnet-md17-ethanol \
        --dataset "MD17 ethanol (DFT), ../shared/data/md17/ethanol_dft_1200.xyz"

The entry holds the data set, split sizes, units, the measured errors of the best checkpoint (on the test
split, or the validation split when the run had no test split), training time, wall time from the run's
log (``runs/<name>.log`` of scripts/train_recipes.sh) and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch

PRETRAINED = Path(__file__).resolve().parents[1] / "atomnet" / "pretrained"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("name")
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--with-split",
        action="store_true",
        help="also ship the run's split.npz as pretrained/splits/<name>.npz (index entry split_file)",
    )
    p.add_argument(
        "--command", default=None, help="the command that produced the run (default: from its log)"
    )
    p.add_argument("--data-file", default=None, help="the data file, relative to ../shared/data (tests)")
    p.add_argument(
        "--evaluate-args",
        default=None,
        help="reader options for atomnet evaluate on --data-file, e.g. '--format qm7 --energy-unit kcal/mol'",
    )
    p.add_argument("--note", default=None)
    args = p.parse_args(argv)

    run = Path(args.run_dir)
    summary = json.loads((run / "summary.json").read_text())
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    log = run.parent / f"{run.name}.log"
    command, wall = None, None
    if log.is_file():
        text = log.read_text()
        m = re.search(r"^== (atomnet train [^(]*?)\s*\(", text, re.M)
        command = m.group(1) if m else None
        m = re.search(r"wall time (\d+) s", text)
        wall = int(m.group(1)) if m else None
    part = summary["evaluated_on"]
    metrics = summary["metrics"]
    entry = {
        "name": args.name,
        "file": f"{args.name}.pt",
        "model": meta["config"]["model"],
        "dataset": args.dataset,
        "energy_key": meta["energy_key"],
        "source_energy_unit": meta["source_energy_unit"],
        "units": meta["units"],
        "split_sizes": meta["split_sizes"],
        "split_mode": meta["split_mode"],
        "errors_on": part,
        "errors": {k: v for k, v in metrics.items() if "mae" in k or "rmse" in k},
        "best_epoch": meta.get("best_epoch"),
        "epochs_trained": summary["epochs"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "command": args.command or command or f"atomnet train <config> --run-dir {run}",
        "hardware": "2 shared CPU cores (torch CPU, 2 threads)",
    }
    if args.data_file:
        entry["data_file"] = args.data_file
    if args.evaluate_args:
        entry["evaluate_args"] = args.evaluate_args.split()
    if args.note:
        entry["note"] = args.note
    if args.with_split:
        (PRETRAINED / "splits").mkdir(exist_ok=True)
        shutil.copyfile(run / "split.npz", PRETRAINED / "splits" / f"{args.name}.npz")
        entry["split_file"] = f"splits/{args.name}.npz"
    shutil.copyfile(run / "model.pt", PRETRAINED / entry["file"])
    index_path = PRETRAINED / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else []
    index = [e for e in index if e["name"] != args.name] + [entry]
    index_path.write_text(json.dumps(sorted(index, key=lambda e: e["name"]), indent=2) + "\n")
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
