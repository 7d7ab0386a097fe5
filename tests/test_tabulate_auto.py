"""The measured accuracy of filter tables and the calculator's ``tabulate="auto"`` default built on it.

Expectations: the cubic Hermite error formulas for sin(k r), a dense brute-force scan of the table, the float64
model as the reference of float32 round-off, and the fused-kernel switch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import molecule

from atomnet.calculator import AtomNetCalculator
from atomnet.errors import ConfigError
from atomnet.models import DTNN, CMNet, SchNet
from atomnet.models import tabulate as tabulate_module
from atomnet.models.tabulate import round_off_ratio, tabulate_filters, tabulate_if_below_round_off
from atomnet.nn import fused
from atomnet.nn.tabulated import TabulatedFilter
from atomnet.potential import Potential

SCHNET = dict(n_atom_basis=32, n_filters=32, n_interactions=2, n_rbf=50, cutoff=5.0)


def schnet(seed: int = 0, **kwargs) -> SchNet:
    torch.manual_seed(seed)
    return SchNet(**{**SCHNET, **kwargs})


@pytest.mark.parametrize("h", [0.05, 0.02])
def test_relative_error_is_the_hermite_error_of_values_and_slopes(h):
    """For sin(k r) (max |W| = 1, max |W'| = k): the value error peaks at h⁴k⁴/384 and the slope error at
    k⁴ h³ / (24 · 3√3) (max |d/dt t²(1−t)²| = 1/(3√3)); relative_error is the larger relative one."""
    k = 3.0
    table = TabulatedFilter.from_function(lambda r: torch.sin(k * r)[:, None], 3.0, h, torch.float64)
    h = table.spacing
    value_error = h**4 * k**4 / 384
    slope_error = k**4 * h**3 / (24 * 3 * math.sqrt(3)) / k
    assert table.relative_error == pytest.approx(max(value_error, slope_error), rel=0.02)


def test_relative_error_matches_a_dense_scan_of_the_table():
    """The check points find the worst deviation of a SchNet filter's table (values and slopes) that a scan of
    40 points per segment finds."""
    model = schnet().double()
    table = tabulate_filters(model, 0.02).get_submodule("interactions.0.filter_network")
    network = model.get_submodule("interactions.0.filter_network")
    r = torch.linspace(0.0, model.cutoff, 40 * table.coefficients.shape[0] + 1, dtype=torch.float64)
    deviations = []
    for approximate in (False, True):

        def w(r, approximate=approximate):  # each r_n moves only pair n: forward mode gives every dW_f/dr_n
            one = torch.ones_like(r)
            return table(r, one) if approximate else network(model.rbf(r), one)

        with torch.no_grad():
            deviations.append(torch.func.jvp(w, (r,), (torch.ones_like(r),)))
    (w_table, s_table), (w_exact, s_exact) = deviations
    scanned = max(
        float((w_table - w_exact).abs().max() / w_exact.abs().max()),
        float((s_table - s_exact).abs().max() / s_exact.abs().max()),
    )
    assert table.relative_error == pytest.approx(scanned, rel=0.05)


def test_round_off_is_the_float32_deviation_of_the_exact_filter():
    """float32: round_off is of float32 order (and so the default grid's error), a 0.002 Å grid lies below it;
    float64: the exact filter is its own reference (round-off 0), so no table is below it."""
    table = tabulate_filters(schnet())
    filters = [m for m in table.modules() if isinstance(m, TabulatedFilter)]
    assert all(1e-8 < t.round_off < 1e-4 for t in filters)
    assert 0.1 < round_off_ratio(table) < 10
    assert round_off_ratio(tabulate_filters(schnet(), 0.002)) < 0.5
    table64 = tabulate_filters(schnet().double())
    assert all(t.round_off == 0.0 for t in table64.modules() if isinstance(t, TabulatedFilter))
    assert round_off_ratio(table64) == math.inf
    assert round_off_ratio(schnet()) is None  # nothing tabulated


def test_auto_tabulates_float32_schnet_below_round_off():
    """The default calculator tabulates a float32 SchNet, and its forces are as close to the float64 model as
    the exact float32 model's are (within a factor 2)."""
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    reference = AtomNetCalculator(Potential(schnet()), dtype=torch.float64).get_forces(atoms.copy())
    default = AtomNetCalculator(Potential(schnet()))  # the same weights (seed) in each
    exact = AtomNetCalculator(Potential(schnet()), tabulate=False)
    assert default.tabulated and not exact.tabulated
    assert (
        default.tabulation[0].startswith("tabulated filters, ")
        and "float32 round-off" in default.tabulation[0]
    )
    assert isinstance(default._models[0].get_submodule("interactions.0.filter_network"), TabulatedFilter)
    error = np.abs(default.get_forces(atoms.copy()) - reference).max()
    round_off = np.abs(exact.get_forces(atoms.copy()) - reference).max()
    assert 0 < error < 2 * round_off + 1e-7


def test_auto_keeps_exact_filters_where_tables_do_not_pay_or_are_not_exact_enough(monkeypatch):
    """DTNN, float64 and a machine without the fused table kernel keep the exact filters (a compiled model
    still gets tables); explicit True / a spacing always tabulates."""
    torch.manual_seed(0)
    dtnn = DTNN(n_atom_basis=16, n_factors=16, n_interactions=2, cutoff=5.0)
    model, reason = tabulate_if_below_round_off(dtnn)
    assert model is dtnn and "not SchNet filter networks" in reason
    cmnet = CMNet(max_atoms=9)
    assert tabulate_if_below_round_off(cmnet) == (cmnet, "no filters of the distance to tabulate")
    model64 = schnet().double()
    assert tabulate_if_below_round_off(model64)[0] is model64
    assert not AtomNetCalculator(Potential(schnet()), dtype=torch.float64).tabulated
    assert AtomNetCalculator(Potential(schnet()), dtype=torch.float64, tabulate=True).tabulated
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    assert not fused.enabled()
    plain = schnet()
    model, reason = tabulate_if_below_round_off(plain)
    assert model is plain and "fused table kernel" in reason
    assert tabulate_if_below_round_off(plain, compiled=True)[0] is not plain
    calc = AtomNetCalculator(Potential(plain), tabulate=0.01)
    assert calc.tabulated and calc._models[0].get_submodule("interactions.1.filter_network").spacing == 0.01


def test_auto_refines_a_coarse_grid_once_and_else_keeps_the_exact_filters(monkeypatch):
    """A grid too coarse for round-off is refined by the h³ scaling (the result is below round-off); if the
    refined grid would pass the finest allowed, the exact filters stay."""
    model = schnet()
    assert round_off_ratio(tabulate_filters(model, 0.05)) > 1
    table, reason = tabulate_if_below_round_off(model, spacing=0.05)
    assert table is not model and round_off_ratio(table) <= 1
    assert table.get_submodule("interactions.0.filter_network").spacing < 0.05
    monkeypatch.setattr(tabulate_module, "FINEST_SPACING", 0.04)
    kept, reason = tabulate_if_below_round_off(model, spacing=0.05)
    assert kept is model and "× the exact filters' float32 round-off" in reason


def test_tabulate_option_is_validated():
    with pytest.raises(ConfigError, match="tabulate must be"):
        AtomNetCalculator(Potential(schnet()), tabulate="always")
