"""One epoch over a store with 0, 1 and 2 DataLoader workers: time and memory of every process (issue 18).

Each worker count runs in a fresh process. The loader is the training data module's: ``StoreDataset`` (memory
maps of the store's contiguous datasets, opened lazily in each process after the fork), batches of
``--batch-size`` molecules in a seeded random order, neighbour pairs at ``--cutoff`` Å computed in the
workers. ``--train`` adds a SchNet training step (forward, forces off, backward, Adam) per batch, so the
loader runs beside the model as in ``atomnet train``.

Memory per process is read from ``/proc``: peak RSS (``VmHWM``, which counts the store's pages the process has
touched even though every process shares them through the page cache), private anonymous memory at the end
(``RssAnon``: what a process holds of its own) and ``Pss`` (shared pages divided among the processes sharing them).

    atomnet data convert qm9pack qm9full.h5                                 # full QM9, 130,831 molecules
    python scripts/epoch_workers.py qm9full.h5 --workers 0 1 2 --json docs/scale/epoch_workers.json
    python scripts/epoch_workers.py qm9full.h5 --workers 0 1 2 --train --batches 200 --json docs/scale/epoch_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def proc_memory(pid: int) -> dict[str, float]:
    """{"peak_rss_mib", "rss_anon_mib", "pss_mib"} of process ``pid`` from /proc (Linux)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon"):
                out["peak_rss_mib" if key == "VmHWM" else "rss_anon_mib"] = int(value.split()[0]) / 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    out["pss_mib"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (the DataLoader's workers)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return sorted(kids)


def one_epoch(
    store: str, workers: int, batch_size: int, cutoff: float, batches: int | None, train: bool
) -> dict:
    """Time one epoch (or ``batches`` batches) in this process; memory of this process and its workers."""
    import torch

    from atomnet.data.dataset import pass_through
    from atomnet.training.datamodule import EpochSampler, open_dataset

    torch.set_num_threads(int(os.environ.get("EPOCH_THREADS", "2")))
    ds = open_dataset(store, cutoff, "U0", None, None, torch.float32)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        sampler=EpochSampler(len(ds), 0, True, 0, 1, pad=False),
        collate_fn=pass_through,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    step = None
    if train:
        from atomnet.models.registry import build_model

        model = build_model("schnet", n_atom_basis=64, n_filters=64, n_interactions=3, cutoff=cutoff)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(batch):
            optimizer.zero_grad()
            energy = model(batch)["energy"]
            loss = (energy - batch.targets["energy"].to(energy.dtype)).pow(2).mean()
            loss.backward()
            optimizer.step()

    n_total = len(loader) if batches is None else min(batches, len(loader))
    molecules = atoms = 0
    start = time.perf_counter()
    first = None
    try:
        from tqdm import tqdm

        bar = tqdm(total=n_total, desc=f"{workers} workers", leave=False, file=sys.stderr)
    except ImportError:
        bar = None
    for k, batch in enumerate(loader):
        if k == n_total:
            break
        if first is None:
            first = time.perf_counter() - start
        molecules += batch.n_molecules
        atoms += batch.numbers.numel()
        if step is not None:
            step(batch)
        if bar is not None:
            bar.update()
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    kids = [proc_memory(p) for p in children(os.getpid())]
    return {
        "workers": workers,
        "train_step": train,
        "batches": n_total,
        "molecules": molecules,
        "atoms": atoms,
        "seconds": round(elapsed, 2),
        "first_batch_s": round(first or 0.0, 2),
        "molecules_per_s": round(molecules / elapsed, 1),
        "main": proc_memory(os.getpid()),
        "worker_processes": kids,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="atomnet .h5 store with U0 (e.g. from `atomnet data convert qm9pack`)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--cutoff", type=float, default=5.0, help="Å")
    parser.add_argument("--batches", type=int, default=None, help="stop after this many batches")
    parser.add_argument("--train", action="store_true", help="a SchNet training step per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one worker count here
    args = parser.parse_args(argv)
    if not Path(args.store).is_file():
        print(f"{args.store}: no such store", file=sys.stderr)
        return 2
    if args.one is not None:
        result = one_epoch(args.store, args.one, args.batch_size, args.cutoff, args.batches, args.train)
        print(json.dumps(result))
        return 0
    results = []
    for w in args.workers:  # each in a fresh process: its peak RSS is its own
        cmd = [sys.executable, __file__, args.store, "--one", str(w), "--batch-size", str(args.batch_size)]
        cmd += ["--cutoff", str(args.cutoff)] + (["--batches", str(args.batches)] if args.batches else [])
        cmd += ["--train"] if args.train else []
        env = {**os.environ, "EPOCH_THREADS": str(args.threads)}
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        kids = ", ".join(
            f"{k['peak_rss_mib']:.0f}/{k['rss_anon_mib']:.0f}/{k.get('pss_mib', 0):.0f}"
            for k in r["worker_processes"]
        )
        m = r["main"]
        print(
            f"{w} workers: {r['molecules']} molecules in {r['seconds']} s ({r['molecules_per_s']} /s, first batch "
            f"{r['first_batch_s']} s); main peak RSS/anon/PSS {m['peak_rss_mib']:.0f}/{m['rss_anon_mib']:.0f}/"
            f"{m.get('pss_mib', 0):.0f} MiB; workers {kids or '-'} MiB",
            flush=True,
        )
    if args.json:
        import platform

        from atomnet.files import atomic_output

        report = {
            "date": time.strftime("%Y-%m-%d"),
            "store": str(args.store),
            "store_mib": round(Path(args.store).stat().st_size / 2**20, 1),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(Path(args.json), ".json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
