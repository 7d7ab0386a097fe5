"""Unit conversions. atomnet's internal units are eV (energy) and Å (length).

All factors convert *to* the internal unit: ``value_internal = value_source * factor``.
Values from CODATA 2018 as collected in ../shared/SCIENCE.md.
"""

from __future__ import annotations

HARTREE = 27.211386  #: eV per Hartree
KCAL_PER_MOL = 1.0 / 23.060548  #: eV per kcal/mol
BOHR = 0.52917721  #: Å per Bohr
EV = 1.0
ANGSTROM = 1.0

#: Energy units understood by :func:`energy_factor` (eV per unit).
ENERGY_UNITS = {"eV": EV, "Hartree": HARTREE, "Ha": HARTREE, "kcal/mol": KCAL_PER_MOL, "meV": 1e-3}
#: Length units understood by :func:`length_factor` (Å per unit).
LENGTH_UNITS = {"Angstrom": ANGSTROM, "Å": ANGSTROM, "A": ANGSTROM, "Bohr": BOHR, "bohr": BOHR}


def energy_factor(unit: str) -> float:
    """Return eV per ``unit`` (e.g. ``energy_factor("kcal/mol") == 1/23.060548``)."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown energy unit {unit!r}; known: {sorted(ENERGY_UNITS)}") from None


def length_factor(unit: str) -> float:
    """Return Å per ``unit``."""
    try:
        return LENGTH_UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown length unit {unit!r}; known: {sorted(LENGTH_UNITS)}") from None


def convert_energy(value, from_unit: str, to_unit: str = "eV"):
    """Convert an energy (scalar or array) between two units of :data:`ENERGY_UNITS`."""
    return value * (energy_factor(from_unit) / energy_factor(to_unit))


def unit_factor(unit: str) -> float:
    """Factor to internal units for a compound unit string such as ``"kcal/mol/Angstrom"`` or ``"Hartree"``.

    Supports ``E``, ``E/L``, ``L``, ``L^2``, ``L^3`` with E an energy and L a length unit; any other unit
    (``"D"``, ``"GHz"``, ``"cal/mol/K"``) is kept as is (factor 1).
    """
    if unit in ENERGY_UNITS:
        return ENERGY_UNITS[unit]
    if unit in LENGTH_UNITS:
        return LENGTH_UNITS[unit]
    for power in ("^2", "^3"):
        base = unit.removesuffix(power)
        if base != unit and base in LENGTH_UNITS:
            return LENGTH_UNITS[base] ** int(power[-1])
    if "/" in unit:
        head, _, tail = unit.rpartition("/")
        if head in ENERGY_UNITS and tail in LENGTH_UNITS:
            return ENERGY_UNITS[head] / LENGTH_UNITS[tail]
    return 1.0


def internal_unit(unit: str) -> str:
    """Name of the internal unit that :func:`unit_factor` converts ``unit`` to."""
    if unit in ENERGY_UNITS:
        return "eV"
    if unit in LENGTH_UNITS:
        return "Angstrom"
    for power in ("^2", "^3"):
        base = unit.removesuffix(power)
        if base != unit and base in LENGTH_UNITS:
            return "Angstrom" + power
    if "/" in unit:
        head, _, tail = unit.rpartition("/")
        if head in ENERGY_UNITS and tail in LENGTH_UNITS:
            return "eV/Angstrom"
    return unit
