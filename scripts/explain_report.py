"""The explanation report: faithfulness, sanity checks, chemistry views and pictures for the shipped models.

    python scripts/explain_report.py --out docs/explanations      # ~10 min on 2 cores
    python scripts/roar.py --out runs/roar                         # the ROAR part (~35 min), copied in if present

Models: ``schnet-qm9-u0`` and ``dtnn-qm9-u0`` on the shared QM9 subset, ``schnet-md17-ethanol`` and
``dtnn-md17-ethanol`` on MD17 ethanol frames. Writes ``report.md`` (tables), ``report.json`` (every number) and
PNG files into ``--out``. Measured numbers only; a method that fails a check is reported as failing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from atomnet.explain import analyze_many, create_analyzer, list_methods, method_info
from atomnet.explain.commands import read_structures
from atomnet.explain.evaluate import (
    deletion_fidelity,
    input_invariance,
    model_randomisation,
    perturbation_curves,
)
from atomnet.explain.plots import plot_comparison, plot_curves
from atomnet.explain.views import plot_probe_map, plot_statistics, probe_map, relevance_statistics
from atomnet.files import atomic_output
from atomnet.pretrained import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CASES = {
    "schnet-qm9-u0": ("qm9", "qm9/qm9_subset.tar.bz2"),
    "dtnn-qm9-u0": ("qm9", "qm9/qm9_subset.tar.bz2"),
    "schnet-md17-ethanol": ("md17", "md17/ethanol_dft_1200.xyz"),
    "dtnn-md17-ethanol": ("md17", "md17/ethanol_dft_1200.xyz"),
}


def fmt(stat: dict) -> str:
    return f"{stat['mean']:+.3f} ± {stat['sem']:.3f}"


def rewrite(out: Path) -> None:
    """Write ``report.md`` again from ``report.json`` (no recomputation)."""
    report = json.loads((out / "report.json").read_text())
    with atomic_output(out / "report.md", ".md") as tmp:
        tmp.write_text(markdown(report))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/explanations")
    p.add_argument("--molecules", type=int, default=100, help="molecules (frames) per model for faithfulness")
    p.add_argument("--sanity-molecules", type=int, default=30)
    p.add_argument(
        "--roar", default="runs/roar", help="folder of scripts/roar.py results (copied if present)"
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [
        m for m in list_methods() if not method_info(m)["needs_fit"]
    ]  # patterns: scripts/cm_explain.py
    report: dict = {"methods": methods, "models": {}}
    data_cache: dict[str, list] = {}
    t0 = time.perf_counter()
    for name, (kind, rel_path) in CASES.items():
        print(f"== {name}", flush=True)
        if kind not in data_cache:
            structures = read_structures(
                str(SHARED / rel_path), progress=False, limit=2000 if kind == "qm9" else 1200
            )
            rng = np.random.default_rng(0)
            data_cache[kind] = [
                structures[i] for i in rng.choice(len(structures), args.molecules, replace=False)
            ]
        mols = data_cache[kind]
        pot = load_model(name).double()
        entry: dict = {"faithfulness": {}, "fidelity": {}}
        curves = []
        for m in methods:
            rel = [e.relevance for e in analyze_many(create_analyzer(m, pot), mols, 50)]
            c = perturbation_curves(pot, mols, rel, m, "delete", steps=10)
            curves.append(c)
            entry["faithfulness"][m] = c.summary()
            fid = deletion_fidelity(pot, mols, rel, n_subsets=10)
            entry["fidelity"][m] = fid["pearson"]
            print(
                f"  {m:22s} AOPC MoRF {fmt(c.summary()['aopc_morf'])}  gap {fmt(c.summary()['gap_lerf_morf'])}  fidelity {fid['pearson']:.3f}",
                flush=True,
            )
        plot_curves([c for c in curves if c.method in ("contributions", "lrp-gamma", "integrated-gradients", "gradient")],
                    out / f"curves_{name}.png", f"{name}: {len(mols)} molecules, delete")  # fmt: skip
        sanity = mols[: args.sanity_molecules]
        entry["randomisation"] = {m: model_randomisation(pot, sanity, m) for m in methods}
        entry["input_invariance"] = input_invariance(pot, sanity, methods, shift=1.0)
        gamma = analyze_many(create_analyzer("lrp-gamma", pot), mols, 50)
        stats = relevance_statistics(gamma)
        entry["statistics_lrp_gamma"] = {
            k: {n: {a: b for a, b in r.items() if a != "values"} for n, r in v.items()}
            for k, v in stats.items()
        }
        plot_statistics(
            stats, out / f"statistics_{name}.png", "eV", f"{name}, lrp-gamma, {len(mols)} molecules"
        )
        example = mols[0]
        rows = [
            [
                create_analyzer(m, pot).analyze(example)[0]
                for m in ("contributions", "lrp-gamma", "integrated-gradients", "gradient")
            ]
        ]
        plot_comparison(rows, out / f"example_{name}.png")
        if name.startswith("dtnn"):
            xs, ys, values, planar, numbers = probe_map(pot, example, 6, 0.1)
            plot_probe_map(
                xs, ys, values, planar, numbers, out / f"probe_C_{name}.png", 6, f"{name}: C probe"
            )
        report["models"][name] = entry
    roar = Path(args.roar) / "roar.json"
    if roar.is_file():
        shutil.copy(roar, out / "roar.json")
        shutil.copy(Path(args.roar) / "roar.png", out / "roar.png")
        report["roar"] = json.loads(roar.read_text())
    report["seconds"] = time.perf_counter() - t0
    with atomic_output(out / "report.json", ".json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_output(out / "report.md", ".md") as tmp:
        tmp.write_text(markdown(report))
    print(f"wrote {out / 'report.md'} and {out / 'report.json'} in {report['seconds'] / 60:.1f} min")
    return 0


def markdown(report: dict) -> str:
    methods = report["methods"]
    lines = [
        "# Explanation report",
        "",
        "Generated by `python scripts/explain_report.py` (see its docstring).",
        "",
    ]
    lines += [
        "## Faithfulness: AOPC of the MoRF curve (delete, eV; mean ± s.e. over molecules) and deletion fidelity",
        "",
    ]
    models = list(report["models"])
    lines.append("| method | " + " | ".join(f"{m} AOPC (random) / fidelity r" for m in models) + " |")
    lines.append("|---|" + "---|" * len(models))
    for meth in methods:
        cells = []
        for m in models:
            s = report["models"][m]["faithfulness"][meth]
            cells.append(
                f"{fmt(s['aopc_morf'])} ({s['aopc_random']['mean']:+.3f}) / {report['models'][m]['fidelity'][meth]:.2f}"
            )
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    lines += ["", "## Sanity: model randomisation (Spearman with the trained model's relevance after re-initialising"
              " the output network, then every block, then the embedding; lower = the method notices)", ""]  # fmt: skip
    for m in models:
        steps = [r["step"] for r in report["models"][m]["randomisation"][methods[0]]]
        lines.append(f"**{m}**: steps " + " → ".join(steps[1:]))
        lines.append("")
        lines.append("| method | " + " | ".join(s for s in steps[1:]) + " |")
        lines.append("|---|" + "---|" * (len(steps) - 1))
        for meth in methods:
            rows = report["models"][m]["randomisation"][meth]
            lines.append(f"| {meth} | " + " | ".join(f"{r['spearman']:.2f}" for r in rows[1:]) + " |")
        lines.append("")
    lines += [
        "## Sanity: input invariance (embedding shifted by 1, compensated in the next biases; same function)",
        "",
    ]
    lines.append("| method | " + " | ".join(f"{m}: relative change" for m in models) + " |")
    lines.append("|---|" + "---|" * len(models))
    for k, meth in enumerate(methods):
        cells = []
        for m in models:
            r = report["models"][m]["input_invariance"][k]
            cells.append(f"{r['relative_change']:.1e} {'invariant' if r['invariant'] else '**changes**'}")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    lines += ["", "## Relevance by element (lrp-gamma, eV: mean ± std, count)", ""]
    for m in models:
        st = report["models"][m]["statistics_lrp_gamma"]["element"]
        lines.append(
            f"- **{m}**: "
            + "; ".join(f"{el} {r['mean']:+.3f} ± {r['std']:.3f} (n={r['count']})" for el, r in st.items())
        )
    if "roar" in report:
        lines += [
            "",
            "## Remove and retrain (QM9 U0, `scripts/roar.py`; test MAE in eV after retraining)",
            "",
        ]
        runs = report["roar"]["runs"]
        fr = sorted({r["fraction"] for r in runs.values() if r["method"] != "none"})
        lines.append("| method | " + " | ".join(f"{f:.0%} masked" for f in fr) + " |")
        lines.append("|---|" + "---|" * len(fr))
        base = [r for r in runs.values() if r["method"] == "none"]
        if base:
            lines.append(f"| (nothing masked: {base[0]['test_mae_eV']:.3f}) |" + " |" * len(fr))
        for meth in sorted({r["method"] for r in runs.values()} - {"none"}):
            cells = [
                next(
                    (
                        f"{r['test_mae_eV']:.3f}"
                        for r in runs.values()
                        if r["method"] == meth and r["fraction"] == f
                    ),
                    "–",
                )
                for f in fr
            ]
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
