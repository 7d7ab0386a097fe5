"""ASE calculator for atomnet potentials (style of ``ase/calculators/lj.py``).

``AtomNetCalculator(potential)`` computes energy, free energy, forces, per-atom ``energies`` and, for periodic
systems, ``stress`` in one evaluation and stores plain numpy arrays in ``self.results`` (eV, Å, eV/Å, eV/Å³).

Neighbour pairs are built at ``cutoff + skin`` and reused while no atom moved more than ``skin / 2`` since the
last build (:class:`atomnet.verlet.VerletPairs`); results are identical to rebuilding every step.

A list of potentials is an ensemble: results are the mean, ``energy_std`` (eV) and ``forces_std``
(n_atoms, 3) eV/Å the standard deviation over members.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from atomnet import keys, units
from atomnet.data.batch import AtomsBatch
from atomnet.errors import AtomNetError, ConfigError, ModelInputError
from atomnet.models.base import AtomisticModel
from atomnet.models.tabulate import tabulate_filters, tabulate_if_below_round_off
from atomnet.nn.tabulated import DEFAULT_SPACING
from atomnet.potential import Potential, energy_and_forces
from atomnet.pretrained import load_with_meta
from atomnet.verlet import VerletPairs


def _same(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    """ASE's ``equal(a, b, atol=tol)`` (same shape, |a - b| <= tol), with an exact-equality fast path."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and (np.array_equal(a, b) or bool(np.allclose(a, b, rtol=0, atol=tol)))


def _compiled(model: AtomisticModel) -> torch.nn.Module:
    """``torch.compile`` of a frozen copy of ``model``: weights that need no gradient keep the compiled
    backward to the position (and strain) derivatives; the caller's model is left untouched.

    The generated element-wise kernels run on one thread (matrix products still use every torch thread):
    inductor's multi-threaded C++ code generation of the neighbour sum fails (AssertionError in the
    vectorised store) in torch 2.13 when torch has more than one thread.
    """
    frozen = copy.deepcopy(model).requires_grad_(False)
    return torch.compile(frozen, dynamic=True, options={"cpp.threads": 1})


def _tabulation(
    model: AtomisticModel, tabulate: bool | float | str, compiled: bool
) -> tuple[AtomisticModel, str]:
    """The model a calculator evaluates for its ``tabulate`` option, and why (one line)."""
    if isinstance(tabulate, str):
        if tabulate != "auto":
            raise ConfigError(
                f'tabulate must be "auto", True, False or a grid spacing in Å, got {tabulate!r}'
            )
        return tabulate_if_below_round_off(model, compiled)
    if tabulate is False or tabulate is None:
        return model, "exact filters (tabulate=False)"
    spacing = DEFAULT_SPACING if tabulate is True else float(tabulate)
    return tabulate_filters(model, spacing), f"tabulated filters, {spacing:.4g} Å grid (tabulate={tabulate})"


class AtomNetCalculator(Calculator):
    """ASE calculator around one atomnet :class:`Potential` or an ensemble of them.

    Args:
        potential: a :class:`Potential` (or bare model), or a list of them (ensemble).
        device: torch device the potential runs on.
        dtype: floating-point type of the evaluation (``None``: keep the potential's).
        energy_unit: the unit the model predicts energies in (``"eV"``, ``"kcal/mol"``, ``"Hartree"``...);
            energies, forces and stress are converted to eV, eV/Å, eV/Å³. Lengths are Å.
        skin: Verlet buffer in Å (0 rebuilds the neighbour list at every step).
        elements: atomic numbers the model was trained on (``None``: any within the model's range).
        compile: run the models through ``torch.compile`` (dynamic shapes, inductor backend). Fuses the
            elementwise work of forward and backward: faster MD for small molecules, where per-operation
            overhead dominates, after a one-off compilation of 10-60 s. Falls back to eager execution
            with a warning if compilation fails (e.g. no C++ compiler); results agree with eager to float
            round-off. The compiled models are copies: later changes to the potentials' weights do not
            reach them.
        tabulate: evaluate copies of the models whose filters of the distance (SchNet's filter networks,
            DTNN's distance factors) are cubic Hermite tables (:func:`atomnet.models.tabulate_filters`, a
            one-off ~1 s per model). ``"auto"`` (default): where that is faster and its error is below the
            exact model's own round-off (:func:`atomnet.models.tabulate.tabulate_if_below_round_off`:
            SchNet-type filters, float32, the fused table kernel on CPU or ``compile=True``, every table's
            error of W and dW/dr at most the float32 round-off of the exact filter); :attr:`tabulation`
            says what was chosen and why. ``True``: always (0.005 Å grid); a float: always, on that grid
            spacing in Å; ``False``: never. Removes the filter networks' matrix products from every step
            (``scripts/bench_md.py`` measures it); energy and forces stay consistent (F = −∇E of the
            tabulated energy). Forces move by less than float32 round-off (trained ethanol SchNet: 1.0e-6
            vs 3.7e-6 eV/Å; ``scripts/tabulation_error.py``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]
    nolabel = True

    def __init__(
        self,
        potential: Potential | AtomisticModel | Sequence[Potential | AtomisticModel],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        energy_unit: str = "eV",
        skin: float = 0.5,
        elements: Sequence[int] | None = None,
        compile: bool = False,
        tabulate: bool | float | str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        members = list(potential) if isinstance(potential, (list, tuple)) else [potential]
        if not members:
            raise AtomNetError("AtomNetCalculator: empty list of potentials")
        self.potentials = []
        for p in members:
            p = p if isinstance(p, Potential) else Potential(p)
            self.potentials.append(p.to(device=device, dtype=dtype or p.dtype).eval())
        self.device = torch.device(device)
        if len(self.potentials) > 1:  # uncertainty results: ensemble spread
            self.implemented_properties = [*type(self).implemented_properties, "energy_std", "forces_std"]
        self.dtype = self.potentials[0].dtype
        self.cutoff = max(p.cutoff for p in self.potentials)
        self.max_z = min(p.model.max_z for p in self.potentials)
        self.elements = None if elements is None else frozenset(int(z) for z in elements)
        self.energy_unit = energy_unit
        self.energy_factor = units.energy_factor(energy_unit)  # eV per model energy unit
        self.pairs = VerletPairs(self.cutoff, skin, self.dtype, self.device, on_build=self.check_numbers)
        self.skin = self.pairs.skin
        self.n_evaluations = 0  #: model evaluations (calls of calculate), for tests and benchmarks
        self.compiled = bool(compile)  #: whether evaluations use torch.compile'd models
        self._eager_models, self.tabulation = [], []  #: per member: why its filters are (not) tabulated
        for p in self.potentials:
            model, reason = _tabulation(p.model, tabulate, bool(compile))
            self._eager_models.append(model)
            self.tabulation.append(reason)
        #: whether evaluations use tabulated filters (every member's)
        self.tabulated = all(
            m is not p.model for m, p in zip(self._eager_models, self.potentials, strict=True)
        )
        self._models = [_compiled(m) for m in self._eager_models] if compile else self._eager_models

    @property
    def n_neighbor_builds(self) -> int:
        """Neighbour-list builds so far."""
        return self.pairs.n_builds

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> AtomNetCalculator:
        """Calculator from a pretrained name, model file or checkpoint (or a list of them: ensemble), see
        :func:`atomnet.pretrained.load_with_meta`.

        ``energy_unit`` and ``elements`` default to the file's metadata (``meta["energy_unit"]``,
        ``meta["elements"]``) when present, else eV and any element.
        """
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        loaded = [load_with_meta(p) for p in paths]
        meta = loaded[0][1]
        kwargs.setdefault("energy_unit", meta.get("energy_unit", "eV"))
        if meta.get("elements") is not None:
            kwargs.setdefault("elements", meta["elements"])
        return cls([p for p, _ in loaded], device=device, dtype=dtype, **kwargs)

    # --- input checks and neighbour list --------------------------------------------------------------

    def check_numbers(self, numbers: np.ndarray) -> None:
        """Raise :class:`ModelInputError` for atomic numbers the model does not know."""
        unknown = sorted(
            {int(z) for z in numbers if z < 1 or z > self.max_z or (self.elements and z not in self.elements)}
        )
        if unknown:
            names = [chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in unknown]
            known = sorted(self.elements) if self.elements else f"1..{self.max_z}"
            raise ModelInputError(
                f"element(s) {names} (Z={unknown}) unknown to the model (knows Z in {known})"
            )

    def _evaluate(self, batch: AtomsBatch, stress: bool) -> list[dict[str, torch.Tensor]]:
        try:
            return [energy_and_forces(m, batch, forces=True, stress=stress) for m in self._models]
        except ModelInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager models
            if not self.compiled:
                raise
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "running the models eagerly",
                stacklevel=3,
            )
            self.compiled = False
            self._models = self._eager_models
            return self._evaluate(batch, stress)  # eager now: a second failure is raised

    # --- the ASE contract ------------------------------------------------------------------------------

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: the result of ASE's ``compare_atoms``, computed faster.

        ASE compares every array with ``np.allclose`` (about 0.3 ms per call; MD calls it three times per
        step); an exact ``np.array_equal`` settles the common cases and ``allclose`` runs only on a mismatch.
        """
        old = self.atoms
        if old is None:
            return list(all_changes)
        excluded = set(self.ignored_changes)
        changes = []
        if "cell" not in excluded and not _same(old.cell.array, atoms.cell.array, tol):
            changes.append("cell")
        if "pbc" not in excluded and not _same(old.pbc, atoms.pbc, tol):
            changes.append("pbc")
        check = set(all_changes) - excluded - {"cell", "pbc"}
        a1, a2 = old.arrays, atoms.arrays
        changes += sorted(check & (a1.keys() ^ a2.keys()))
        changes += [
            p for p in all_changes if p in check and p in a1 and p in a2 and not _same(a1[p], a2[p], tol)
        ]
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """Evaluate every property at once; results in eV, eV/Å, eV/Å³ (stress as a Voigt 6-vector)."""
        # ASE's Calculator.calculate copies ``atoms`` again after get_property copied it: copy only if needed
        if atoms is not None and (self.atoms is None or self.check_state(atoms)):
            self.atoms = atoms.copy()
        atoms = self.atoms
        positions = atoms.positions
        if not np.isfinite(positions).all():
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise ModelInputError(f"non-finite (NaN/inf) positions for atom(s) {bad[:10].tolist()}")
        batch = self.pairs(atoms, system_changes)
        stress = bool(atoms.pbc.any()) and atoms.cell.rank == 3 and "stress" in properties
        outs = self._evaluate(batch, stress)
        self.n_evaluations += 1

        f = self.energy_factor
        if len(outs) == 1:
            out = outs[0]
            energy = float(out[keys.ENERGY][0]) * f
            energies = out[keys.ATOMIC_ENERGIES].cpu().numpy() * f
            forces = out[keys.FORCES].cpu().numpy() * f
            sigma = out[keys.STRESS][0].cpu().numpy() * f if stress else None
        else:
            e = torch.stack([o[keys.ENERGY][0] for o in outs]) * f
            fs = torch.stack([o[keys.FORCES] for o in outs]) * f
            energy = float(e.mean())
            energies = torch.stack([o[keys.ATOMIC_ENERGIES] for o in outs]).mean(0).cpu().numpy() * f
            forces = fs.mean(0).cpu().numpy()
            sigma = (
                torch.stack([o[keys.STRESS][0] for o in outs]).mean(0).cpu().numpy() * f if stress else None
            )
            self.results["energy_std"] = float(e.std(unbiased=False))
            self.results["forces_std"] = fs.std(0, unbiased=False).cpu().numpy()
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = energies.astype(np.float64)
        self.results["forces"] = forces.astype(np.float64)
        if sigma is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(sigma.astype(np.float64))
