"""``atomnet evaluate <ckpt-or-model> <data> [--out DIR]``: metrics table (printed + JSON), parity plot and
error histogram (PNG).

    atomnet evaluate runs/quickstart/best.ckpt data/ethanol_xtb.extxyz --energy-unit eV --out eval/
    atomnet evaluate schnet-md17-ethanol ../shared/data/md17/ethanol_dft_1200.xyz --energy-unit kcal/mol \
        --split-file runs/x/split.npz --subset val

``<data>`` is a store (``.h5``) or any raw file the data readers know (converted into a cached store).
MAE and RMSE are reported in eV (eV/Å) and kcal/mol (kcal/mol/Å).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from atomnet import keys
from atomnet.files import atomic_output
from atomnet.potential import Potential
from atomnet.units import KCAL_PER_MOL

EV_TO_KCAL = 1.0 / KCAL_PER_MOL  #: kcal/mol per eV


@torch.no_grad()
def predict(
    potential: Potential, dataset, batch_size: int = 64, forces: bool = True, structures: bool = False
) -> dict[str, np.ndarray]:
    """Predictions and references over ``dataset`` (batches with ``energy``/``forces`` targets).

    Returns numpy arrays: ``energy``/``energy_ref`` (n_molecules,) eV, ``n_atoms`` (n_molecules,),
    ``index`` (n_molecules,) store indices, if available ``forces``/``forces_ref`` (n_atoms_total, 3) eV/Å,
    and for a multitask model ``<name>``/``<name>_ref`` (n_molecules,) of every extra target whose reference
    the dataset carries (their names in ``properties``). ``structures=True`` adds ``numbers``,
    ``positions`` Å and ``atomic_energies`` eV per atom, and ``cell``/``pbc`` per molecule for periodic data
    (what :func:`atomnet.data.ase_io.write_predictions` writes).
    """
    from atomnet.training.datamodule import INDEX

    potential = potential.eval()
    parts: dict[str, list[np.ndarray]] = {}
    names: list[str] = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        want_f = forces and keys.FORCES in batch.targets
        out = potential(batch, forces=want_f, create_graph=False)
        rows = {
            "energy": out[keys.ENERGY],
            "energy_ref": batch.targets[keys.ENERGY],
            "n_atoms": batch.n_atoms,
        }
        if INDEX in batch.targets:
            rows["index"] = batch.targets[INDEX]
        if want_f:
            rows["forces"] = out[keys.FORCES]
            rows["forces_ref"] = batch.targets[keys.FORCES]
        if structures:
            rows["numbers"], rows["positions"] = batch.numbers, batch.positions
            rows["atomic_energies"] = out[keys.ATOMIC_ENERGIES]
            if batch.cell is not None:
                rows["cell"], rows["pbc"] = batch.cell, batch.pbc
        names = [p for p in potential.model.properties if p in batch.targets]
        for name in names:
            rows[name], rows[f"{name}_ref"] = out[name], batch.targets[name]
        for k, v in rows.items():
            parts.setdefault(k, []).append(
                v.detach().cpu().double().numpy() if v.is_floating_point() else v.numpy()
            )
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if names:
        out["properties"] = np.array(names)
    return out


def compute_metrics(pred: dict[str, np.ndarray], units: dict[str, str] | None = None) -> dict[str, float]:
    """MAE/RMSE of energy (eV and kcal/mol, total and per atom) and force components (eV/Å, kcal/mol/Å);
    for every extra target ``<name>_mae_<unit>`` / ``<name>_rmse_<unit>`` in its internal unit (``units``)."""
    de = pred["energy"] - pred["energy_ref"]
    res: dict[str, float] = {"n_molecules": int(de.size)}
    errors = {"energy": de, "energy_per_atom": de / pred["n_atoms"]}
    if "forces" in pred:
        errors["forces"] = (pred["forces"] - pred["forces_ref"]).reshape(-1)
    for name, err in errors.items():
        mae, rmse = float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err**2)))
        unit = "eV/A" if name == "forces" else "eV"
        res[f"{name}_mae_{unit}"] = mae
        res[f"{name}_rmse_{unit}"] = rmse
        kunit = "kcal/mol/A" if name == "forces" else "kcal/mol"
        res[f"{name}_mae_{kunit}"] = mae * EV_TO_KCAL
        res[f"{name}_rmse_{kunit}"] = rmse * EV_TO_KCAL
    for name in pred.get("properties", []):
        name = str(name)
        err = pred[name] - pred[f"{name}_ref"]
        unit = (units or {}).get(name, "")
        res[f"{name}_mae_{unit}"] = float(np.mean(np.abs(err)))
        res[f"{name}_rmse_{unit}"] = float(np.sqrt(np.mean(err**2)))
    return res


def format_metrics(metrics: dict[str, float], title: str = "") -> str:
    """A small text table: quantity, MAE and RMSE in eV-based and kcal/mol-based units."""
    lines = [title] if title else []
    lines.append(f"{'quantity':<18}{'MAE':>12}{'RMSE':>12}  unit       {'MAE':>10}{'RMSE':>10}  unit")
    for name, unit, kunit in (
        ("energy", "eV", "kcal/mol"),
        ("energy_per_atom", "eV", "kcal/mol"),
        ("forces", "eV/A", "kcal/mol/A"),
    ):
        if f"{name}_mae_{unit}" in metrics:
            lines.append(
                f"{name:<18}{metrics[f'{name}_mae_{unit}']:>12.5f}{metrics[f'{name}_rmse_{unit}']:>12.5f}  "
                f"{unit:<10} {metrics[f'{name}_mae_{kunit}']:>10.4f}{metrics[f'{name}_rmse_{kunit}']:>10.4f}  {kunit}"
            )
    for key in metrics:  # the extra targets of a multitask model, each in its own unit
        name, _, unit = key.partition("_mae_")
        if unit and name not in ("energy", "energy_per_atom", "forces"):
            rmse = metrics[f"{name}_rmse_{unit}"]
            lines.append(f"{name:<18}{metrics[key]:>12.5f}{rmse:>12.5f}  {unit}")
    lines.append(f"({metrics['n_molecules']} molecules)")
    return "\n".join(lines)


def evaluate(
    potential: Potential,
    dataset,
    out_dir: str | Path | None,
    batch_size: int = 64,
    title: str = "",
    plots: bool = True,
    units: dict[str, str] | None = None,
    extxyz: str | Path | None = None,
) -> tuple[dict[str, float], dict[str, Path]]:
    """Predict, compute metrics and write ``metrics.json``, ``predictions.npz``, ``parity.png``, ``errors.png``
    (one panel per target; ``units``: internal unit of each extra target of a multitask model), and with
    ``extxyz`` the structures with reference and predicted values (:func:`~atomnet.data.ase_io.write_predictions`).

    Returns (metrics, {"json"|"parity"|"histogram"|"predictions"|"extxyz": path}).
    """
    pred = predict(potential, dataset, batch_size, structures=extxyz is not None)
    metrics = compute_metrics(pred, units)
    paths: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths["json"] = out / "metrics.json"
        with atomic_output(paths["json"], ".json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
        paths["predictions"] = out / "predictions.npz"
        with atomic_output(paths["predictions"], ".npz") as tmp:
            np.savez(tmp, **pred)
        if plots:
            from atomnet.training.plots import error_histogram, parity_plot

            shown = {**pred, "property_units": units or {}}
            paths["parity"] = parity_plot(shown, out / "parity.png", title=title)
            paths["histogram"] = error_histogram(shown, out / "errors.png", title=title)
    if extxyz is not None:
        from atomnet.data.ase_io import write_predictions

        paths["extxyz"] = write_predictions(pred, extxyz)
    return metrics, paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint (.ckpt), atomnet model file, or pretrained model name")
    parser.add_argument("data", help="HDF5 store or raw data file (extxyz, QM9 tarball, MD17 npz)")
    parser.add_argument(
        "--out", default=None, help="output folder (default: eval-<data name> next to the model)"
    )
    parser.add_argument("--format", default="auto", help="reader of a raw data file (default: guessed)")
    parser.add_argument("--energy-key", default="energy", help="energy property (QM9: U0)")
    parser.add_argument("--forces-key", default="forces", help="forces property ('none': energies only)")
    parser.add_argument(
        "--energy-unit",
        default=None,
        help="unit of energies in a raw extxyz/ASE file (eV, kcal/mol, Hartree); default: the unit the model "
        "was trained from. QM9, QM7 and MD17 files carry their units: no need to give it",
    )
    parser.add_argument(
        "--split-file",
        default=None,
        help="split .npz (or a shipped model's name: its split): evaluate only --subset of it",
    )
    parser.add_argument("--subset", default="test", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, default=None, help="raw file: first N molecules only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--write-extxyz",
        metavar="FILE",
        default=None,
        help="also write the structures with reference and predicted energies, forces and per-atom "
        "energies (extxyz keys energy_ref, energy_pred, forces_ref, forces_pred, energies_pred; eV, eV/Å)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="where converted stores are cached (default: runs/cache)"
    )


def run(args: argparse.Namespace) -> int:
    from atomnet.data.commands import guess_format
    from atomnet.data.splits import load_split
    from atomnet.data.store import Store
    from atomnet.pretrained import load_with_meta
    from atomnet.training.config import DataConfig
    from atomnet.training.datamodule import cached_store, check_store, open_dataset

    potential, meta = load_with_meta(args.model)
    forces_key = None if args.forces_key in ("none", "null", "") else args.forces_key
    fmt = args.format
    if fmt == "auto":
        fmt = "store" if str(args.data).endswith((".h5", ".hdf5")) else guess_format(args.data)
    unit = args.energy_unit
    if unit is None and fmt == "ase":  # a file without units: assume the model's own source unit
        unit = meta.get("source_energy_unit") or "eV"
        print(
            f"energies of {args.data} taken to be in {unit} (the model's training unit; --energy-unit to change)"
        )
    dcfg = DataConfig(
        path=str(Path(args.data).resolve()),
        format=args.format,
        energy_key=args.energy_key,
        forces_key=forces_key,
        energy_unit=unit or "eV",
        limit=args.limit,
    )
    store = cached_store(dcfg, args.cache_dir or str(Path("runs/cache").resolve()))
    if unit is None:  # the reader knew the file's units (QM9, QM7, MD17): take them
        with Store(store) as s:
            if args.energy_key in s.property_names:
                dcfg.energy_unit = s.source_unit(args.energy_key) or dcfg.energy_unit
    names = {"energy_key": "--energy-key", "energy_unit": "--energy-unit", "forces_key": "--forces-key"}
    check_store(store, dcfg, need_forces=False, names=names)
    with Store(store) as s:
        n = s.n_molecules
        if forces_key is not None and forces_key not in s.atom_property_names:
            forces_key = None
        props = [p for p in potential.model.properties if p in s.property_names]
        units = {p: s.unit(p) for p in props}
    split_path = None
    if args.split_file:  # a file, or a shipped model's name: its own split
        from atomnet.pretrained import resolve_split

        split_path = resolve_split(args.split_file)
    indices = load_split(split_path, n)[args.subset] if split_path else None
    ds = open_dataset(store, potential.cutoff, args.energy_key, forces_key, indices, potential.dtype, props)
    if args.out is not None:
        out = Path(args.out)
    elif Path(args.model).exists():
        out = Path(args.model).resolve().parent / f"eval-{Path(args.data).name.split('.')[0]}"
    else:
        out = Path(f"eval-{args.model}-{Path(args.data).name.split('.')[0]}")
    title = f"{Path(args.model).name} on {Path(args.data).name}"
    metrics, paths = evaluate(
        potential, ds, out, args.batch_size, title=title, units=units, extxyz=args.write_extxyz
    )
    print(format_metrics(metrics, title))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
