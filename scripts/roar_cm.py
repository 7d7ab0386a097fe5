"""Remove and retrain (ROAR, Hooker et al. 2018, arXiv 1806.10758) on Coulomb-matrix entries of QM7 molecules.

The classic pixel experiment on molecules: the inputs of a CMNet (Montavon et al. 2012) are the entries of the
sorted Coulomb matrix, a fixed-size vector like an image.

1. A CMNet (sorted matrices, binarised entries; no random sorting here, so that a ranking refers to fixed
   entry positions) is trained on the QM7 training molecules for ``--budget`` seconds.
2. Every method ranks the real (non-padding) entries of every molecule by its entry relevance
   (``Explanation.features`` through the ``atomnet.explain`` interface): largest |R| first (``--rank abs``,
   information content) or largest signed R first (``signed``); a random ranking is the baseline.
3. For each fraction 0.1 … 0.9 the top-ranked entries of every training and test molecule are replaced by
   their training mean (standardised value 0), a fresh network is trained for the same budget, and its test
   MAE recorded. A ranking that finds the informative entries degrades accuracy more than random.

Resumable: finished runs are read back from ``roar_cm.json``; ``roar_cm.png`` plots test MAE against fraction.

    python scripts/roar_cm.py --out runs/roar_cm --budget 60 --noise-runs 3   # ~40 min on 2 cores (34 trainings)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from atomnet.data.batch import make_batch
from atomnet.data.qm7 import read_qm7
from atomnet.explain import analyze_many, create_analyzer
from atomnet.files import atomic_output, save_figure
from atomnet.models import CMNet
from atomnet.potential import Potential
from atomnet.units import unit_factor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ["gradient", "gradient-x-input", "integrated-gradients", "lrp-epsilon", "patternattribution"]
FRACTIONS = [0.1, 0.3, 0.5, 0.7, 0.9]
KCAL = unit_factor("kcal/mol")  # eV per kcal/mol


def load(path: Path, limit: int | None):
    from ase import Atoms

    table = read_qm7(path, limit=limit)
    o = table.offsets
    atoms = [
        Atoms(numbers=table.numbers[o[m] : o[m + 1]], positions=table.positions[o[m] : o[m + 1]])
        for m in range(table.n_molecules)
    ]
    return atoms, table.properties["energy"] * KCAL  # eV


def batch_of(atoms) -> object:
    return make_batch(
        torch.from_numpy(np.concatenate([a.numbers for a in atoms])),
        torch.from_numpy(np.concatenate([a.positions for a in atoms])).float(),
        torch.tensor([len(a) for a in atoms]),
        None,
    )


def dressed_atoms(atoms, energy, train) -> tuple[np.ndarray, np.ndarray]:
    """Per-element reference energies by least squares on the training molecules, and Σ_i ref[Z_i] per molecule."""
    counts = np.zeros((len(atoms), 17))
    for m, a in enumerate(atoms):
        np.add.at(counts[m], a.numbers, 1)
    coef, *_ = np.linalg.lstsq(counts[train], energy[train], rcond=None)
    return coef, counts @ coef


def train_net(model: CMNet, x, target, n_atoms, train, seconds: float, seed: int, lr: float) -> None:
    """Train ``model.output`` on fixed standardised entries ``x`` (n, d): E − Σ ref = N·std·y."""
    torch.manual_seed(seed)
    for layer in model.output:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    opt = torch.optim.Adam(model.output.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    scale = n_atoms * float(model.standardize.std)
    model.train()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.from_numpy(rng.choice(train, 25, replace=False))
        y = model.output(model.features.expand(x[idx])).squeeze(-1)
        loss = torch.mean((y * scale[idx] - target[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def test_mae(model: CMNet, x, target, n_atoms, test) -> float:
    y = model.output(model.features.expand(x[test])).squeeze(-1)
    scale = n_atoms[test] * float(model.standardize.std)
    return float((y * scale - target[test]).abs().mean()) / KCAL


def masked(x: torch.Tensor, rankings: list[np.ndarray], fraction: float) -> torch.Tensor:
    """``x`` with the top ceil(fraction · m) ranked entries of every molecule set to 0 (the training mean)."""
    out = x.clone()
    for m, order in enumerate(rankings):
        out[m, torch.from_numpy(order[: math.ceil(fraction * len(order))])] = 0.0
    return out


def rank(explanations, rank_by: str) -> list[np.ndarray]:
    out = []
    for e in explanations:
        real = np.flatnonzero(e.feature_atoms[:, 0] >= 0)
        key = np.abs(e.features[real]) if rank_by == "abs" else e.features[real]
        out.append(real[np.argsort(-key, kind="stable")])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "qm7" / "qm7.tar.gz"))
    p.add_argument("--out", default="runs/roar_cm")
    p.add_argument("--budget", type=float, default=60.0, help="seconds of training per network")
    p.add_argument("--hidden", default="400,100")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    p.add_argument("--rank", choices=("abs", "signed"), default="abs")
    p.add_argument("--limit", type=int, default=None, help="read only the first molecules (tests)")
    p.add_argument("--n-test", type=int, default=1420)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--noise-runs",
        type=int,
        default=0,
        help="also retrain on the unmasked entries with seeds 1 … N: the spread of one training run",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "roar_cm.json"
    settings = {k: getattr(args, k) for k in ("budget", "hidden", "lr", "rank", "limit", "n_test")}
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("settings") != settings:
        record = {"settings": settings, "runs": {}}

    def save():
        with atomic_output(record_path, ".json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))

    atoms, energy = load(Path(args.data), args.limit)
    n = len(atoms)
    perm = np.random.default_rng(0).permutation(n)
    test, train = np.sort(perm[: args.n_test]), np.sort(perm[args.n_test :])
    ref, dressed = dressed_atoms(atoms, energy, train)
    n_atoms = torch.tensor([len(a) for a in atoms], dtype=torch.float32)
    target = torch.tensor(energy - dressed, dtype=torch.float32)
    resid = (energy - dressed)[train] / n_atoms.numpy()[train]

    model = CMNet(max_atoms=23, hidden=[int(h) for h in args.hidden.split(",")], max_z=16)
    batch = batch_of(atoms)
    model.set_input_statistics(batch_of([atoms[i] for i in train]))
    model.set_statistics(0.0, float(resid.std()), ref)
    model.eval()
    x = model.entries(batch, batch.positions, None).detach()

    if "base" not in record["runs"]:
        print(f"training the explained network ({args.budget:.0f} s)", flush=True)
        train_net(model, x, target, n_atoms, train, args.budget, 0, args.lr)
        torch.save(model.state_dict(), out / "base.pt")
        record["runs"]["base"] = {"fraction": 0.0, "test_mae_kcal": test_mae(model, x, target, n_atoms, test)}
        save()
    model.load_state_dict(torch.load(out / "base.pt", weights_only=True))
    model.eval()
    print(f"explained network: test MAE {record['runs']['base']['test_mae_kcal']:.2f} kcal/mol", flush=True)

    methods = [m for m in args.methods.split(",") if m]
    fractions = [float(f) for f in args.fractions.split(",")]
    rng = np.random.default_rng(1)
    rankings = {"random": [rng.permutation(np.flatnonzero(o[:, 0] >= 0)) for o in owners_of(model, batch)]}
    pot = Potential(copy.deepcopy(model)).double().eval()  # a float64 copy explains; model stays float32
    for m in methods:
        todo = [f for f in fractions if f"{m}@{f}" not in record["runs"]]
        if not todo:
            continue
        analyzer = create_analyzer(m, pot)
        if analyzer.method.needs_fit:
            analyzer.fit([atoms[i] for i in train])
        rankings[m] = rank(analyze_many(analyzer, atoms, 256, progress=True), args.rank)
    jobs = [(m, f) for m in ["random", *methods] for f in fractions if f"{m}@{f}" not in record["runs"]]
    for m, f in tqdm(jobs, desc="retrain", unit="net"):
        fresh = CMNet(**model.hparams)
        fresh.load_state_dict(model.state_dict())
        xm = masked(x, rankings[m], f)
        train_net(fresh, xm, target, n_atoms, train, args.budget, 0, args.lr)
        record["runs"][f"{m}@{f}"] = {
            "method": m,
            "fraction": f,
            "test_mae_kcal": test_mae(fresh, xm, target, n_atoms, test),
        }
        save()
    for s in range(1, args.noise_runs + 1):
        if f"unmasked#{s}" not in record["runs"]:
            fresh = CMNet(**model.hparams)
            fresh.load_state_dict(model.state_dict())
            train_net(fresh, x, target, n_atoms, train, args.budget, s, args.lr)
            record["runs"][f"unmasked#{s}"] = {
                "seed": s,
                "test_mae_kcal": test_mae(fresh, x, target, n_atoms, test),
            }
            save()
    noise = [
        r["test_mae_kcal"] for k, r in record["runs"].items() if k.startswith("unmasked#") or k == "base"
    ]
    if len(noise) > 1:
        print(
            f"unmasked, {len(noise)} seeds: {np.mean(noise):.2f} ± {np.std(noise):.2f} kcal/mol (one run's spread)"
        )
    plot(record, ["random", *methods], fractions, out / "roar_cm.png")
    for m in ["random", *methods]:
        row = [record["runs"].get(f"{m}@{f}", {}).get("test_mae_kcal", float("nan")) for f in fractions]
        print(f"{m:22s} " + "  ".join(f"{v:6.2f}" for v in row))
    print(f"wrote {record_path}, {out / 'roar_cm.png'}")
    return 0


def owners_of(model: CMNet, batch) -> np.ndarray:
    """(n_molecules, d, 2) owners of the sorted entries (from the input layer's last forward pass)."""
    with torch.no_grad():
        model.features(batch, batch.positions, None)
    return model.features.owners.numpy()


def plot(record: dict, methods: list[str], fractions: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = record["runs"]["base"]["test_mae_kcal"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        ys = [record["runs"].get(f"{m}@{f}", {}).get("test_mae_kcal", np.nan) for f in fractions]
        ax.plot([0.0, *fractions], [base, *ys], "o-", label=m, lw=2.5 if m == "random" else 1.5)
    ax.set_xlabel("fraction of Coulomb-matrix entries replaced by the training mean")
    ax.set_ylabel("test MAE after retraining (kcal/mol)")
    ax.set_title(f"ROAR on QM7, CMNet, rank by {record['settings']['rank']}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
