"""Multitask against single-task training on the same QM9 split and budget (Montavon et al. 2013's question).

One SchNet learns U0, HOMO, LUMO and the gap at once (``data.targets``, one output head per extra target,
mean readout for the three orbital energies); four SchNets of the same size learn one of them each. Every run
uses the same molecules, split (the first run's ``split.npz``), seed and number of epochs. Resumable: finished
runs are read back from ``multitask.json``. Writes ``multitask.md`` (test MAE table) and ``multitask.json``.

    python scripts/multitask_qm9.py --out runs/multitask --epochs 20 --threads 1    # ~35 min on 1 core
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from atomnet.files import atomic_output
from atomnet.training.commands import train
from atomnet.training.config import config_from_dict

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = ["U0", "homo", "lumo", "gap"]
MODEL = {"name": "schnet", "n_atom_basis": 64, "n_filters": 64, "n_interactions": 3, "n_rbf": 25, "cutoff": 5.0,
         "max_z": 10}  # fmt: skip


def config(args, targets: list[str], split_file: str | None) -> dict:
    data = {
        "path": args.data,
        "format": "qm9",
        "energy_unit": "Hartree",
        "forces_key": None,
        "limit": args.molecules,
        "split": [args.n_train, args.n_val, args.molecules - args.n_train - args.n_val],
        "batch_size": 50,
        "val_batch_size": 500,
        "targets": targets,
    }
    if split_file:
        data["split_file"] = split_file
    return {
        "model": dict(MODEL),
        "data": data,
        "optim": {
            "lr": 5e-4,
            "energy_weight": 1.0,
            "forces_weight": 0.0,
            "scheduler": "plateau",
            "plateau_patience": 3,
            "ema_decay": 0.99,
            "warmup_steps": 100,
        },  # fmt: skip
        "train": {
            "seed": 0,
            "max_epochs": args.epochs,
            "max_time": args.max_time,
            "num_threads": args.threads,
            "out_dir": str(args.out),
            "progress_bar": False,
            "plots": True,
        },  # fmt: skip
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "qm9" / "qm9_subset.tar.bz2"))
    p.add_argument("--out", default="runs/multitask", type=Path)
    p.add_argument("--molecules", type=int, default=10000)
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-time", type=float, default=30.0, help="minutes, a safety cap per run")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "multitask.json"
    settings = {k: getattr(args, k) for k in ("data", "molecules", "n_train", "n_val", "epochs")}
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("settings") != settings:
        record = {"settings": settings, "model": MODEL, "runs": {}}
    runs = {"multitask": TARGETS, **{t: [t] for t in TARGETS}}
    split_file = str(args.out / "multitask" / "split.npz")
    for name, targets in runs.items():
        if name in record["runs"]:
            continue
        t0 = time.perf_counter()
        cfg = config_from_dict(config(args, targets, None if name == "multitask" else split_file))
        s = train(cfg, run_dir=args.out / name, quiet=True, overwrite=True)
        m = s["metrics"]
        maes = {targets[0]: m["energy_mae_eV"], **{t: m[f"{t}_mae_eV"] for t in targets[1:]}}
        record["runs"][name] = {"targets": targets, "test_mae_eV": maes, "epochs": s["epochs"],
                                "seconds": round(time.perf_counter() - t0, 1), "model_file": s["model_file"]}  # fmt: skip
        with atomic_output(record_path, ".json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        print(f"{name}: " + ", ".join(f"{k} {v * 1000:.1f} meV" for k, v in maes.items()), flush=True)
    multi = record["runs"]["multitask"]
    lines = [
        f"Test MAE (meV) on {args.molecules - args.n_train - args.n_val} QM9 molecules, SchNet "
        f"{MODEL['n_atom_basis']} features × {MODEL['n_interactions']} interactions, {args.n_train} training "
        f"molecules, {args.epochs} epochs each, same split and seed:",
        "",
        "| target | multitask (one model, 4 heads) | single-task (one model per target) | ratio |",
        "|---|---|---|---|",
    ]
    for t in TARGETS:
        a, b = multi["test_mae_eV"][t] * 1000, record["runs"][t]["test_mae_eV"][t] * 1000
        lines.append(f"| {t} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    total = sum(r["seconds"] for k, r in record["runs"].items() if k != "multitask")
    lines += [
        "",
        f"Training time: multitask {multi['seconds']:.0f} s, the four single-task models {total:.0f} s.",
        "",
    ]
    with atomic_output(args.out / "multitask.md", ".md") as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
