"""Cost of every explanation method next to one forward + backward pass (energy and forces) of the same model,
in the same run: milliseconds per molecule for a batch of QM9 molecules and for one MD17 ethanol frame.

    python scripts/bench_explain.py --threads 2 --json bench_explain.json

Targets (issue 12): every LRP rule ≤ 3× forward + backward; integrated gradients ≤ steps × (forward + backward).
The structures are read once and batched once (neighbour pairs included), so both sides time the model only.
Methods that learn from data (PatternNet, PatternAttribution) are fitted on the same structures, untimed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from atomnet.data import batch_from_atoms
from atomnet.explain import create_analyzer, list_methods
from atomnet.explain.commands import read_structures
from atomnet.pretrained import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def interleaved(fn, base, repeats: int) -> tuple[float, float]:
    """Best wall-clock times (s) of ``fn`` and ``base``, called alternately ``repeats`` times after one
    warm-up each (alternating keeps a shared machine's slow phases from favouring either side)."""
    fn(), base()
    t_fn, t_base = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        t_fn.append(time.perf_counter() - t1)
        t_base.append(t1 - t0)
    return min(t_fn), min(t_base)


def bench_case(label: str, model: str, structures, repeats: int) -> list[dict]:
    pot = load_model(model)
    batch = batch_from_atoms(structures, cutoff=pot.cutoff, dtype=pot.dtype)
    n = len(structures)
    rows = []
    for name in list_methods():
        analyzer = create_analyzer(name, pot)
        if analyzer.method.needs_fit:  # patterns learned from the structures themselves (not timed)
            analyzer.fit(batch)
        t, base = interleaved(lambda a=analyzer: a.analyze(batch), lambda: pot(batch, forces=True), repeats)
        rows.append(
            {
                "case": label,
                "method": name,
                "ms_per_molecule": 1e3 * t / n,
                "forward_backward_ms_per_molecule": 1e3 * base / n,
                "ratio": t / base,
            }
        )
        print(f"{label:28s} {name:22s} {1e3 * t / n:9.3f} ms/molecule  {t / base:6.2f}x", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qm9", default=str(SHARED / "qm9" / "qm9_subset.tar.bz2"))
    p.add_argument("--md17", default=str(SHARED / "md17" / "ethanol_dft_1200.xyz"))
    p.add_argument("--batch", type=int, default=100, help="QM9 molecules per batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    qm9 = read_structures(args.qm9, progress=False, limit=args.batch)
    md17 = read_structures(args.md17, progress=False, limit=1)
    rows = bench_case(f"QM9, batch of {len(qm9)}", "schnet-qm9-u0", qm9, args.repeats)
    rows += bench_case("MD17 ethanol, one frame", "schnet-md17-ethanol", md17, args.repeats)
    print(
        "\n| case | method | ms / molecule | forward + backward, ms / molecule | ratio |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['case']} | {r['method']} | {r['ms_per_molecule']:.3f} | "
            f"{r['forward_backward_ms_per_molecule']:.3f} | {r['ratio']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
