"""``atomnet krr``: Coulomb-matrix kernel ridge regression learning curves.

    atomnet krr <dataset> --representation sorted --kernel laplacian --train-sizes 1000,2000,5000 \
        [--test-size N] [--split split.npz] [--seed S] [--cv-folds 5] [--json out.json] [--plot curve.png]

``<dataset>``: an atomnet HDF5 store, the QM7 tarball (``hof_qm7.txt`` next to it) or a QM9 tarball.
For every training size N the first N molecules of the (shuffled) training set are used; (σ, λ) are chosen
by k-fold CV on those N molecules only, then the model is fitted on all N and evaluated on the test set.
Errors are reported in ``--unit`` (default kcal/mol for energies).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from atomnet.baselines.coulomb import VARIANTS, coulomb_representation
from atomnet.baselines.krr import DEFAULT_LAMS, KERNELS, KernelRidge, cross_validate, errors
from atomnet.errors import AtomNetError, DataFormatError
from atomnet.files import atomic_output
from atomnet.units import ENERGY_UNITS, convert_energy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="HDF5 store, QM7 tarball (hof_qm7.txt next to it) or QM9 tarball")
    parser.add_argument("--representation", default="sorted", choices=VARIANTS)
    parser.add_argument("--kernel", default="laplacian", choices=sorted(KERNELS))
    parser.add_argument("--train-sizes", default="1000,2000,5000", help="comma-separated training set sizes")
    parser.add_argument("--test-size", type=int, default=None, help="test molecules (default: all remaining)")
    parser.add_argument(
        "--split", default=None, help="split .npz (train/val/test indices) shared with the NNs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, training order and CV folds")
    parser.add_argument("--cv-folds", type=int, default=5, help="k of the k-fold CV on the training set")
    parser.add_argument(
        "--sigmas", default=None, help="comma-separated σ grid (default: scaled median distance)"
    )
    parser.add_argument("--lambdas", default=",".join(f"{x:g}" for x in DEFAULT_LAMS), help="λ grid")
    parser.add_argument("--target", default=None, help="property to learn (default: energy, else U0)")
    parser.add_argument(
        "--unit", default=None, help="unit of reported errors (default kcal/mol for energies)"
    )
    parser.add_argument(
        "--element-offsets",
        action="store_true",
        help="subtract a per-element linear fit (on the training set) before KRR, e.g. for QM9 total U0",
    )
    parser.add_argument("--draws", type=int, default=5, help="random permutations per molecule (random CM)")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N molecules")
    parser.add_argument("--max-memory-gb", type=float, default=None)
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--plot", default=None, help="write a log-log learning curve PNG")
    parser.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------------------------------- data
def load_dataset(path: str | Path, target: str | None = None, limit: int | None = None):
    """-> (numbers, positions Å, n_atoms, y (n_mol,), y_unit, target, description) from a store or tarball."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        from atomnet.data.store import open_store

        with open_store(path) as store:
            names = store.property_names
            target = target or ("energy" if "energy" in names else "U0")
            y, unit = store.property(target), store.unit(target)
            numbers, positions, n_atoms = store.numbers, store.positions.astype(np.float64), store.n_atoms
        if y.ndim != 1:
            raise DataFormatError(path, f"property {target!r} is not one value per molecule")
        if limit is not None:
            n_atoms, y = n_atoms[:limit], y[:limit]
            numbers, positions = numbers[: n_atoms.sum()], positions[: n_atoms.sum()]
        return numbers, positions, n_atoms, y, unit, target, f"store {path}"
    hof = path.with_name("hof_qm7.txt")
    if hof.exists():
        from atomnet.data.qm7 import read_qm7

        table = read_qm7(path, hof, limit=limit)
        target = target or "energy"
    else:
        from atomnet.data.qm9 import read_qm9_tarball

        table = read_qm9_tarball(path, limit=limit, progress=False)
        target = target or "U0"
    if target not in table.properties or target in table.per_atom:
        raise AtomNetError(f"{path}: no per-molecule property {target!r}; have {sorted(table.properties)}")
    if table.length_unit not in ("Angstrom", "Å", "A"):
        raise AtomNetError(f"{path}: positions in {table.length_unit}, expected Angstrom")
    y = np.asarray(table.properties[target], dtype=np.float64)
    return table.numbers, table.positions, table.n_atoms, y, table.units.get(target, ""), target, str(path)


def element_counts(numbers: np.ndarray, n_atoms: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """(n_mol, n_elements) count of each element per molecule."""
    mol = np.repeat(np.arange(len(n_atoms)), n_atoms)
    counts = np.zeros((len(n_atoms), len(elements)))
    np.add.at(counts, (mol, np.searchsorted(elements, numbers)), 1.0)
    return counts


# ---------------------------------------------------------------------------------------------- curve
def learning_curve(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    sizes: list[int],
    kernel: str,
    folds: int,
    sigmas: list[float] | None,
    lams: list[float],
    seed: int = 0,
    offsets: np.ndarray | None = None,
    max_memory_gb: float | None = None,
    progress: bool = True,
) -> dict[int, dict[str, float]]:
    """For each N in ``sizes``: CV on ``train[:N]``, fit, test errors.

    X: (n_mol, d) features, or (n_mol, n_draws, d) for augmented (random CM) sets: CV uses draw 0 only
    (so that no molecule is in both CV parts), the fit uses all draws, predictions average over draws.
    offsets: optional (n_mol, n_el) element counts; a least-squares per-element fit on the N training
    molecules is subtracted from y before KRR and added back to the predictions.
    """
    from tqdm import tqdm

    results = {}
    for n in tqdm(sizes, desc="training sizes", disable=not progress):
        tr = train[:n]
        t0 = time.perf_counter()
        base = np.zeros(len(y))
        if offsets is not None:
            coef = np.linalg.lstsq(offsets[tr], y[tr], rcond=None)[0]
            base = offsets @ coef
        r = y - base
        X_cv = X[tr] if X.ndim == 2 else X[tr, 0]
        cv = cross_validate(X_cv, r[tr], kernel, sigmas, lams, folds, seed, max_memory_gb, progress)
        model = KernelRidge(kernel, cv.sigma, cv.lam, max_memory_gb=max_memory_gb)
        if X.ndim == 2:
            model.fit(X[tr], r[tr])
            pred = model.predict(X[test])
        else:
            draws = X.shape[1]
            model.fit(X[tr].reshape(n * draws, -1), np.repeat(r[tr], draws))
            pred = model.predict(X[test].reshape(len(test) * draws, -1)).reshape(len(test), draws).mean(1)
        seconds = time.perf_counter() - t0
        err = errors(y[test], pred + base[test])
        edge = cv.sigma in (cv.sigmas[0], cv.sigmas[-1])
        results[n] = {
            **err,
            "sigma": cv.sigma,
            "lambda": cv.lam,
            "cv_mae": float(cv.mae.min()),
            "fit_seconds": model.fit_seconds_,
            "total_seconds": seconds,
            "sigma_at_grid_edge": bool(edge),
        }
    return results


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temporary file in the same folder + rename)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AtomNetError(f"--{name}: expected comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    sizes = [int(v) for v in _floats(args.train_sizes, "train-sizes")]
    if not sizes or min(sizes) < 2:
        raise AtomNetError(f"--train-sizes must be integers >= 2, got {args.train_sizes!r}")
    numbers, positions, n_atoms, y, y_unit, target, desc = load_dataset(args.dataset, args.target, args.limit)
    unit = args.unit or ("kcal/mol" if y_unit in ENERGY_UNITS else y_unit)
    if unit != y_unit:
        if y_unit not in ENERGY_UNITS or unit not in ENERGY_UNITS:
            raise AtomNetError(f"cannot convert {y_unit!r} to {unit!r}")
        y = convert_energy(y, y_unit, unit)
    n = len(y)
    rng = np.random.default_rng(args.seed)
    if args.split:
        from atomnet.data.splits import load_split

        split = load_split(args.split, n)
        train, test = rng.permutation(split.train), rng.permutation(split.test)
    else:
        from atomnet.data.splits import random_split

        if max(sizes) + (args.test_size or 1) > n:
            raise AtomNetError(
                f"need {max(sizes)} training and {args.test_size or 1}+ test molecules, "
                f"but {args.dataset} has only {n}"
            )

        split = random_split(n, (max(sizes), 0, args.test_size if args.test_size else None), args.seed)
        train, test = rng.permutation(split.train), split.test
    if args.test_size:
        test = test[: args.test_size]
    if max(sizes) > len(train) or len(test) == 0:
        raise AtomNetError(
            f"need {max(sizes)} training and >= 1 test molecules, have {len(train)} and {len(test)} "
            f"({n} molecules in {args.dataset})"
        )
    X = coulomb_representation(
        numbers, positions, n_atoms, args.representation, n_draws=args.draws, seed=args.seed
    )
    offsets = None
    if args.element_offsets:
        offsets = element_counts(numbers, n_atoms, np.unique(numbers))
    results = learning_curve(
        X, y, np.asarray(train), np.asarray(test), sorted(sizes), args.kernel, args.cv_folds,
        _floats(args.sigmas, "sigmas"), _floats(args.lambdas, "lambdas"), args.seed, offsets,
        args.max_memory_gb, not args.no_progress,
    )  # fmt: skip
    label = f"{args.representation} CM + {args.kernel} KRR"
    print(f"{label} on {desc} ({target}), {len(test)} test molecules, errors in {unit}")
    print(f"{'N':>7} {'MAE':>9} {'RMSE':>9} {'sigma':>11} {'lambda':>8} {'fit s':>7}")
    for k, r in results.items():
        flag = "  (sigma at grid edge)" if r["sigma_at_grid_edge"] else ""
        print(
            f"{k:>7} {r['mae']:>9.3f} {r['rmse']:>9.3f} {r['sigma']:>11.4g} {r['lambda']:>8.1e} "
            f"{r['fit_seconds']:>7.2f}{flag}"
        )
    if args.json:
        data = {
            "units": {"mae": unit, "rmse": unit, "cv_mae": unit, "sigma": "Coulomb-matrix units (Hartree-like, "
                      "distances in Bohr)", "lambda": "dimensionless", "fit_seconds": "s", "total_seconds": "s"},
            "settings": {
                "dataset": str(args.dataset), "target": target, "representation": args.representation,
                "kernel": args.kernel, "cv_folds": args.cv_folds, "seed": args.seed, "split": args.split,
                "test_size": int(len(test)), "element_offsets": bool(args.element_offsets),
            },
            **{str(k): v for k, v in results.items()},
        }  # fmt: skip
        write_json(args.json, data)
    if args.plot:
        from atomnet.training.plots import learning_curve_plot

        sizes = [int(k) for k in results]
        maes = [r["mae"] for r in results.values()]
        title = f"{Path(args.dataset).name}, {len(test)} test"
        learning_curve_plot({label: (sizes, maes)}, args.plot, f"test MAE ({unit})", title)
    return 0
