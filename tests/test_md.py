"""MD driver: NVE energy conservation, thermostats, outputs and the ``atomnet md`` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import read, write
from test_models import SMALL, make_potential

from atomnet.calculator import AtomNetCalculator
from atomnet.cli import main
from atomnet.md import energy_drift, read_log, run_md
from atomnet.models import build_model, save_model
from atomnet.models.schnet import SchNet
from atomnet.potential import Potential

#: NVE bound, eV/atom/ps. Velocity Verlet is symplectic: for smooth forces the energy error oscillates with
#: amplitude O(dt²) and does not drift. 1e-4 eV/atom/ps would add 1 meV/atom (≈ kT/25 at 300 K) in 10 ps;
#: errors in forces (not −∇E), neighbour-list reuse or cutoff discontinuities give drifts far above it.
#: Measured here (float64, 0.5 fs, 1 ps): ~4e-6 eV/atom/ps.
DRIFT_BOUND = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


class ElasticSchNet(SchNet):
    """Random SchNet + a Morse elastic network around a reference geometry (test double).

    A random SchNet alone does not bind ethanol (the molecule flies apart and E_pot goes flat), so the NVE
    test would pass trivially. The Morse terms D (1 − e^{−a (r − r0_ij)})² f_c(r) on bonds (r0 < 1.6 Å,
    D = 4 eV) and 1–3 pairs (r0 < 2.6 Å, D = 1 eV), a = 1.5/Å, give a bound, stiff molecule (C–H period
    ≈ 10 fs), evaluated through the same model → energy_and_forces → calculator path.
    """

    def __init__(self, positions: np.ndarray, **hparams):
        super().__init__(**hparams)
        d = torch.cdist(torch.as_tensor(positions), torch.as_tensor(positions)).float()
        self.register_buffer("r0", d)
        depth = torch.where(d < 1.6, 4.0, torch.where(d < 2.6, 1.0, 0.0)).fill_diagonal_(0.0)
        self.register_buffer("depth", depth)

    def atomic_outputs(self, batch, vectors):
        y, extra = super().atomic_outputs(batch, vectors)
        r = torch.linalg.vector_norm(vectors, dim=-1)  # one per unordered pair of a mirrored batch
        n = r.shape[0]
        i, j = batch.pair_i[:n], batch.pair_j[:n]
        e = torch.exp(-1.5 * (r - self.r0[i, j]))
        half = 0.5 * self.depth[i, j] * (1.0 - e) ** 2 * self.cutoff_fn(r)
        y = y.index_add(0, i, half)
        return (y.index_add(0, j, half) if n < batch.pair_i.numel() else y), extra


def elastic_ethanol(seed: int = 0, tabulate: bool = False):
    torch.manual_seed(seed)
    atoms = molecule("CH3CH2OH")
    model = ElasticSchNet(atoms.positions, **SMALL["schnet"])
    model.set_statistics(mean=0.0, std=0.5)
    return AtomNetCalculator(Potential(model).double().eval(), tabulate=tabulate), atoms


def check_nve(steps: int, timestep_fs: float = 0.5, tabulate: bool = False):
    calc, atoms = elastic_ethanol(tabulate=tabulate)
    result = run_md(
        calc, atoms, "nve", temperature_K=300, timestep_fs=timestep_fs, steps=steps, progress=False
    )
    assert len(result.time_ps) == steps + 1
    assert result.time_ps[-1] == pytest.approx(steps * timestep_fs * 1e-3)
    print(
        f"NVE drift {result.drift:.2e} eV/atom/ps, Etot std {result.etot.std():.2e}, Epot std {result.epot.std():.3f}"
    )
    assert abs(result.drift) < DRIFT_BOUND
    assert result.epot.std() > 0.01  # E_pot really fluctuates (the test can fail) ...
    assert result.etot.std() < 0.01 * (timestep_fs / 0.5) ** 2 * result.epot.std()  # ... E_tot stays flat
    assert 50 < result.temperature.mean() < 300
    return result


@pytest.mark.parametrize("tabulate", [False, True], ids=["exact", "tabulated"])
def test_nve_energy_conservation_ethanol(tabulate):
    """1 ps of ethanol at 0.5 fs (2,000 steps), with the exact and the tabulated filters."""
    check_nve(2000, tabulate=tabulate)


@pytest.mark.slow
def test_nve_energy_conservation_ethanol_long():
    """5 ps at 0.5 fs; over 1 ps the energy fluctuation scales as dt² (Verlet)."""
    check_nve(10000)
    r_half, r_one = check_nve(2000), check_nve(1000, timestep_fs=1.0)
    assert 2.5 < r_one.etot.std() / r_half.etot.std() < 6


def test_energy_drift_is_a_linear_fit():
    t = np.linspace(0, 2, 101)
    etot = -5.0 + 0.009 * t + 1e-4 * np.sin(40 * t)
    assert energy_drift(t, etot, n_atoms=9) == pytest.approx(0.001, rel=1e-2)
    assert energy_drift(t[:1], etot[:1], 9) == 0.0


@pytest.mark.parametrize("ensemble", ["langevin", "nvt"])
def test_thermostats_run_and_are_reproducible(ensemble, tmp_path):
    results = []
    for _ in range(2):
        calc, atoms = elastic_ethanol()
        r = run_md(
            calc, atoms, ensemble, temperature_K=500, timestep_fs=0.5, steps=60, seed=3, progress=False
        )
        results.append((r, atoms.positions.copy()))
    (r1, p1), (r2, p2) = results
    np.testing.assert_array_equal(p1, p2)  # same seed, same trajectory
    assert np.isfinite(r1.etot).all() and r1.temperature.max() > 100


def test_md_outputs(tmp_path):
    calc = AtomNetCalculator(make_potential("schnet"))
    atoms = molecule("CH3CH2OH")
    r = run_md(
        calc,
        atoms,
        "nve",
        steps=20,
        trajectory=tmp_path / "t.extxyz",
        log=tmp_path / "t.log",
        plot=tmp_path / "t.png",
        progress=False,
    )
    frames = read(tmp_path / "t.extxyz", index=":")
    assert len(frames) == 3  # steps 0, 10, 20
    assert frames[-1].get_potential_energy() == pytest.approx(r.epot[-1])
    log = read_log(tmp_path / "t.log")
    assert log.shape == (21, 5)
    np.testing.assert_allclose(log[:, 3], log[:, 1] + log[:, 2], atol=2e-8)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))  # temporary files renamed away


def test_cli_md(tmp_path, capsys, shared_data):
    torch.manual_seed(0)
    model_path = save_model(build_model("schnet", **SMALL["schnet"]), tmp_path / "tiny.pt")
    structure = tmp_path / "ethanol.xyz"
    write(structure, read(shared_data / "md17" / "ethanol_dft_1200.xyz", index=0))
    out = tmp_path / "md"
    argv = ["md", str(model_path), str(structure), "--steps", "20", "--out", str(out), "--no-progress"]
    assert main(argv + ["--ensemble", "langevin", "--temperature", "300", "--timestep", "0.5"]) == 0
    out_text = capsys.readouterr().out
    assert "steps/s" in out_text and "model: tabulated filters, " in out_text  # float32 SchNet: tables
    for name in ("md.extxyz", "md.log", "md.png"):
        assert (out / name).stat().st_size > 0
    assert read_log(out / "md.log").shape == (21, 5)
    assert main([*argv, "--exact-filters", "--steps", "2"]) == 0
    assert "model: exact filters (tabulate=False)" in capsys.readouterr().out
    for tabulate in (["--tabulate"], ["--tabulate", "0.01"]):  # tabulated filters, default and given grid
        assert main([*argv, "--ensemble", "nve", *tabulate, "--steps", "5"]) == 0
        assert "steps/s" in capsys.readouterr().out and read_log(out / "md.log").shape == (6, 5)
    assert main([*argv, "--tabulate", "0", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet md: error:") and "spacing must be > 0" in err and "\n" not in err
    assert main(["md", str(tmp_path / "missing.pt"), str(structure), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet md: error:") and "missing.pt" in err and "\n" not in err
