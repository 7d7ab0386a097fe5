"""Fuzz every reader and loader of atomnet ("Fuzzed inputs" in docs/reliability.md, reliability issue 17).

Runs the campaigns of ``tests/fuzz_inputs.py`` (the same ones ``tests/test_fuzz_readers.py`` and
``tests/test_fuzz_files.py`` run): seeded hypothesis mutations of small valid seeds, each input checked to end
in a clear one-line error naming the file or in a valid result (re-read equal, finite, converted to a store
that opens; through ``atomnet data convert``/``info`` for the data readers). Failures are recorded, not
raised, so one run lists every distinct problem.

    python scripts/reliability_fuzz.py                      # 1,000 cases per reader, about 8 min on 1 core
    python scripts/reliability_fuzz.py --examples default   # the test suite's counts, about 1 min

writes ``docs/reliability/fuzz.json`` (per reader: cases, outcomes, mutation kinds, errors that name a place
in the file, failures, seconds) and ``docs/reliability/fuzz.png`` (stacked bars: clear error / valid result).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_inputs as fz  # noqa: E402

from atomnet.files import atomic_output, save_figure  # noqa: E402


def run(examples: str, names: list[str]) -> dict:
    """{reader: tally dict + ``reader``, ``mutations``, ``seconds``} for the campaigns ``names``."""
    report = {}
    for name in names:
        target = fz.TARGETS[name]
        n = fz.DEFAULT_EXAMPLES[name] if examples == "default" else int(examples)
        start = time.perf_counter()
        try:
            tally = fz.campaign(target, n, strict=False)
        except fz.MissingSeed as exc:
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        entry = {"reader": target.reader, "mutations": target.mutations, **tally.as_dict()}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        report[name] = entry
        print(
            f"{name:12s} {entry['cases']:5d} cases: {entry['error']:5d} clear errors, {entry['valid']:5d} valid, "
            f"{entry['failure']} failures ({entry['seconds']} s)",
            flush=True,
        )
        for failure in entry["failures"]:
            print(f"    {failure[:300]}", flush=True)
    return report


def plot(report: dict, path: Path) -> Path:
    """Stacked horizontal bars per reader: cases ending in a clear error, in a valid result, in a failure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(names) + 1.4))
    left = [0] * len(names)
    for key, label, color in (
        ("error", "clear error (one line naming the file)", "#4c72b0"),
        ("valid", "valid result (re-read equal, finite, store opens)", "#55a868"),
        ("failure", "failure", "#c44e52"),
    ):
        values = [report[n][key] for n in names]
        ax.barh(names, values, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, name in enumerate(names):
        ax.text(left[y], y, f" {report[name]['cases']}", va="center", fontsize=8)
    ax.set_xlabel("fuzzed inputs")
    ax.set_xlim(0, max(left) * 1.12 if left else 1)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title("Mutated seed inputs per reader", pad=34, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", default="1000", help="cases per reader, or 'default' (the tests' counts)"
    )
    parser.add_argument("--readers", nargs="*", default=list(fz.TARGETS), choices=list(fz.TARGETS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability"), help="folder of fuzz.json/.png")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    report = run(args.examples, args.readers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "fuzz.json", ".json") as tmp:
        tmp.write_text(json.dumps({"examples": args.examples, "readers": report}, indent=2) + "\n")
    plot(report, out / "fuzz.png")
    print(f"wrote {out / 'fuzz.json'} and {out / 'fuzz.png'}")
    return 1 if any(r["failure"] for r in report.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
