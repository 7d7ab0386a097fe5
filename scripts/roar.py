"""Remove and retrain (ROAR, Hooker et al. 2018, arXiv 1806.10758) for atom relevance on QM9 U0.

For each method and fraction, the top-ranked atoms of every training and test molecule (ranked by the method on
the shipped ``schnet-qm9-u0``) are masked — their embedding is multiplied by zero, the geometry stays (the ``mask``
perturbation of :mod:`atomnet.explain.evaluate`) — and the same small SchNet recipe is trained from scratch for a
fixed time; the test MAE is compared with masking random atoms. A good ranking degrades accuracy more than random.
Resumable: finished runs are read back from the JSON.

    python scripts/roar.py --out runs/roar --budget 120      # ~35 min on 2 cores (16 runs)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from atomnet.data.batch import make_batch
from atomnet.data.commands import read_source
from atomnet.explain import analyze_many, create_analyzer
from atomnet.files import atomic_output, save_figure
from atomnet.models import SchNet
from atomnet.pretrained import load_model
from atomnet.units import unit_factor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(path: str, n: int):
    from ase import Atoms

    table = read_source(path, limit=n, progress=False)
    energy = table.properties["U0"] * unit_factor(table.units["U0"])  # eV
    o = table.offsets
    atoms = [
        Atoms(numbers=table.numbers[o[m] : o[m + 1]], positions=table.positions[o[m] : o[m + 1]])
        for m in range(n)
    ]
    return atoms, energy


def masks_for(rankings, fraction: float, rng=None, rank: str = "signed"):
    """1 = kept, 0 = masked: the top ceil(fraction · n) atoms of each ranking — largest signed relevance
    first (``rank="signed"``, as MoRF) or largest |relevance| first (``"abs"``) — or random atoms."""
    out = []
    for r in rankings:
        n = len(r)
        k = math.ceil(fraction * n)
        key = np.abs(r) if rank == "abs" else np.asarray(r)
        order = rng.permutation(n) if rng is not None else np.argsort(-key, kind="stable")
        m = np.ones(n)
        m[order[:k]] = 0.0
        out.append(m)
    return out


def batches(atoms, energy, masks, idx, size, cutoff):
    out = []
    for s in range(0, len(idx), size):
        part = idx[s : s + size]
        b = make_batch(
            torch.from_numpy(np.concatenate([atoms[i].numbers for i in part])),
            torch.from_numpy(np.concatenate([atoms[i].positions for i in part])).float(),
            torch.tensor([len(atoms[i]) for i in part]),
            cutoff,
        )
        out.append(
            (
                b,
                torch.from_numpy(np.concatenate([masks[i] for i in part])).float(),
                torch.tensor(energy[part]).float(),
            )
        )
    return out


def train_and_test(atoms, energy, masks, train, test, budget_s: float, seed: int) -> dict:
    """The fixed recipe: SchNet 32 features, 2 blocks, 5 Å, AdamW 1e-3, batches of 32, for ``budget_s``."""
    torch.manual_seed(seed)
    model = SchNet(n_atom_basis=32, n_filters=32, n_interactions=2, n_rbf=20, cutoff=5.0, max_z=10)
    counts = np.zeros((len(train), 11))
    for row, i in enumerate(train):
        np.add.at(counts[row], atoms[i].numbers, 1.0)
    present = np.flatnonzero(counts.any(0))
    coef, *_ = np.linalg.lstsq(counts[:, present], energy[train], rcond=None)
    atomref = np.zeros(11)
    atomref[present] = coef
    per_atom = (energy[train] - counts[:, present] @ coef) / counts.sum(1)
    model.set_statistics(0.0, float(per_atom.std()) or 1.0, atomref)
    mask_now = {}
    model.embedding.register_forward_hook(lambda mod, args, out: out * mask_now["m"][:, None])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_b = batches(atoms, energy, masks, train, 32, 5.0)
    test_b = batches(atoms, energy, masks, test, 250, 5.0)
    rng = np.random.default_rng(seed)
    start, epochs = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s:
        for k in rng.permutation(len(train_b)):
            b, m, e = train_b[k]
            mask_now["m"] = m
            loss = torch.nn.functional.mse_loss(model(b)["energy"], e)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs += 1
    errors = []
    with torch.no_grad():
        for b, m, e in test_b:
            mask_now["m"] = m
            errors.append((model(b)["energy"] - e).abs())
    return {
        "test_mae_eV": float(torch.cat(errors).mean()),
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "qm9" / "qm9_subset.tar.bz2"))
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--methods", default="lrp-gamma,integrated-gradients,gradient,contributions")
    p.add_argument("--fractions", default="0.1,0.3,0.5")
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", choices=("signed", "abs"), default="signed", help="atoms ranked by R or by |R|")
    p.add_argument("--out", default="runs/roar")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "roar.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    results.update({k: v for k, v in vars(args).items() if k != "out"})
    n = args.n_train + args.n_test
    atoms, energy = load(args.data, n)
    perm = np.random.default_rng(args.seed).permutation(n)
    train, test = perm[: args.n_train], perm[args.n_train :]
    pot = load_model("schnet-qm9-u0")
    methods = [m for m in args.methods.split(",") if m]
    fractions = [float(f) for f in args.fractions.split(",")]
    rankings = {m: [e.relevance for e in analyze_many(create_analyzer(m, pot), atoms, 250)] for m in methods}
    jobs = [("none", 0.0)] + [(m, f) for f in fractions for m in [*methods, "random"]]
    for method, fraction in tqdm(jobs, desc="ROAR runs"):
        key = f"{method}@{fraction}"
        if key in results["runs"]:
            continue
        if method == "none":
            masks = [np.ones(len(a)) for a in atoms]
        elif method == "random":
            masks = masks_for(rankings[methods[0]], fraction, np.random.default_rng(args.seed + 1))
        else:
            masks = masks_for(rankings[method], fraction, rank=args.rank)
        results["runs"][key] = {"method": method, "fraction": fraction,
                                **train_and_test(atoms, energy, masks, train, test, args.budget, args.seed)}  # fmt: skip
        with atomic_output(results_path, ".json") as tmp:
            tmp.write_text(json.dumps(results, indent=1))
        print(key, results["runs"][key], flush=True)
    plot(results, out / "roar.png")
    print(f"wrote {results_path}, {out / 'roar.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    runs = list(results["runs"].values())
    base = [r["test_mae_eV"] for r in runs if r["method"] == "none"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in sorted({r["method"] for r in runs} - {"none"}):
        rows = sorted((r["fraction"], r["test_mae_eV"]) for r in runs if r["method"] == method)
        xs, ys = [0.0] + [x for x, _ in rows], base + [y for _, y in rows]
        ax.plot(xs[-len(ys) :], ys, marker="o", lw=2 if method != "random" else 2.5,
                color="0.4" if method == "random" else None, ls="--" if method == "random" else "-", label=method)  # fmt: skip
    ax.set_xlabel("fraction of atoms masked (train and test)")
    ax.set_ylabel("test MAE after retraining (eV)")
    ax.set_title(
        f"ROAR on QM9 U0 ({results['n_train']} train, {results['budget']:.0f} s per run)", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
