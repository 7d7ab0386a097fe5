"""``atomnet serve``: the real i-PI drives an atomnet potential over UNIX and TCP sockets.

i-PI (a subprocess, ``i-pi input.xml`` in a tmp dir) integrates the dynamics and records what the client sent;
the expectation is an independent :class:`AtomNetCalculator` evaluated on the positions i-PI recorded.

Units, set explicitly in every XML: properties in ``{atomic_unit}`` (Hartree, converted here with ASE's
``units.Ha`` as ASE's socket client does; i-PI's own ``{electronvolt}`` differs by 1e-7 relative) at full
float64 precision (``floatformat='%25.16e'``), minus an ``<offset>`` near the energy of the start structure
(i-PI subtracts it); trajectories in i-PI's ``format='ase'`` extxyz, which is in ASE units (Å, eV/Å) with 8
decimals. Tolerances follow from that rounding.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.io import read, write

from atomnet.calculator import AtomNetCalculator
from atomnet.cli import main
from atomnet.errors import AtomNetError
from atomnet.serve import serve

pytest.importorskip("ipi")
pytestmark = [
    pytest.mark.skipif(shutil.which("i-pi") is None, reason="the i-pi command is not on PATH"),
    pytest.mark.usefixtures("one_thread"),
]

ROOT = Path(__file__).resolve().parents[1]
ETHANOL_XYZ = ROOT.parent / "shared" / "data" / "md17" / "ethanol_dft_1200.xyz"
MODEL = "schnet-md17-ethanol"
#: extxyz positions are rounded to 1e-8 Å: at most 5e-9 Å per coordinate.
POSITION_ROUNDING = 5e-9
#: Force tolerance, eV/Å: rounding of positions (5e-9 Å) times Hessian entries (≲ 100 eV/Å² over 9 atoms)
#: plus the 5e-9 eV/Å rounding of the written forces. Measured: ≤ 4e-7 eV/Å. Forces are ~1-3 eV/Å.
FORCE_TOL = 2e-6
WAIT = 120  # s: upper bound for one i-PI run; a normal one takes ~5 s


def unique_name() -> str:
    """A socket name no other test or process uses (i-PI refuses to bind an existing /tmp/ipi_NAME)."""
    return f"atomnet-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def calc() -> AtomNetCalculator:
    """The independent reference: a second calculator, not the one that served i-PI."""
    return AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64)


@pytest.fixture
def ethanol(tmp_path) -> Path:
    """First MD17 ethanol frame in a 20 Å box (i-PI needs a cell; pbc stays off): ``init.extxyz``."""
    if not ETHANOL_XYZ.is_file():
        pytest.skip(f"MD17 ethanol not found: {ETHANOL_XYZ}")
    atoms = read(ETHANOL_XYZ, index=0)
    atoms.calc = None
    atoms.cell, atoms.pbc = [20.0, 20.0, 20.0], False
    path = tmp_path / "init.extxyz"
    write(path, atoms, format="extxyz")
    return path


def ffsocket(
    unix: str | None = None, port: int | None = None, offset_ha: float = 0.0, pbc: bool = False
) -> str:
    """i-PI's <ffsocket>; ``pbc=False``: positions are sent unwrapped (a molecule in a box)."""
    address = f"<address>{unix}</address>" if unix else f"<address>localhost</address><port>{port}</port>"
    mode = "unix" if unix else "inet"
    return (
        f"<ffsocket name='atomnet' mode='{mode}' pbc='{str(pbc).lower()}'>{address}"
        f"<offset units='atomic_unit'>{offset_ha!r}</offset></ffsocket>"
    )


def ipi_input(
    socket_xml: str,
    steps: int,
    nbeads: int = 1,
    dynamics: str = "nve",
    init: str = "init.extxyz",
    extra: tuple[str, ...] = (),
) -> str:
    """Input of an i-PI MD (``nbeads`` > 1: path-integral) run from ``init`` at 300 K, 0.25 fs steps,
    recording ``step, conserved, potential, bead_potentials`` (+ ``extra``) in Hartree every step."""
    properties = ", ".join(
        ["step", "conserved{atomic_unit}", "potential{atomic_unit}", "bead_potentials{atomic_unit}", *extra]
    )
    thermostat = (
        "<thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat>"
        if dynamics == "nvt"
        else ""
    )
    return f"""<simulation verbosity='low' floatformat='%25.16e'>
  <output prefix='sim'>
    <properties stride='1' filename='out' flush='1'>
      [ {properties} ]
    </properties>
    <trajectory filename='pos' stride='1' format='ase' flush='1'> positions </trajectory>
    <trajectory filename='for' stride='1' format='ase' flush='1'> forces </trajectory>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 31415 </seed></prng>
  {socket_xml}
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='ase'> {init} </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='atomnet'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='{dynamics}'>
        <timestep units='femtosecond'> 0.25 </timestep>
        {thermostat}
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""


@contextmanager
def ipi_server(workdir: Path, xml: str, unix: str | None = None):
    """Start ``i-pi input.xml`` in ``workdir``; kill it (and remove its socket file) on the way out."""
    (workdir / "input.xml").write_text(xml)
    log = open(workdir / "ipi.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(["i-pi", "input.xml"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
        if unix is not None:
            Path(f"/tmp/ipi_{unix}").unlink(missing_ok=True)


@contextmanager
def serving(atoms: Atoms, **kwargs):
    """``serve(...)`` in a thread (its own calculator); yields a dict that gets ``n`` or ``error``."""
    result: dict = {}

    def target() -> None:
        try:
            server_calc = AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64)
            result["n"] = serve(server_calc, atoms, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield result
    finally:  # the i-PI context closes first (on error): the socket closes and the thread returns
        thread.join(WAIT)
        result["alive"] = thread.is_alive()


def finish(proc: subprocess.Popen, workdir: Path) -> None:
    """Wait for i-PI to end; assert it reported a clean exit."""
    assert proc.wait(WAIT) == 0, (workdir / "ipi.log").read_text()[-3000:]


def read_properties(path: Path) -> dict[str, np.ndarray]:
    """i-PI properties file → {name with units: (n_steps,) or (n_steps, size)}, from its ``# column`` header."""
    data = np.loadtxt(path, ndmin=2)
    columns = {}
    for m in re.finditer(r"^#\s*(?:column|cols\.)\s+(\d+)(?:-(\d+))?\s*-->\s*(\S+)", path.read_text(), re.M):
        block = data[:, int(m[1]) - 1 : int(m[2] or m[1])]
        columns[m[3]] = block if m[2] else block[:, 0]
    return columns


def n_records(path: Path) -> int:
    """Complete data lines written so far to an i-PI properties file (0 if it does not exist yet)."""
    if not path.is_file():
        return 0
    return sum(line.endswith("\n") and not line.startswith("#") for line in path.open())


def bead_frames(workdir: Path, what: str, nbeads: int) -> list[list[Atoms]]:
    """[bead][step] frames of i-PI's per-bead ``format='ase'`` trajectory ``sim.{what}_{bead}.extxyz``."""
    return [read(workdir / f"sim.{what}_{b}.extxyz", ":") for b in range(nbeads)]


def reference(calc: AtomNetCalculator, frame: Atoms, pbc: bool = False) -> tuple[float, np.ndarray, float]:
    """Energy (eV), forces (eV/Å) and an energy tolerance (eV) for a recorded frame: first-order effect
    of the 1e-8 Å rounding of the written positions, plus float64 round-off."""
    atoms = Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=pbc)  # i-PI writes pbc="T T T"
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    return energy, forces, POSITION_ROUNDING * np.abs(forces).sum() + 1e-12 * abs(energy)


def offset_for(calc: AtomNetCalculator, init: Path) -> float:
    """An energy offset near E(init) in Hartree (i-PI subtracts it), so its output keeps the small digits."""
    atoms = read(init)
    atoms.calc = calc
    return round(atoms.get_potential_energy() / units.Ha, 2)


def check_against_calculator(calc, workdir: Path, nbeads: int, offset_ha: float, pbc: bool = False) -> int:
    """Assert i-PI's recorded bead energies, their mean and the forces equal ``calc`` on the recorded bead
    positions; returns the number of recorded (bead, step) configurations."""
    props = read_properties(workdir / "sim.out")
    positions = bead_frames(workdir, "pos", nbeads)
    forces = bead_frames(workdir, "for", nbeads)
    n_steps = len(props["step"])
    assert all(len(p) == n_steps for p in positions) and all(len(f) == n_steps for f in forces)
    bead_pot = props["bead_potentials{atomic_unit}"].reshape(n_steps, nbeads)
    energies = np.empty((n_steps, nbeads))
    for b in range(nbeads):
        for s in range(n_steps):
            energy, ref_forces, tol = reference(calc, positions[b][s], pbc)
            energies[s, b] = energy
            recorded = (bead_pot[s, b] + offset_ha) * units.Ha
            assert recorded == pytest.approx(energy, rel=0, abs=tol), (b, s)
            np.testing.assert_allclose(forces[b][s].get_forces(), ref_forces, rtol=0, atol=FORCE_TOL)
    mean = (props["potential{atomic_unit}"] + offset_ha) * units.Ha
    np.testing.assert_allclose(mean, energies.mean(axis=1), rtol=0, atol=1e-6)
    assert np.ptp(energies) > 1e-3  # the run moved the atoms: energies differ by far more than the tolerance
    return n_steps * nbeads


def test_nve_unix_socket_cli_client(tmp_path, ethanol, calc):
    """i-PI NVE over a UNIX socket against the ``atomnet serve`` command: energies and forces i-PI recorded
    are the model's on the recorded positions; the client exits 0 after i-PI's EXIT."""
    name, steps, offset = unique_name(), 12, offset_for(calc, ethanol)
    client = None
    with ipi_server(tmp_path, ipi_input(ffsocket(unix=name, offset_ha=offset), steps), unix=name) as ipi:
        try:
            argv = ["serve", MODEL, str(ethanol), "--unix", name, "--dtype", "float64", "--threads", "1"]
            client = subprocess.Popen(
                [sys.executable, "-m", "atomnet.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
            out, _ = client.communicate(timeout=WAIT)
            finish(ipi, tmp_path)
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()
    assert client.returncode == 0
    n = check_against_calculator(calc, tmp_path, nbeads=1, offset_ha=offset)
    assert n == steps + 1  # one evaluation per step plus the initial one, all recorded
    assert f"served {n} force evaluations" in out
    assert not Path(f"/tmp/ipi_{name}").exists()  # i-PI removed its socket
    props = read_properties(tmp_path / "sim.out")  # NVE with F = -dE/dx: E_pot and E_kin trade, the sum stays
    assert np.ptp(props["conserved{atomic_unit}"]) < 0.05 * np.ptp(props["potential{atomic_unit}"])  # 0.0034


def test_path_integrals_unix_socket(tmp_path, ethanol, calc):
    """4-bead PIMD (PILE-L thermostat): every bead's energy and forces, and i-PI's bead-averaged potential,
    equal the model on the bead positions; ``serve`` returns the number of bead evaluations."""
    name, steps, nbeads, offset = unique_name(), 3, 4, offset_for(calc, ethanol)
    xml = ipi_input(ffsocket(unix=name, offset_ha=offset), steps, nbeads=nbeads, dynamics="nvt")
    atoms = read(ethanol)
    with ipi_server(tmp_path, xml, unix=name) as ipi, serving(atoms, unixsocket=name, timeout=WAIT) as result:
        finish(ipi, tmp_path)
    assert not result["alive"] and "error" not in result, result.get("error")
    assert result["n"] == check_against_calculator(calc, tmp_path, nbeads, offset) == nbeads * (steps + 1)
    beads = [frames[-1].positions for frames in bead_frames(tmp_path, "pos", nbeads)]
    assert np.ptp(beads, axis=0).max() > 1e-3  # the beads are distinct configurations, Å


def test_inet_socket(tmp_path, ethanol, calc):
    """The same over TCP on localhost (``--inet HOST:PORT`` route of ``serve``)."""
    port, steps, offset = free_port(), 3, offset_for(calc, ethanol)
    with (
        ipi_server(tmp_path, ipi_input(ffsocket(port=port, offset_ha=offset), steps)) as ipi,
        serving(read(ethanol), host="localhost", port=port, timeout=WAIT) as result,
    ):
        finish(ipi, tmp_path)
    assert not result["alive"] and "error" not in result, result.get("error")
    assert result["n"] == check_against_calculator(calc, tmp_path, 1, offset) == steps + 1


def test_periodic_virial(tmp_path, calc):
    """A periodic box (two MD17 ethanol frames in a 10 Å cube; the client sends the virial): energies and
    forces as above, and the virial per volume i-PI recorded is −σ of the model."""
    if not ETHANOL_XYZ.is_file():
        pytest.skip(f"MD17 ethanol not found: {ETHANOL_XYZ}")
    first, second = read(ETHANOL_XYZ, index=0), read(ETHANOL_XYZ, index=600)
    second.translate([5.0, 5.0, 5.0])
    box = Atoms(list(first.numbers) + list(second.numbers), np.vstack([first.positions, second.positions]))
    box.cell, box.pbc = [10.0, 10.0, 10.0], True
    write(tmp_path / "box.extxyz", box, format="extxyz")
    name, steps, offset = unique_name(), 3, offset_for(calc, tmp_path / "box.extxyz")
    virial = "vir_component{atomic_unit}(0)"  # W / V of force component 0, xx yy zz xy xz yz
    xml = ipi_input(
        ffsocket(unix=name, offset_ha=offset, pbc=True), steps, init="box.extxyz", extra=(virial,)
    )
    with (
        ipi_server(tmp_path, xml, unix=name) as ipi,
        serving(read(tmp_path / "box.extxyz"), unixsocket=name, timeout=WAIT) as result,
    ):
        finish(ipi, tmp_path)
    assert not result["alive"] and "error" not in result, result.get("error")
    assert result["n"] == check_against_calculator(calc, tmp_path, 1, offset, pbc=True) == steps + 1
    recorded = read_properties(tmp_path / "sim.out")[virial] * units.Ha / units.Bohr**3  # eV/Å³
    for frame, w in zip(bead_frames(tmp_path, "pos", 1)[0], recorded, strict=True):
        atoms = Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=True, calculator=calc)
        sigma = atoms.get_stress(voigt=False)  # |σ| ~ 7e-3 eV/Å³; measured |W/V + σ| <= 1e-9 eV/Å³
        np.testing.assert_allclose(w, -sigma[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]], rtol=0, atol=1e-8)


def test_wrong_structure(tmp_path, ethanol, capsys):
    """A structure with another atom count than i-PI's is a one-line error of the command (exit 2)."""
    name, methane = unique_name(), tmp_path / "methane.xyz"
    write(methane, molecule("CH4"))
    with ipi_server(tmp_path, ipi_input(ffsocket(unix=name), 3), unix=name):
        code = main(["serve", MODEL, str(methane), "--unix", name, "--threads", "1", "--timeout", str(WAIT)])
    err = capsys.readouterr().err.strip()
    expected = f"i-PI sent {len(read(ethanol))} atoms but the structure has {len(read(methane))}"
    assert code == 2 and err.startswith(f"atomnet serve: error: {expected}") and "\n" not in err


def test_killed_server(tmp_path, ethanol):
    """An i-PI killed mid-run (SIGKILL, no EXIT) is an error naming the socket, not a clean return."""
    name = unique_name()
    with (
        ipi_server(tmp_path, ipi_input(ffsocket(unix=name), 100000), unix=name) as ipi,
        serving(read(ethanol), unixsocket=name, timeout=WAIT) as result,
    ):
        while n_records(tmp_path / "sim.out") < 3:  # i-PI is running and being served
            assert ipi.poll() is None and "error" not in result
            time.sleep(0.1)
        ipi.kill()
    assert not result["alive"] and isinstance(result["error"], AtomNetError)
    assert "without EXIT" in str(result["error"]) and f"/tmp/ipi_{name}" in str(result["error"])


@pytest.mark.parametrize(
    "options, message",
    [
        ([], "exactly one of --unix NAME or --inet HOST:PORT"),
        (["--unix", "a", "--inet", "localhost:31415"], "exactly one of --unix NAME or --inet HOST:PORT"),
        (["--inet", "localhost"], "expected HOST:PORT"),
        (["--inet", "localhost:0"], "expected HOST:PORT"),
    ],
)
def test_cli_socket_options(options, message, capsys, tmp_path):
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    assert main(["serve", MODEL, str(structure), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet serve: error:") and message in err and "\n" not in err


def test_cli_missing_structure(capsys, tmp_path):
    assert main(["serve", MODEL, str(tmp_path / "missing.xyz"), "--unix", unique_name()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomnet serve: error:") and "missing.xyz" in err and "\n" not in err


@pytest.mark.parametrize("route", ["unix", "inet"])
def test_cli_no_server(route, capsys, tmp_path):
    """Nobody listening: retried for --timeout seconds, then a one-line error naming the socket."""
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    name, port = unique_name(), free_port()
    target = ["--unix", name] if route == "unix" else ["--inet", f"localhost:{port}"]
    assert main(["serve", MODEL, str(structure), *target, "--timeout", "0.5", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    where = f"UNIX socket /tmp/ipi_{name}" if route == "unix" else f"INET socket localhost:{port}"
    assert err.startswith(f"atomnet serve: error: no i-PI server at {where} after 0.5 s") and "\n" not in err
