"""MD of ethanol with the shipped SchNet (or any trained model), starting from the first MD17 frame.

    python scripts/md_ethanol.py                      # schnet-md17-ethanol, NVE, 0.5 fs, 2,000 steps
    python scripts/md_ethanol.py --model runs/schnet_md17_ethanol/model.pt --steps 20000 --out md_ethanol

A thin wrapper around ``atomnet md`` (see ``atomnet md --help`` for every option; extra arguments are passed
through): reads the first frame of ../shared/data/md17/ethanol_dft_1200.xyz and writes md.extxyz, md.log
and md.png (energies and temperature over time) to ``--out``; for NVE it prints the energy drift.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atomnet.cli import main as atomnet_main

MD17_ETHANOL = Path(__file__).resolve().parents[2] / "shared" / "data" / "md17" / "ethanol_dft_1200.xyz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="schnet-md17-ethanol", help="pretrained name, model file or checkpoint"
    )
    parser.add_argument(
        "--structure", default=str(MD17_ETHANOL), help="start structure (first frame is used)"
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="md_ethanol")
    args, rest = parser.parse_known_args(argv)
    return atomnet_main(
        ["md", args.model, args.structure, "--steps", str(args.steps), "--out", args.out, *rest]
    )


if __name__ == "__main__":
    raise SystemExit(main())
