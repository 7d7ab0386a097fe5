"""``atomnet explain MODEL STRUCTURES --method NAME``: atom relevance as JSON and pictures.

    atomnet explain schnet-md17-ethanol ethanol.xyz --method lrp-gamma --param gamma=0.5 \\
        --json ethanol.json --png ethanol.png
    atomnet explain schnet-qm9-u0 qm9.tar.bz2 --index 0:8 --compare lrp-gamma,integrated-gradients,gradient \\
        --png compare.png

STRUCTURES is any file the data readers take (xyz/extxyz and other ASE formats, the QM9 tarball, MD17 npz,
QM7) or an atomnet HDF5 store. ``--index`` picks molecules (``3``, ``0,5,9``, ``10:20``; default all).
The JSON holds one record per molecule with the :class:`~atomnet.explain.explanation.Explanation` fields.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atomnet.errors import ExplanationError
from atomnet.files import atomic_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="pretrained model name, atomnet model file or checkpoint")
    parser.add_argument(
        "structures", nargs="?", help="structure file (xyz/extxyz, QM9 tarball, MD17 npz, .h5 store)"
    )
    parser.add_argument("--method", default="lrp-gamma", help="explanation method (--list-methods)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="method parameter, e.g. gamma=0.5"
    )
    parser.add_argument("--compare", default=None, metavar="M1,M2,...", help="several methods side by side")
    parser.add_argument("--index", default=None, help="molecules to explain: 3 | 0,5,9 | 10:20 (default all)")
    parser.add_argument("--format", default=None, help="reader of the structure file (default: guessed)")
    parser.add_argument(
        "--limit", type=int, default=None, help="read only the first N structures of the file"
    )
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the explanations here")
    parser.add_argument(
        "--png", default=None, metavar="OUT.png", help="draw the molecules coloured by relevance"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--list-methods", action="store_true", help="print the methods and their parameters")
    parser.add_argument(
        "--walks",
        action="store_true",
        help="relevant walks (GNN-LRP) of one structure under the LRP --method",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="with --walks: only the K most relevant walks"
    )
    parser.add_argument("--draw-walks", type=int, default=20, help="with --walks: walks drawn in the PNG")
    parser.add_argument(
        "--evaluate",
        choices=("deletion", "fidelity"),
        default=None,
        help="faithfulness of --methods: atom-perturbation curves (AOPC) or deletion fidelity",
    )
    parser.add_argument(
        "--methods", default=None, metavar="M1,M2,...", help="with --evaluate (default: --method)"
    )
    parser.add_argument(
        "--perturbation", choices=("delete", "mask"), default="delete", help="with --evaluate"
    )
    parser.add_argument("--steps", type=int, default=10, help="with --evaluate deletion: fractions of atoms")
    parser.add_argument(
        "--statistics", action="store_true", help="relevance by element and environment over the molecules"
    )
    parser.add_argument(
        "--probe-map",
        default=None,
        metavar="ELEMENT",
        help="local chemical potential map of a probe (e.g. C)",
    )
    parser.add_argument("--spacing", type=float, default=0.1, help="with --probe-map: grid spacing, Å")
    parser.add_argument(
        "--fit",
        default=None,
        metavar="FILE",
        help="training structures for methods that learn from data (patternnet, patternattribution)",
    )
    parser.add_argument("--fit-limit", type=int, default=2000, help="with --fit: read at most this many")
    parser.add_argument(
        "--entries",
        default=None,
        metavar="OUT.png",
        help="Coulomb-matrix models: each molecule beside the relevance of its matrix entries (first 4; "
        "with --compare the first molecule under every method)",
    )
    parser.add_argument("--no-progress", action="store_true")


def parse_params(items: list[str]) -> dict[str, str]:
    """``["gamma=0.5", "steps=32"]`` → ``{"gamma": "0.5", "steps": "32"}`` (types checked by the method)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ExplanationError(f"--param {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_index(text: str | None, n: int, source: str) -> list[int]:
    """Molecule indices from ``3``, ``0,5,9``, ``10:20`` or ``-1`` (Python slices, negatives allowed)."""
    if text is None:
        return list(range(n))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                out.extend(range(n)[slice(int(a) if a else None, int(b) if b else None)])
            else:
                k = int(part)
                if not -n <= k < n:
                    raise IndexError
                out.append(k % n)
        except (ValueError, IndexError):
            raise ExplanationError(
                f"--index {text!r}: {part!r} is not a molecule of {source} (0..{n - 1})"
            ) from None
    if not out:
        raise ExplanationError(f"--index {text!r} selects no molecule of {source} ({n} molecules)")
    return out


def read_structures(
    path: str, fmt: str | None = None, progress: bool = True, limit: int | None = None
) -> list:
    """Every structure of ``path`` as ``ase.Atoms`` (Å), from an HDF5 store or any raw format."""
    from ase import Atoms

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file")
    if source.suffix in (".h5", ".hdf5") and fmt is None:
        from atomnet.data.store import Store

        with Store(source) as store:
            structures = []
            for i in range(store.n_molecules if limit is None else min(limit, store.n_molecules)):
                numbers, positions = store.molecule(i)
                structures.append(Atoms(numbers=numbers, positions=positions))
    else:
        from atomnet.data.ase_io import table_to_atoms
        from atomnet.data.commands import read_source

        structures = table_to_atoms(read_source(str(source), fmt, limit=limit, progress=progress))
    if not structures:
        raise ExplanationError(f"{source}: no structures in the file")
    for atoms in structures:
        atoms.calc = None
    return structures


def run_walks(args, analyzer, structures, indices) -> int:
    """``--walks``: walks (all or top-K), pair relevance and body orders of one structure → JSON and PNG."""
    from atomnet.explain.walks import _explanation, _pairs_from, body_orders, transfer_matrices

    if len(indices) != 1:
        raise ExplanationError(f"--walks explains one structure; pick it with --index (got {len(indices)})")
    from atomnet.explain.analyzer import as_batch

    batch = as_batch(structures[indices[0]], analyzer.potential)
    rule = analyzer.method.name
    wm = transfer_matrices(analyzer.potential.model, batch, rule, **analyzer.params)
    e = _explanation(wm, rule, analyzer.params, args.top_k, 2.0)
    pairs = _pairs_from(wm)
    orders = body_orders(e.walks, e.relevance, e.walks.shape[1]) if e.complete else None
    e.extra = {"index": indices[0], "pair_relevance": pairs}
    if orders is not None:
        e.extra["body_order_relevance"] = orders
    kind = "walks" if e.complete else f"top-{args.top_k} walks"
    print(
        f"molecule {indices[0]}: E = {e.energy:.4f} eV, {len(e.relevance):,} {kind}, Σ = {e.relevance.sum():.4f} eV"
    )
    if orders is not None:
        print("body orders (eV): " + ", ".join(f"{k + 1}-body {v:.4f}" for k, v in enumerate(orders)))
    written = []
    if args.json:
        with atomic_output(args.json, ".json") as tmp:
            tmp.write_text(e.to_json())
        written.append(args.json)
    if args.png:
        from atomnet.explain.plots import plot_walks

        plot_walks(e, pairs, orders, args.png, top=args.draw_walks)
        written.append(args.png)
    if written:
        print(f"wrote {', '.join(written)}")
    return 0


def write_statistics(args, explanations) -> int:
    """``--statistics``: relevance per element and environment → table (stdout), JSON, box plot."""
    from atomnet.explain.views import plot_statistics, relevance_statistics

    stats = relevance_statistics(explanations)
    unit = explanations[0].units
    print(
        f"{'group':18s} {'n':>6s} {'mean':>9s} {'std':>9s} {'median':>9s}   ({explanations[0].method}, {unit})"
    )
    for kind in ("element", "environment"):
        for name, row in stats[kind].items():
            print(f"{name:18s} {row['count']:6d} {row['mean']:+9.4f} {row['std']:9.4f} {row['median']:+9.4f}")
    written = []
    if args.json:
        plain = {
            k: {n: {a: b for a, b in r.items() if a != "values"} for n, r in v.items()}
            for k, v in stats.items()
        }
        with atomic_output(args.json, ".json") as tmp:
            tmp.write_text(json.dumps({"method": explanations[0].method, "units": unit, **plain}, indent=1))
        written.append(args.json)
    if args.png:
        plot_statistics(
            stats, args.png, unit, f"{args.model}, {explanations[0].method}, {len(explanations)} molecules"
        )
        written.append(args.png)
    if written:
        print(f"wrote {', '.join(written)}")
    return 0


def run_probe_map(args, structures, indices, pot) -> int:
    """``--probe-map ELEMENT``: Ω(r) of one structure on a grid in its plane → PNG (and JSON)."""
    from ase.data import atomic_numbers

    from atomnet.explain.views import plot_probe_map, probe_map

    if len(indices) != 1:
        raise ExplanationError(f"--probe-map draws one structure; pick it with --index (got {len(indices)})")
    probe = atomic_numbers.get(args.probe_map) or (int(args.probe_map) if args.probe_map.isdigit() else None)
    if not probe:
        raise ExplanationError(f"--probe-map {args.probe_map!r}: not an element symbol or atomic number")
    if not args.spacing > 0:
        raise ExplanationError(f"--spacing must be > 0 Å, got {args.spacing}")
    xs, ys, values, planar, numbers = probe_map(pot, structures[indices[0]], probe, args.spacing)
    print(
        f"molecule {indices[0]}: probe {args.probe_map} on {values.size} points, {values.min():.3f} … {values.max():.3f} eV"
    )
    written = []
    if args.json:
        record = {"probe": probe, "x": xs.tolist(), "y": ys.tolist(), "values": values.tolist(),
                  "positions": planar.tolist(), "numbers": numbers.tolist()}  # fmt: skip
        with atomic_output(args.json, ".json") as tmp:
            tmp.write_text(json.dumps(record))
        written.append(args.json)
    if args.png:
        plot_probe_map(
            xs,
            ys,
            values,
            planar,
            numbers,
            args.png,
            probe,
            f"{args.model}: {args.probe_map} probe, molecule {indices[0]}",
        )
        written.append(args.png)
    if written:
        print(f"wrote {', '.join(written)}")
    return 0


def run_evaluate(args, structures, pot, params) -> int:
    """``--evaluate``: one table of metrics per method (mean ± standard error over molecules) → JSON, PNG."""
    from atomnet.explain.analyzer import analyze_many, create_analyzer
    from atomnet.explain.evaluate import deletion_fidelity, perturbation_curves

    names = [m.strip() for m in (args.methods or args.method).split(",")]
    results, curves = {}, []
    for name in names:
        analyzer = create_analyzer(name, pot, **(params if len(names) == 1 else {}))
        rel = [e.relevance for e in analyze_many(analyzer, structures, args.batch_size, not args.no_progress)]
        if args.evaluate == "deletion":
            c = perturbation_curves(pot, structures, rel, name, args.perturbation, steps=args.steps)
            curves.append(c)
            results[name] = {**c.summary(), "fractions": c.fractions.tolist(),
                             "morf": c.morf.mean(0).tolist(), "lerf": c.lerf.mean(0).tolist(),
                             "random": c.random.mean(0).tolist()}  # fmt: skip
            s = results[name]
            print(f"{name:22s} AOPC MoRF {s['aopc_morf']['mean']:+.4f} ± {s['aopc_morf']['sem']:.4f}  "
                  f"LeRF {s['aopc_lerf']['mean']:+.4f}  random {s['aopc_random']['mean']:+.4f}  "
                  f"gap {s['gap_lerf_morf']['mean']:+.4f} ± {s['gap_lerf_morf']['sem']:.4f} eV")  # fmt: skip
        else:
            results[name] = deletion_fidelity(pot, structures, rel, perturbation=args.perturbation)
            print(f"{name:22s} deletion fidelity (Pearson) {results[name]['pearson']:.4f} "
                  f"over {results[name]['n_subsets']} subsets")  # fmt: skip
    written = []
    if args.json:
        plain = {
            m: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}
            for m, r in results.items()
        }
        record = {"model": str(args.model), "structures": args.structures, "evaluate": args.evaluate,
                  "perturbation": args.perturbation, "n_molecules": len(structures), "methods": plain}  # fmt: skip
        with atomic_output(args.json, ".json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        written.append(args.json)
    if args.png:
        from atomnet.explain.plots import plot_curves, plot_fidelity

        if curves:
            plot_curves(curves, args.png, f"{args.model}: {len(structures)} molecules, {args.perturbation}")
        else:
            plot_fidelity(results, args.png)
        written.append(args.png)
    if written:
        print(f"wrote {', '.join(written)}")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from atomnet.explain.analyzer import analyze_many, create_analyzer, list_methods, method_info

    if args.list_methods:
        for name in list_methods():
            info = method_info(name)
            params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "-"
            kind = "conserving" if info["conserving"] else "not conserving"
            if info["needs_fit"]:
                kind += "; learns from --fit FILE"
            print(f"{name:22s} [{info['units']}; {kind}] params: {params}")
        return 0
    if args.model is None or args.structures is None:
        raise ExplanationError("give MODEL and STRUCTURES (or --list-methods)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise ExplanationError(f"--batch-size must be >= 1, got {args.batch_size}")
    methods = [m.strip() for m in args.compare.split(",")] if args.compare else [args.method]
    params = parse_params(args.param)
    dtype = getattr(torch, args.dtype)
    # analyzers first: a bad method or parameter fails before any data is read
    analyzers = [
        create_analyzer(m, args.model, dtype=dtype, **(params if not args.compare else {})) for m in methods
    ]
    needs = [a.method.name for a in analyzers if a.method.needs_fit]
    if needs and args.fit is None:
        raise ExplanationError(f"method {needs[0]!r} learns from training structures: pass --fit FILE")
    if needs:
        train = read_structures(args.fit, None, not args.no_progress, args.fit_limit)
        for a in analyzers:
            if a.method.needs_fit:
                a.fit(train, progress=not args.no_progress)
    structures = read_structures(args.structures, args.format, not args.no_progress, args.limit)
    indices = parse_index(args.index, len(structures), args.structures)
    if args.walks:
        return run_walks(args, analyzers[0], structures, indices)
    pot = analyzers[0].potential  # loaded once, shared by every branch
    if args.evaluate:
        return run_evaluate(args, [structures[i] for i in indices], pot, params)
    if args.probe_map:
        return run_probe_map(args, structures, indices, pot)
    chosen = [structures[i] for i in indices]
    results = {
        a.method.name: analyze_many(a, chosen, args.batch_size, progress=not args.no_progress)
        for a in analyzers
    }
    if args.statistics:
        return write_statistics(args, results[methods[0]])
    written = []
    if args.json:
        records = [
            {"index": idx, **{m: results[m][k].to_dict() for m in results}}
            if args.compare
            else {"index": idx, **results[methods[0]][k].to_dict()}
            for k, idx in enumerate(indices)
        ]
        with atomic_output(args.json, ".json") as tmp:
            tmp.write_text(
                json.dumps(
                    {"model": str(args.model), "structures": args.structures, "molecules": records}, indent=1
                )
            )
        written.append(args.json)
    if args.png:
        from atomnet.explain.plots import plot_comparison, plot_explanations

        if args.compare:
            rows = [[results[m][k] for m in results] for k in range(min(len(indices), 8))]
            plot_comparison(rows, args.png, indices[: len(rows)])
        else:
            plot_explanations(results[methods[0]], args.png, indices)
        written.append(args.png)
    if args.entries:
        from atomnet.explain.plots import plot_entries

        shown = [results[m][0] for m in results] if args.compare else results[methods[0]][:4]
        if any(e.features is None for e in shown):
            raise ExplanationError(
                "--entries: the model has no Coulomb-matrix input (entries exist for cmnet)"
            )
        plot_entries(shown, args.entries)
        written.append(args.entries)
    first = results[methods[0]]
    for k in range(min(3, len(first))):
        e = first[k]
        tail = f", unexplained {e.unexplained:.4f} eV" if e.unexplained is not None else ""
        print(
            f"molecule {indices[k]}: E = {e.energy:.4f} eV, Σ relevance = {e.relevance.sum():.4f} {e.units}{tail}"
        )
    if len(first) > 3:
        print(f"... {len(first)} molecules explained with {', '.join(results)}")
    if written:
        print(f"wrote {', '.join(written)}")
    return 0
