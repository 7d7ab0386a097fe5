"""Tabulated filters: Hermite interpolation against analytic functions, the tabulated SchNet against the
exact one, and the physics checks on the tabulated model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import molecule
from physics_checks import (
    check_atomic_energies_sum,
    check_batch_equals_single,
    check_cutoff_smoothness,
    check_forces_finite_difference,
    check_invariance,
    check_separability,
    check_stress_finite_difference,
    evaluate,
)
from test_calculator import water_box
from test_models import make_potential

from atomnet import keys
from atomnet.errors import AtomNetError
from atomnet.models.schnet import SchNet
from atomnet.models.tabulate import tabulate_filters
from atomnet.nn.cfconv import FilterNetwork
from atomnet.nn.tabulated import TabulatedFilter
from atomnet.potential import Potential


def value_and_slope(module: torch.nn.Module, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """module(r, 1) (n, F) and its derivative with respect to r by reverse-mode autograd, per feature."""
    r = r.clone().requires_grad_(True)
    w = module(r, torch.ones_like(r))
    slopes = torch.stack(
        [torch.autograd.grad(w[:, f].sum(), r, retain_graph=True)[0] for f in range(w.shape[1])], dim=1
    )
    return w.detach(), slopes


def test_cubic_polynomials_are_reproduced_exactly():
    """Hermite cubics interpolate any cubic exactly (values and slopes), whatever the spacing."""
    coeffs = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.0, 0.2, -0.7, 0.1]], dtype=torch.float64)  # (F, 4)

    def cubic(r: torch.Tensor) -> torch.Tensor:
        return torch.stack([c[0] + c[1] * r + c[2] * r**2 + c[3] * r**3 for c in coeffs], dim=1)

    table = TabulatedFilter.from_function(cubic, r_max=2.0, spacing=0.3, dtype=torch.float64)
    assert table.spacing == pytest.approx(2.0 / 7)  # shrunk so that a node falls on r_max
    r = torch.rand(200, dtype=torch.float64) * 2.0
    w, slopes = value_and_slope(table, r)
    torch.testing.assert_close(w, cubic(r), rtol=0, atol=1e-12)
    expected = torch.stack([c[1] + 2 * c[2] * r + 3 * c[3] * r**2 for c in coeffs], dim=1)
    torch.testing.assert_close(slopes, expected, rtol=0, atol=1e-11)


@pytest.mark.parametrize("h", [0.05, 0.02])
def test_interpolation_error_follows_the_h4_bound(h):
    """For sin(k r) the cubic Hermite error is at most h⁴ k⁴ / 384, and of that order (not accidentally 0)."""
    k = 3.0
    table = TabulatedFilter.from_function(lambda r: torch.sin(k * r)[:, None], 3.0, h, torch.float64)
    r = torch.linspace(0.0, 3.0, 10001, dtype=torch.float64)
    error = (table(r, torch.ones_like(r))[:, 0] - torch.sin(k * r)).abs().max().item()
    bound = h**4 * k**4 / 384
    assert bound / 20 < error <= bound


def exact_filter(model, name: str):
    """The function of r that ``model``'s distance filter ``name`` computes (what the table must hold)."""
    module = model.get_submodule(name)
    if isinstance(module, FilterNetwork):
        return lambda r, _: module(model.rbf(r), torch.ones_like(r))
    return lambda r, _: module(model.rbf(r))


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_filter_tables_match_the_networks(name):
    """Every tabulated filter equals the module it replaces (values and slopes) at random distances."""
    pot = make_potential(name)
    model, table = pot.model, tabulate_filters(pot.model)
    names = model.distance_filters()
    assert len(names) == len(model.interactions)
    r = torch.rand(300, dtype=torch.float64) * model.cutoff
    for filter_name in names:
        tabulated = table.get_submodule(filter_name)
        assert isinstance(tabulated, TabulatedFilter)
        w, dw = value_and_slope(exact_filter(model, filter_name), r)
        wt, dwt = value_and_slope(tabulated, r)
        assert (wt - w).abs().max() < 1e-8 * w.abs().max()
        assert (dwt - dw).abs().max() < 1e-5 * dw.abs().max()
        fcut = model.cutoff_fn(r)
        torch.testing.assert_close(tabulated(r, fcut), wt * fcut[:, None], rtol=0, atol=1e-14)
        torch.testing.assert_close(tabulated(r), wt, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_tabulated_model_predicts_like_the_exact_one(name):
    pot = make_potential(name)
    before = {k: v.clone() for k, v in pot.model.state_dict().items()}
    filter_type = type(pot.model.get_submodule(pot.model.distance_filters()[0]))
    tabulated = Potential(tabulate_filters(pot.model))
    structures = [molecule("CH3CH2OH"), molecule("C6H6"), water_box()]
    for atoms in structures:
        atoms.rattle(0.05, seed=3)
    exact, tab = evaluate(pot, structures), evaluate(tabulated, structures)
    np.testing.assert_allclose(tab[keys.ENERGY], exact[keys.ENERGY], rtol=0, atol=1e-8)
    np.testing.assert_allclose(tab[keys.ATOMIC_ENERGIES], exact[keys.ATOMIC_ENERGIES], rtol=0, atol=1e-8)
    f = exact[keys.FORCES]
    assert np.abs(tab[keys.FORCES] - f).max() < 1e-6 * np.abs(f).max()
    assert not np.allclose(
        tab[keys.ENERGY], exact[keys.ENERGY], rtol=0, atol=1e-14
    )  # really a different path
    for key, value in pot.model.state_dict().items():  # the original model is untouched
        assert torch.equal(value, before[key])
    assert type(pot.model.get_submodule(pot.model.distance_filters()[0])) is filter_type
    assert not any(p.requires_grad for p in tabulated.model.parameters())


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_tabulated_model_passes_the_physics_checks(name):
    """Forces = −∇E (the spline's slopes are the derivative of its values), invariances, batch = single,
    stress, smoothness at the cutoff (the cutoff function multiplies the table exactly), per-atom energies
    summing to the energy, additivity of far-apart molecules."""
    pot = Potential(tabulate_filters(make_potential(name).model))
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    check_invariance(pot, atoms)
    check_forces_finite_difference(pot, atoms)
    check_batch_equals_single(pot, [atoms, molecule("C6H6"), molecule("H2O")])
    check_stress_finite_difference(pot, water_box())
    check_cutoff_smoothness(pot)
    check_atomic_energies_sum(pot, [atoms, molecule("NH3")])
    check_separability(pot, atoms, molecule("H2O"))


def test_models_without_distance_filters_and_bad_spacing_are_refused():
    class NoFilters(SchNet):
        def distance_filters(self) -> list[str]:
            return []

    with pytest.raises(AtomNetError, match="NoFilters has no filters of the distance to tabulate"):
        tabulate_filters(NoFilters(n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=5))
    for spacing in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="spacing must be > 0 Å and finite"):
            tabulate_filters(make_potential("schnet").model, spacing=spacing)


def test_float32_tables_of_a_float32_model():
    """A float32 model gets float32 tables (built in float64), and stays within float32 round-off."""
    pot = make_potential("schnet")
    pot32 = Potential(pot.model).to(dtype=torch.float32)
    tab32 = Potential(tabulate_filters(pot32.model))
    assert tab32.model.interactions[0].filter_network.coefficients.dtype == torch.float32
    atoms = molecule("CH3CH2OH")
    exact64, exact32, tabulated32 = (evaluate(p, [atoms]) for p in (pot, pot32, tab32))
    round_off = np.abs(exact32[keys.FORCES] - exact64[keys.FORCES]).max()
    assert np.abs(tabulated32[keys.FORCES] - exact64[keys.FORCES]).max() < 10 * round_off + 1e-7
    assert math.isclose(tabulated32[keys.ENERGY][0], exact64[keys.ENERGY][0], rel_tol=1e-5)
