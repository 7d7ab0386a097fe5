"""The classic explanation experiments on a Coulomb-matrix network: input invariance and pictures.

Input invariance (Kindermans et al. 2017, arXiv 1711.00867): a copy of the CMNet whose inputs are all shifted
by a constant (the first dense layer's bias compensates, so it computes the same energies) is explained by every
method; a method is input-invariant when its attributions do not change. Pictures: one QM7 test molecule with its
atom relevance and the relevance of every sorted Coulomb-matrix entry, under several methods.

    python scripts/cm_explain.py --model cmnet-qm7 --split-file atomnet/pretrained/splits/cmnet-qm7.npz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from atomnet.data.splits import load_split
from atomnet.explain import create_analyzer, list_methods, method_info
from atomnet.explain.commands import read_structures
from atomnet.explain.evaluate import input_invariance
from atomnet.explain.plots import plot_entries
from atomnet.files import atomic_output
from atomnet.pretrained import load_model, resolve_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PICTURED = ("lrp-epsilon", "integrated-gradients", "patternattribution", "gradient")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cmnet-qm7")
    p.add_argument("--data", default=str(SHARED / "qm7" / "qm7.tar.gz"))
    p.add_argument(
        "--split-file", default=None, help="split file or shipped model name (default: the first molecules)"
    )
    p.add_argument("--molecules", type=int, default=30, help="test molecules explained")
    p.add_argument("--fit", type=int, default=2000, help="training molecules the patterns are learned from")
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--out", default="docs/explanations/cmnet")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    structures = read_structures(args.data, progress=False)
    if args.split_file:
        split = load_split(resolve_split(args.split_file), len(structures))
        train, test = split.train, split.test
    else:
        train, test = np.arange(args.fit, len(structures)), np.arange(min(args.fit, len(structures)))
    fit = [structures[i] for i in train[: args.fit]]
    mols = [structures[i] for i in test[: args.molecules]]
    pot = load_model(args.model).double()

    methods: list = []
    for m in list_methods():
        if m == "integrated-gradients":
            methods += [m, (m, {"baseline": "offset"})]
        elif m != "smoothgrad":  # noise on positions: not a function of the shifted input alone
            methods.append(m)
    rows = input_invariance(pot, mols, methods, shift=args.shift, fit=fit)
    lines = [
        f"# Input invariance of the explanation methods on `{args.model}` (QM7)",
        "",
        f"Kindermans et al. 2017 on molecules: every input of the network shifted by {args.shift} (standardised "
        "units; the first dense layer's bias compensates, so the copy predicts the same energies to 1e-10 eV); "
        f"{len(mols)} test molecules. Relative change = max |R − R_shifted| / max |R| over all atoms.",
        "",
        "| method | relative change | input-invariant |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['relative_change']:.2e} | {'yes' if r['invariant'] else 'no'} |")
    lines += ["", f"Command: `python scripts/cm_explain.py --model {args.model}"
              + (f" --split-file {args.split_file}" if args.split_file else "") + "`", ""]  # fmt: skip

    pictured = []
    for m in PICTURED:
        analyzer = create_analyzer(m, pot)
        if method_info(m)["needs_fit"]:
            analyzer.fit(fit)
        pictured.append(analyzer.analyze(mols[0])[0])
    plot_entries(pictured, out / "entries.png")
    lines += ["![entry relevance](entries.png)", ""]
    with atomic_output(out / "invariance.md", ".md") as tmp:
        tmp.write_text("\n".join(lines))
    with atomic_output(out / "invariance.json", ".json") as tmp:
        tmp.write_text(json.dumps({"model": args.model, "shift": args.shift, "rows": rows}, indent=1))
    print("\n".join(lines[4:-4]))
    print(f"wrote {out / 'invariance.md'}, {out / 'entries.png'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
