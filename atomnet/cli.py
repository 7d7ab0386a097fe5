"""The ``atomnet`` command. Each subcommand lives in its own module exposing ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported lazily so ``atomnet --help`` is fast and light.

User-facing errors (:class:`atomnet.errors.AtomNetError`, ``FileNotFoundError``) are printed as one line
``atomnet <cmd>: error: ...`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help). Adding a command is one entry here plus one module.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("atomnet.data.commands", "convert, inspect and download datasets (HDF5 store)"),
    "train": ("atomnet.training.commands", "train a model from a YAML config"),
    "evaluate": ("atomnet.training.evaluate", "evaluate a checkpoint on a dataset: metrics + parity plot"),
    "md": ("atomnet.md", "run molecular dynamics with a trained model through ASE"),
    "krr": ("atomnet.baselines.commands", "Coulomb-matrix kernel ridge regression baseline"),
    "explain": ("atomnet.explain.commands", "explain predicted energies atom by atom (LRP, gradients, ...)"),
    "relax": ("atomnet.relax", "relax a structure (positions, optionally the cell) with ASE optimisers"),
    "vibrate": ("atomnet.vibrate", "harmonic frequencies and normal modes from the exact Hessian"),
    "serve": ("atomnet.serve", "serve a model as an i-PI force client over a UNIX or TCP socket"),
    "export": ("atomnet.export", "export a model as a torch.export / AOTInductor package (.pt2)"),
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    """Top-level parser; only the module of subcommand ``load`` is imported."""
    parser = argparse.ArgumentParser(prog="atomnet", description="atomistic deep learning with explanations")
    from atomnet import __version__

    parser.add_argument("--version", action="version", version=f"atomnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from atomnet.errors import AtomNetError

    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (AtomNetError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"atomnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atomnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
