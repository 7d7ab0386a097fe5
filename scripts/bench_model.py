"""Model throughput: forward and forward+backward (energy + forces) molecules/s for QM9-size molecules.

Side by side in one run: SchNet and DTNN, each with and without the denormal guard (clamped RBF exponent)
and with torch's global flush-denormal switch. Batches of 100 real QM9 molecules from the shared tarball.

    python scripts/bench_model.py [--qm9 ../shared/data/qm9/qm9_subset.tar.bz2] [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from atomnet.data.batch import make_batch
from atomnet.data.qm9 import read_qm9_tarball
from atomnet.models import build_model
from atomnet.potential import Potential

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "schnet": dict(n_atom_basis=128, n_filters=128, n_interactions=3, n_rbf=50, cutoff=5.0),
    # DTNN's 20 Å Gaussian grid: most far-tail Gaussians underflow, the worst case for denormals
    "dtnn": dict(n_atom_basis=64, n_factors=64, n_interactions=3, cutoff=20.0),
}


def load_batches(path: Path, n_batches: int, batch_size: int, cutoff: float):
    table = read_qm9_tarball(path, limit=n_batches * batch_size, progress=False)
    offsets = table.offsets
    batches = []
    for b in range(n_batches):
        lo, hi = offsets[b * batch_size], offsets[(b + 1) * batch_size]
        batches.append(
            make_batch(
                torch.from_numpy(table.numbers[lo:hi]),
                torch.from_numpy(table.positions[lo:hi]).float(),
                torch.from_numpy(table.n_atoms[b * batch_size : (b + 1) * batch_size]),
                cutoff,
            )
        )
    return batches


def throughput(pot: Potential, batches, forces: bool, repeats: int) -> float:
    pot(batches[0], forces=forces)  # warm-up
    n_mol = 0
    start = time.perf_counter()
    for r in range(repeats):
        batch = batches[r % len(batches)]
        pot(batch, forces=forces)
        n_mol += batch.n_molecules
    return n_mol / (time.perf_counter() - start)


def filter_network_timing(guard: bool, flush: bool, repeats: int) -> tuple[float, float]:
    """ms per forward+backward of Gaussian RBF + SchNet filter network on 20,000 distances, and the
    fraction of subnormal RBF values."""
    from atomnet.nn.basis import GaussianRBF
    from atomnet.nn.cfconv import FilterNetwork

    torch.manual_seed(0)
    r = (torch.rand(20000) * 4.5 + 0.5).requires_grad_(True)
    rbf, net = GaussianRBF(50, 5.0, guard_denormals=guard), FilterNetwork(50, 128)
    fcut = torch.ones(20000)
    torch.set_flush_denormal(flush)
    values = rbf(r.detach())
    subnormal = float(((values > 0) & (values < torch.finfo(torch.float32).tiny)).float().mean())
    torch.autograd.grad(net(rbf(r), fcut).sum(), r)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.autograd.grad(net(rbf(r), fcut).sum(), r)
    torch.set_flush_denormal(False)
    return (time.perf_counter() - start) / repeats * 1e3, subnormal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qm9", type=Path, default=ROOT.parent / "shared/data/qm9/qm9_subset.tar.bz2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} batch={args.batch_size} repeats={args.repeats} torch {torch.__version__}")
    print("RBF (50 Gaussians, 5 Å) + filter network (128), 20,000 distances, forward + backward:")
    for label, guard, flush in (
        ("guard", True, False),
        ("no guard", False, False),
        ("no guard + flush", False, True),
    ):
        ms, sub = filter_network_timing(guard, flush, args.repeats)
        print(f"  {label:18s} {ms:7.2f} ms   subnormal RBF values {100 * sub:.1f} %")
    print(f"{'model':8s} {'setting':22s} {'forward mol/s':>14s} {'fwd+forces mol/s':>17s}")
    for name, hp in CONFIGS.items():
        batches = load_batches(args.qm9, 5, args.batch_size, hp["cutoff"])
        n_pairs = sum(b.pair_i.numel() for b in batches) / len(batches)
        for setting in ("guard", "no guard", "no guard + flush"):
            torch.manual_seed(0)
            model = build_model(name, **hp, guard_denormals=(setting == "guard"))
            pot = Potential(model).eval()
            torch.set_flush_denormal(setting.endswith("flush"))
            fwd = throughput(pot, batches, False, args.repeats)
            both = throughput(pot, batches, True, args.repeats)
            print(f"{name:8s} {setting:22s} {fwd:14.0f} {both:17.0f}   ({n_pairs:.0f} pairs/batch)")
        torch.set_flush_denormal(False)


if __name__ == "__main__":
    main()
