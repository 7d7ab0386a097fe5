"""Loading speed of QM9 batches from the HDF5 store (issue 3 target: >= 20,000 molecules/s on one core).

Converts the shared QM9 tarball to a store (or reuses a store given with ``--store``), then times
``StoreDataset.__getitems__`` on batches of 100 random molecules, with neighbour pairs at a 5 Å cutoff
and the U0 target, in a single thread.

    python scripts/bench_loading.py                       # converts ../shared/data/qm9/qm9_subset.tar.bz2
    python scripts/bench_loading.py --store qm9.h5 --batches 500
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED_QM9 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qm9" / "qm9_subset.tar.bz2"


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="existing .h5 store (default: convert the shared QM9 tarball)")
    parser.add_argument("--source", default=str(SHARED_QM9), help="QM9 tarball to convert")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--cutoff", type=float, default=5.0, help="Å")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    from atomnet.data.dataset import StoreDataset

    tmp = None
    store = args.store
    if store is None:
        from atomnet.data.qm9 import read_qm9_tarball
        from atomnet.data.store import write_store

        tmp = tempfile.TemporaryDirectory()
        store = str(Path(tmp.name) / "qm9.h5")
        t0 = time.perf_counter()
        write_store(read_qm9_tarball(args.source, progress=False), store, progress=False)
        print(f"converted {args.source} in {time.perf_counter() - t0:.1f} s")

    ds = StoreDataset(store, cutoff=args.cutoff, targets=["U0"], energy_key="U0")
    rng = np.random.default_rng(args.seed)
    batches = [rng.choice(len(ds), size=args.batch_size, replace=False).tolist() for _ in range(args.batches)]
    for idx in batches[:10]:  # warm-up: page cache, memory maps, torch kernels
        ds.__getitems__(idx)
    n_pairs = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for idx in batches:
        n_pairs += ds.__getitems__(idx).pair_i.numel()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_mol = args.batches * args.batch_size
    rate = n_mol / elapsed
    print(
        f"{len(ds)} molecules in store; {args.batches} batches of {args.batch_size}, cutoff {args.cutoff} Å, "
        f"{n_pairs / args.batches:,.0f} pairs/batch, 1 thread:\n"
        f"  wall {elapsed * 1e3 / args.batches:.2f} ms/batch = {rate:,.0f} molecules/s; "
        f"CPU {cpu * 1e3 / args.batches:.2f} ms/batch = {n_mol / cpu:,.0f} molecules/s per core"
    )
    if tmp is not None:
        tmp.cleanup()
    return rate


if __name__ == "__main__":
    main()
