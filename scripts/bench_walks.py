"""Relevant walks (GNN-LRP): atomnet's transfer-matrix path next to the per-walk reference (one masked forward /
backward per walk, Schnake et al.), on the largest molecules of the shared QM9 subset (29 atoms) and on MD17
ethanol, SchNet with 128 features, 5 Å, 3 and 6 interaction blocks (random weights: cost does not depend on
training), float64, one run.

    python scripts/bench_walks.py --threads 2 --json bench_walks.json

Reported: time for all walks (3 blocks), for pair_relevance (3 and 6 blocks) and for top_k=100 (6 blocks);
the reference's walks per second from a fixed number of walks, scaled to all walks.
Targets (issue 13): all walks of a 29-atom molecule with 3 blocks ≤ 1 s, pair_relevance ≤ 1 s at 6 blocks,
≥ 1,000× the reference's walks per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from atomnet.data import batch_from_atoms
from atomnet.explain import pair_relevance, walks
from atomnet.explain.commands import read_structures
from atomnet.models import SchNet
from atomnet.potential import Potential

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def schnet(blocks: int) -> Potential:
    torch.manual_seed(0)
    model = SchNet(n_atom_basis=128, n_filters=128, n_interactions=blocks, n_rbf=50, cutoff=5.0)
    model.set_statistics(-4.0, 1.0)
    return Potential(model).double().eval()


def main(argv=None) -> int:
    from walk_reference import slow_walk_relevance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qm9", default=str(SHARED / "qm9" / "qm9_subset.tar.bz2"))
    p.add_argument("--md17", default=str(SHARED / "md17" / "ethanol_dft_1200.xyz"))
    p.add_argument("--reference-walks", type=int, default=30, help="walks timed with the reference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    qm9 = read_structures(args.qm9, progress=False)
    largest = max(qm9, key=len)
    cases = {f"QM9 {largest.get_chemical_formula()} ({len(largest)} atoms)": largest}
    cases["MD17 ethanol (9 atoms)"] = read_structures(args.md17, progress=False, limit=1)[0]
    pot3, pot6 = schnet(3), schnet(6)
    rows = []
    for label, atoms in cases.items():
        t_all, e = timed(lambda a=atoms: walks(pot3, a), args.repeats)
        n_walks = len(e.relevance)
        batch = batch_from_atoms([atoms], cutoff=5.0, dtype=torch.float64)
        chosen = np.random.default_rng(0).choice(n_walks, min(args.reference_walks, n_walks), replace=False)
        t0 = time.perf_counter()
        for k in chosen:
            slow_walk_relevance(pot3, batch, e.walks[k].tolist())
        per_walk = (time.perf_counter() - t0) / len(chosen)
        t_pairs3, _ = timed(lambda a=atoms: pair_relevance(pot3, a), args.repeats)
        t_pairs6, _ = timed(lambda a=atoms: pair_relevance(pot6, a), args.repeats)
        t_top6, top = timed(lambda a=atoms: walks(pot6, a, top_k=100), 1)
        row = {
            "case": label,
            "walks_3_blocks": n_walks,
            "all_walks_3_blocks_s": t_all,
            "reference_s_per_walk": per_walk,
            "reference_all_walks_s": per_walk * n_walks,
            "speedup_walks_per_s": per_walk * n_walks / t_all,
            "pair_relevance_3_blocks_s": t_pairs3,
            "pair_relevance_6_blocks_s": t_pairs6,
            "top_100_6_blocks_s": t_top6,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| molecule | walks (3 blocks) | all walks | reference, all walks (scaled) | speed-up | pairs, 3 / 6 blocks | top-100, 6 blocks |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['walks_3_blocks']:,} | {r['all_walks_3_blocks_s']:.2f} s | "
            f"{r['reference_all_walks_s']:.0f} s ({1e3 * r['reference_s_per_walk']:.1f} ms/walk) | "
            f"{r['speedup_walks_per_s']:,.0f}× | {r['pair_relevance_3_blocks_s']:.2f} / "
            f"{r['pair_relevance_6_blocks_s']:.2f} s | {r['top_100_6_blocks_s']:.2f} s |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
