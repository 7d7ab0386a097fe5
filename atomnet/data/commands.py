"""``atomnet data``: convert datasets to the HDF5 store, summarise a store, download datasets.

    atomnet data convert <source> out.h5 [--format qm9|qm9pack|md17|rmd17|qm7|ase] [--limit N]
                         [--exclude-uncharacterized] [--energy-unit kcal/mol] [--hof hof_qm7.txt]
                         [--skip-incomplete]
    atomnet data info out.h5          (a store: every property, its unit and how many molecules have it)
    atomnet data info frames.extxyz   (a raw file: scanned, every property and how many frames have it)
    atomnet data download <name or url> [--dest DIR]

Readers are imported lazily, so ``atomnet data --help`` stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from atomnet.errors import AtomNetError, DataFormatError

FORMATS = ("qm9", "qm9pack", "md17", "rmd17", "qm7", "ase")
ASE_SUFFIXES = (".xyz", ".extxyz", ".db", ".traj", ".json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="<action>", required=True)
    p = sub.add_parser("convert", help="convert a dataset to an HDF5 store (internal units eV, Angstrom)")
    p.add_argument(
        "source", help="source file (QM9 tarball, MD17/rMD17 npz, QM7 tarball, extxyz/ASE db) or 'qm9pack'"
    )
    p.add_argument("output", help="output .h5 store")
    p.add_argument("--format", choices=FORMATS, help="source format (default: guessed from the file name)")
    p.add_argument("--limit", type=int, help="convert only the first N molecules")
    p.add_argument(
        "--exclude-uncharacterized", action="store_true", help="QM9: drop the 3,054 failed molecules"
    )
    p.add_argument(
        "--energy-unit",
        default=None,
        help="ASE input: unit of energies (default eV; forces: <unit>/Angstrom)",
    )
    p.add_argument("--hof", help="QM7: hof_qm7.txt (default: next to the tarball)")
    p.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="extxyz/ASE input: keep only the frames that have the energy and forces instead of failing "
        "when some frames lack them",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    # extxyz/ASE input is streamed (bounded memory); the old read-everything path, kept for comparisons
    p.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    p = sub.add_parser(
        "info",
        help="print counts, elements and property statistics of a store, or scan a raw file's properties",
    )
    p.add_argument(
        "store", help=".h5 store, or a raw data file (its properties and how many frames have them)"
    )
    p.add_argument("--format", choices=FORMATS, help="raw file format (default: guessed from the file name)")
    p = sub.add_parser("download", help="download a dataset (name or URL) with checksum and resume")
    p.add_argument("name", help="dataset name (see atomnet.data.download.DATASETS) or URL")
    p.add_argument("--dest", default=".", help="destination folder (default: .)")


def guess_format(source: str | Path) -> str:
    """Source format from the file name (and, for ``.npz``, its keys)."""
    if str(source) == "qm9pack":
        return "qm9pack"
    path = Path(source)
    name = path.name.lower()
    if name.endswith((".tar.bz2", ".tbz2")) or "dsgdb9nsd" in name or ("qm9" in name and ".tar" in name):
        return "qm9"
    if "qm7" in name and ".tar" in name:
        return "qm7"
    if name.endswith(".npz"):
        if "rmd17" in name:
            return "rmd17"
        try:
            with np.load(path) as data:
                return "rmd17" if "nuclear_charges" in data.files else "md17"
        except FileNotFoundError:
            raise
        except Exception:  # noqa: BLE001 - not a readable npz; the reader gives the precise error
            return "md17"
    if name.endswith(ASE_SUFFIXES):
        return "ase"
    raise DataFormatError(
        source, f"cannot guess the format from the file name; pass --format ({', '.join(FORMATS)})"
    )


def _head(table, limit: int):
    """The first ``limit`` molecules of a :class:`MoleculeTable`."""
    from dataclasses import replace

    if limit is None or limit >= table.n_molecules:
        return table
    n_mol, n_at = int(limit), int(table.offsets[limit])
    props = {k: (v[:n_at] if k in table.per_atom else v[:n_mol]) for k, v in table.properties.items()}
    return replace(
        table,
        numbers=table.numbers[:n_at],
        positions=table.positions[:n_at],
        n_atoms=table.n_atoms[:n_mol],
        properties=props,
        cells=None if table.cells is None else table.cells[:n_mol],
        pbcs=None if table.pbcs is None else table.pbcs[:n_mol],
        ids=None if table.ids is None else table.ids[:n_mol],
    )


def read_source(
    source: str,
    fmt: str | None = None,
    limit: int | None = None,
    exclude_uncharacterized: bool = False,
    energy_unit: str | None = None,
    hof: str | None = None,
    progress: bool = True,
    skip_incomplete: bool = False,
):
    """Read ``source`` with the reader of ``fmt`` (guessed if ``None``) into a MoleculeTable (source units).

    ``skip_incomplete`` (extxyz/ASE files): keep only the frames that have the energy and forces, instead of
    the error naming the first frame without them (:func:`atomnet.data.ase_io.read_ase`)."""
    fmt = fmt or guess_format(source)
    if fmt != "qm9pack" and not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file")
    if fmt == "qm9":
        from atomnet.data.qm9 import read_qm9_tarball

        return read_qm9_tarball(
            source, limit=limit, exclude_uncharacterized=exclude_uncharacterized, progress=progress
        )
    if fmt == "qm9pack":
        from atomnet.data.qm9 import read_qm9pack

        return read_qm9pack(limit=limit)
    if fmt == "md17":
        from atomnet.data.md17 import read_md17_npz

        table = read_md17_npz(source)
    elif fmt == "rmd17":
        from atomnet.data.md17 import read_rmd17_npz

        table = read_rmd17_npz(source)
    elif fmt == "qm7":
        from atomnet.data.qm7 import read_qm7

        hof_path = hof or str(Path(source).with_name("hof_qm7.txt"))
        return read_qm7(source, hof_path, limit=limit)
    elif fmt == "ase":
        from atomnet.data.ase_io import read_ase

        index = ":" if limit is None else f":{int(limit)}"
        table = read_ase(
            source, index=index, energy_unit=energy_unit or "eV", skip_incomplete=skip_incomplete
        )
    else:
        raise AtomNetError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return _head(table, limit)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "convert":
        return _convert(args)
    if args.data_command == "info":
        return _info(args)
    if args.data_command == "download":
        from atomnet.data.download import download

        paths = download(args.name, args.dest)
        for path in paths if isinstance(paths, (list, tuple)) else [paths]:
            print(path)
        return 0
    raise AtomNetError(f"unknown action {args.data_command!r}")


def _convert(args: argparse.Namespace) -> int:
    from atomnet.data.store import write_store

    if args.limit is not None and args.limit < 1:
        raise AtomNetError(f"--limit must be >= 1, got {args.limit}")
    progress = not args.no_progress
    source = args.source if Path(args.source).is_file() else None
    fmt = args.format or guess_format(args.source)
    if fmt == "ase" and not args.in_memory:
        return _convert_streaming(args, source, progress)
    table = read_source(
        args.source,
        args.format,
        limit=args.limit,
        exclude_uncharacterized=args.exclude_uncharacterized,
        energy_unit=args.energy_unit,
        hof=args.hof,
        progress=progress,
        skip_incomplete=args.skip_incomplete,
    )
    skipped = table.meta.get("skipped_incomplete_frames")
    if skipped and skipped != "0":
        print(f"skipped incomplete frames: {skipped} (without the energy or forces; --skip-incomplete)")
    write_store(table, args.output, progress=progress, source=source)
    return _report(args.output)


def _convert_streaming(args: argparse.Namespace, source: str | None, progress: bool) -> int:
    """extxyz / ASE input: frames read, checked and spooled block by block, then copied into the store
    (:func:`atomnet.data.ase_io.convert_ase`; memory bounded, whatever the size of the file)."""
    from atomnet.data.ase_io import convert_ase

    if not Path(args.source).exists():
        raise FileNotFoundError(f"{args.source}: no such file")
    index = ":" if args.limit is None else f":{int(args.limit)}"
    selection = convert_ase(
        args.source,
        args.output,
        index=index,
        energy_unit=args.energy_unit or "eV",
        skip_incomplete=args.skip_incomplete,
        progress=progress,
        source=source,
    )
    skipped = selection.meta.get("skipped_incomplete_frames")
    if skipped and skipped != "0":
        print(f"skipped incomplete frames: {skipped} (without the energy or forces; --skip-incomplete)")
    return _report(args.output)


def _report(output: str) -> int:
    """Print the summary of the store just written."""
    from atomnet.data.store import Store, format_summary

    with Store(output) as store:
        print(f"wrote {output}")
        print(format_summary(store.summary()))
    return 0


def _info(args: argparse.Namespace) -> int:
    """A store: its summary (every property with the molecules that have finite values). A raw file: ASE
    formats are scanned frame by frame (every property and how many frames carry it, consistent or not);
    other readers' tables list every property with the molecules that have finite values."""
    from atomnet.data.store import Store, format_summary, molecules_with_values

    path = Path(args.store)
    if str(path).endswith((".h5", ".hdf5")):
        with Store(path) as store:
            print(format_summary(store.summary()))
        return 0
    fmt = args.format or guess_format(path)
    if fmt != "qm9pack" and not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "ase":
        from atomnet.data.ase_io import format_scan, scan_ase

        print(format_scan(scan_ase(path), path))
        return 0
    table = read_source(str(path), fmt, progress=False)
    n = table.n_molecules
    lines = [f"{path}: {n} molecules (raw file, {fmt} reader; not converted)"]
    lines.append(f"{'property':<20} {'unit':<20} {'per atom':<9} {'molecules':>16}")
    for name, values in table.properties.items():
        per_atom = name in table.per_atom
        count = f"{molecules_with_values(values, table.offsets, per_atom)} / {n}"
        lines.append(
            f"{name:<20} {table.units.get(name, '') or '-':<20} {'yes' if per_atom else 'no':<9} {count:>16}"
        )
    print("\n".join(lines))
    return 0
