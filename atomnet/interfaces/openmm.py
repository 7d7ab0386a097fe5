"""atomnet potentials as forces in an OpenMM ``System``, through :class:`openmm.PythonForce`.

``add_atomnet_force(system, "schnet-md17-ethanol", numbers)`` adds a force whose Python callback evaluates an
:class:`~atomnet.calculator.AtomNetCalculator` (neighbour list with Verlet-skin reuse, periodic cells, unit
conversion, input checks) on an :class:`ase.Atoms` mirror of the particles. At each call the mirror's
positions (and, for a periodic force, its cell) are set from OpenMM's state.

Units at the OpenMM boundary: positions and box vectors in nm, energy in kJ/mol, forces in kJ/mol/nm; inside,
atomnet's Å and eV. The conversion factors come from :mod:`openmm.unit` (CODATA 2018:
1 eV = 96.48533212 kJ/mol), so they match the engine's own constants.

A subset of particles (a molecule in a larger system) is passed as ``indices``: OpenMM hands the callback only
those positions (``PythonForce.setParticles``) and applies the forces to them alone; every other particle gets
zero force from this term. The callback runs in Python on every force evaluation, so its overhead is that of
one ASE calculator call per step (see the README for measured steps/s). ``openmm.XmlSerializer`` pickles the
callback with its model weights, so a serialized System reloads with a working force (a callback that cannot
be pickled still runs; only serializing its System then fails).

Needs OpenMM >= 8.3 (``pip install 'atomnet[openmm]'``); this module imports it when a function is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from ase import Atoms

from atomnet.calculator import AtomNetCalculator
from atomnet.errors import AtomNetError
from atomnet.models.base import AtomisticModel
from atomnet.potential import Potential

if TYPE_CHECKING:
    import openmm
    from openmm.app import Topology

Model = str | os.PathLike | Potential | AtomisticModel


def _openmm():
    """The ``openmm`` module, or a one-line AtomNetError saying how to install it."""
    try:
        import openmm
    except ImportError:
        raise AtomNetError("OpenMM is not installed: pip install 'atomnet[openmm]'") from None
    return openmm


def _factors() -> tuple[float, float]:
    """(kJ/mol per eV, Å per nm) from :mod:`openmm.unit`."""
    unit = _openmm().unit
    ev = (1.0 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(
        unit.kilojoule_per_mole
    )
    return ev, unit.nanometer.conversion_factor_to(unit.angstrom)


def system_from_atoms(atoms: Atoms) -> openmm.System:
    """An OpenMM ``System`` with one particle per atom, masses from ``atoms`` (Da = amu) and, when every
    direction is periodic, the default box vectors from ``atoms.cell`` (Å → nm). No forces."""
    mm = _openmm()
    _, nm = _factors()
    system = mm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))
    if atoms.pbc.all():
        system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*(v / nm)) for v in atoms.cell.array))
    elif atoms.pbc.any():
        raise AtomNetError(
            f"system_from_atoms: OpenMM boxes are periodic in all 3 directions, got pbc={atoms.pbc}"
        )
    return system


class AtomNetForce:
    """The callback of an OpenMM ``PythonForce``: an atomnet potential on ``len(numbers)`` particles.

    Args:
        model: a pretrained name (``"schnet-md17-ethanol"``), a model file or checkpoint, or a
            :class:`~atomnet.potential.Potential` (or bare model).
        numbers: (n_atoms,) atomic numbers of the particles the force acts on, in the order OpenMM hands them
            over (the order of ``indices`` in :meth:`add_to`).
        periodic: evaluate with the periodic box vectors of the state (all three directions periodic).
        energy_unit: the unit the model predicts energies in (``None``: the file's metadata, else eV).
        device: torch device; dtype: floating-point type of the evaluation (float64: forces match the ASE
            calculator to round-off; float32 is faster).
        skin: Verlet buffer of the neighbour list, Å.
        **calculator_kwargs: further :class:`~atomnet.calculator.AtomNetCalculator` options
            (``compile``, ``tabulate``, ``elements``).

    Calling it with an OpenMM ``State`` returns (energy in kJ/mol, forces as an (n_atoms, 3) array in
    kJ/mol/nm). ``calculator`` and ``atoms`` (the mirror, Å) are kept for inspection.
    """

    def __init__(
        self,
        model: Model,
        numbers: Sequence[int] | np.ndarray,
        periodic: bool = False,
        energy_unit: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        skin: float = 0.5,
        **calculator_kwargs,
    ):
        numbers = np.asarray(numbers)
        if numbers.ndim != 1 or len(numbers) == 0 or not np.issubdtype(numbers.dtype, np.integer):
            raise AtomNetError(
                f"AtomNetForce: numbers must be a non-empty 1-D list of atomic numbers, got {numbers.tolist()[:10]!r}"
            )
        if energy_unit is not None:
            calculator_kwargs["energy_unit"] = energy_unit
        if isinstance(model, (str, os.PathLike)):
            calc = AtomNetCalculator.from_checkpoint(
                model, device=device, dtype=dtype, skin=skin, **calculator_kwargs
            )
        else:
            calc = AtomNetCalculator(model, device=device, dtype=dtype, skin=skin, **calculator_kwargs)
        calc.check_numbers(numbers)  # unknown elements: a ModelInputError now, not inside an OpenMM step
        self.calculator = calc
        self.periodic = bool(periodic)
        self.atoms = Atoms(numbers=numbers, pbc=self.periodic)
        self.kj_per_mol_per_ev, self.angstrom_per_nm = _factors()

    @property
    def n_atoms(self) -> int:
        """Number of particles the force acts on."""
        return len(self.atoms)

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces ((n_atoms, 3) kJ/mol/nm) at the state's positions (and box)."""
        unit = _openmm().unit
        nm = self.angstrom_per_nm
        self.atoms.positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * nm
        if self.periodic:
            self.atoms.cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) * nm
        energy = self.calculator.get_potential_energy(self.atoms)
        forces = self.calculator.get_forces(self.atoms)
        ev = self.kj_per_mol_per_ev
        return energy * ev, forces * (ev * nm)  # eV/Å -> kJ/mol/nm: × kJ/mol per eV × Å per nm

    def add_to(self, system: openmm.System, indices: Sequence[int] | None = None) -> openmm.PythonForce:
        """Add a ``PythonForce`` with this callback to ``system`` and return it.

        Args:
            indices: (n_atoms,) particle indices the force acts on (``None``: all particles of the system,
                which must then number ``n_atoms``). Other particles get zero force from it.
        """
        mm = _openmm()
        n_particles = system.getNumParticles()
        if indices is None:
            if n_particles != self.n_atoms:
                raise AtomNetError(
                    f"add_atomnet_force: {self.n_atoms} atomic numbers for a system of {n_particles} particles "
                    "(pass indices for a subset)"
                )
            subset: list[int] = []
        else:
            subset = [int(i) for i in indices]
            if len(subset) != self.n_atoms:
                raise AtomNetError(
                    f"add_atomnet_force: {self.n_atoms} atomic numbers for {len(subset)} particle indices"
                )
            bad = [i for i in subset if not 0 <= i < n_particles]
            if bad:
                raise AtomNetError(
                    f"add_atomnet_force: particle indices {bad[:10]} outside the system's 0..{n_particles - 1}"
                )
            if len(set(subset)) != len(subset):
                dup = sorted({i for i in subset if subset.count(i) > 1})
                raise AtomNetError(f"add_atomnet_force: repeated particle indices {dup[:10]}")
        force = mm.PythonForce(self)
        force.setName("AtomNetForce")
        if subset:
            force.setParticles(subset)
        force.setUsesPeriodicBoundaryConditions(self.periodic)
        system.addForce(force)
        return force


def add_atomnet_force(
    system: openmm.System,
    model: Model,
    numbers: Sequence[int] | np.ndarray | Atoms | Topology,
    indices: Sequence[int] | None = None,
    periodic: bool | None = None,
    energy_unit: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    skin: float = 0.5,
    **calculator_kwargs,
) -> openmm.PythonForce:
    """Add an atomnet potential to ``system`` as a ``PythonForce`` and return the force.

    Args:
        system: the OpenMM ``System``; its particles' masses are its own business (Da).
        model: a pretrained name, a model file or checkpoint, or a :class:`~atomnet.potential.Potential`.
        numbers: atomic numbers of the atoms at ``indices``, (n_atoms,); or an ``ase.Atoms``; or an
            ``openmm.app.Topology`` of the whole system (the elements of the atoms at ``indices`` are used).
        indices: (n_atoms,) particle indices the force acts on (``None``: every particle). Other particles
            get zero force from it.
        periodic: use the state's periodic box vectors (``None``: if ``system`` already has a periodic force).
        energy_unit, device, dtype, skin, calculator_kwargs: see :class:`AtomNetForce`.

    Returns:
        The ``openmm.PythonForce`` (named ``"AtomNetForce"``) now owned by ``system``; energy in kJ/mol,
        forces in kJ/mol/nm.
    """
    if isinstance(numbers, Atoms):
        numbers = numbers.numbers
    elif hasattr(numbers, "atoms") and callable(numbers.atoms):  # an openmm.app.Topology
        elements = [atom.element for atom in numbers.atoms()]
        chosen = range(len(elements)) if indices is None else [int(i) for i in indices]
        if any(not 0 <= i < len(elements) for i in chosen):
            raise AtomNetError(
                f"add_atomnet_force: particle indices outside the topology's {len(elements)} atoms"
            )
        missing = [i for i in chosen if elements[i] is None]
        if missing:
            raise AtomNetError(f"add_atomnet_force: topology atoms {missing[:10]} have no element")
        numbers = [elements[i].atomic_number for i in chosen]
    if periodic is None:
        periodic = system.usesPeriodicBoundaryConditions()
    callback = AtomNetForce(
        model,
        numbers,
        periodic=periodic,
        energy_unit=energy_unit,
        device=device,
        dtype=dtype,
        skin=skin,
        **calculator_kwargs,
    )
    return callback.add_to(system, indices)
