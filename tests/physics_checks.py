"""Reusable physics checks, applied to every registered model (and later to every explainer).

Each check takes a :class:`~atomnet.potential.Potential` (float64 recommended) and structures as ASE Atoms,
and asserts against an independent expectation (finite differences, symmetry, additivity).
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from atomnet import keys
from atomnet.data import batch_from_atoms
from atomnet.potential import Potential


def evaluate(pot: Potential, atoms_list, stress: bool = False) -> dict[str, np.ndarray]:
    batch = batch_from_atoms(atoms_list, cutoff=pot.cutoff, dtype=pot.dtype)
    out = pot(batch, forces=True, stress=stress)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def check_invariance(pot: Potential, atoms: Atoms, seed: int = 0, atol: float = 1e-9) -> None:
    """E invariant and F equivariant under rotation, translation and atom permutation."""
    rng = np.random.default_rng(seed)
    ref = evaluate(pot, [atoms])
    rot = random_rotation(rng)
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + rng.normal(size=3) * 3.0
    out = evaluate(pot, [moved])
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], atol=atol, rtol=0)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES] @ rot.T, atol=atol * 10, rtol=0)
    perm = rng.permutation(len(atoms))
    permuted = atoms[perm]
    out = evaluate(pot, [permuted])
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], atol=atol, rtol=0)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES][perm], atol=atol * 10, rtol=0)
    np.testing.assert_allclose(out[keys.ATOMIC_ENERGIES], ref[keys.ATOMIC_ENERGIES][perm], atol=atol, rtol=0)


def check_forces_finite_difference(pot: Potential, atoms: Atoms, h: float = 1e-5, rtol: float = 1e-6) -> None:
    """F = −∇E by central finite differences (use a float64 potential)."""
    forces = evaluate(pot, [atoms])[keys.FORCES]
    numeric = np.zeros_like(forces)
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, k] += h
            minus.positions[a, k] -= h
            e_plus = evaluate(pot, [plus])[keys.ENERGY][0]
            e_minus = evaluate(pot, [minus])[keys.ENERGY][0]
            numeric[a, k] = -(e_plus - e_minus) / (2 * h)
    scale = max(np.abs(forces).max(), 1e-3)
    np.testing.assert_allclose(forces, numeric, atol=rtol * scale, rtol=0)


def check_batch_equals_single(pot: Potential, atoms_list, atol: float = 1e-9) -> None:
    """A batch of molecules gives the same per-molecule results as evaluating them one at a time."""
    batched = evaluate(pot, atoms_list)
    start = 0
    for i, atoms in enumerate(atoms_list):
        single = evaluate(pot, [atoms])
        n = len(atoms)
        np.testing.assert_allclose(batched[keys.ENERGY][i], single[keys.ENERGY][0], atol=atol, rtol=0)
        np.testing.assert_allclose(
            batched[keys.FORCES][start : start + n], single[keys.FORCES], atol=atol, rtol=0
        )
        start += n


def check_atomic_energies_sum(pot: Potential, atoms_list, atol: float = 1e-9) -> None:
    out = evaluate(pot, atoms_list)
    n_atoms = [len(a) for a in atoms_list]
    sums = np.add.reduceat(out[keys.ATOMIC_ENERGIES], np.cumsum([0] + n_atoms[:-1]))
    np.testing.assert_allclose(sums, out[keys.ENERGY], atol=atol, rtol=0)


def check_separability(
    pot: Potential, a: Atoms, b: Atoms, distance: float = 100.0, atol: float = 1e-8
) -> None:
    """Two molecules far apart in one structure: energy = sum of separate energies."""
    far = b.copy()
    far.positions = far.positions - far.positions.mean(0) + a.positions.mean(0) + [distance, 0.0, 0.0]
    combined = evaluate(pot, [a + far])[keys.ENERGY][0]
    separate = evaluate(pot, [a])[keys.ENERGY][0] + evaluate(pot, [b])[keys.ENERGY][0]
    np.testing.assert_allclose(combined, separate, atol=atol, rtol=0)


def check_cutoff_smoothness(pot: Potential, delta: float = 1e-4) -> None:
    """Energy and forces continuous as an atom crosses the cutoff.

    A diatomic at r_c ± δ: just outside, the two atoms do not see each other, so energy must equal the sum
    of the isolated atoms and the forces vanish; just inside, both must be within O(δ²) of that.
    """
    rc = pot.cutoff

    def dimer(r: float) -> Atoms:
        return Atoms("CO", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])

    inside = evaluate(pot, [dimer(rc - delta)])
    outside = evaluate(pot, [dimer(rc + delta)])
    isolated = evaluate(pot, [Atoms("C")])[keys.ENERGY][0] + evaluate(pot, [Atoms("O")])[keys.ENERGY][0]
    np.testing.assert_allclose(outside[keys.ENERGY][0], isolated, atol=1e-12, rtol=0)
    assert np.abs(outside[keys.FORCES]).max() < 1e-12
    assert abs(inside[keys.ENERGY][0] - outside[keys.ENERGY][0]) < 1e-6
    assert np.abs(inside[keys.FORCES]).max() < 1e-4
    # the pair does interact well inside the cutoff (otherwise this check would be void)
    assert abs(evaluate(pot, [dimer(rc - 0.5)])[keys.ENERGY][0] - isolated) > 1e-6


def check_stress_finite_difference(pot: Potential, atoms: Atoms, h: float = 1e-5, rtol: float = 1e-5) -> None:
    """Stress σ = (1/V) ∂E/∂ε against central differences of the energy under symmetric strain."""
    stress = evaluate(pot, [atoms], stress=True)[keys.STRESS][0]
    volume = atoms.get_volume()
    numeric = np.zeros((3, 3))
    cell = atoms.get_cell().array
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += 0.5 * sign * h
                eps[j, i] += 0.5 * sign * h
                strained = atoms.copy()
                strained.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
                energies.append(evaluate(pot, [strained])[keys.ENERGY][0])
            numeric[i, j] = (energies[0] - energies[1]) / (2 * h * volume)
    scale = max(np.abs(stress).max(), 1e-6)
    np.testing.assert_allclose(stress, numeric, atol=rtol * scale, rtol=0)
    assert np.abs(stress).max() > 1e-8, "stress vanishes identically: the check would be void"


def double_potential(pot: Potential) -> Potential:
    torch.manual_seed(0)
    return pot.double().eval()
