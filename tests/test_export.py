"""Exported model files (``atomnet export``): the AOTInductor package runs in a process that never imports
atomnet and gives the ASE calculator's energies and forces; metadata travel inside the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from atomnet.calculator import AtomNetCalculator
from atomnet.cli import main
from atomnet.export import export_model, read_info

MODEL = "schnet-md17-ethanol"

#: run in a fresh interpreter: loads the package with torch alone, pairs from ASE's neighbour list
RUNNER = r"""
import json, sys
import numpy as np, torch
from ase.io import read
from ase.neighborlist import neighbor_list
package, structures, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
f = torch._inductor.aoti_load_package(package)
meta = f.get_metadata()
cutoff = float(meta["cutoff_A"])
results = []
for atoms in read(structures, index=":"):
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    shifts = S @ atoms.cell.array
    e, forces, ae = f(torch.tensor(atoms.numbers), torch.tensor(atoms.positions, dtype=dtype),
                      torch.tensor(i), torch.tensor(j), torch.tensor(shifts, dtype=dtype))
    results.append({"energy": float(e), "forces": forces.tolist(), "atomic": ae.tolist()})
print(json.dumps({"atomnet_imported": "atomnet" in sys.modules, "results": results}))
"""


def structures() -> list[Atoms]:
    """Ethanol (in the training domain), a displaced copy, a larger molecule of the same elements (other n
    and p than at export) and a periodic box (image pairs with non-zero shifts)."""
    eth = molecule("CH3CH2OH")
    moved = eth.copy()
    moved.positions += np.random.default_rng(0).normal(0.0, 0.05, moved.positions.shape)
    big = molecule("CH3CH2OH")
    big.extend(molecule("CH3OH").copy())
    big.positions[len(eth) :] += [4.0, 0.0, 0.0]
    box = eth.copy()
    box.cell = [6.0, 6.5, 7.0]
    box.pbc = True
    box.positions += [0.0, 0.0, 5.5]  # the molecule crosses the boundary: pairs through the walls
    return [eth, moved, big, box]


@pytest.fixture(scope="module", params=["float64", "float32"])
def exported(request, tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("export") / f"{MODEL}-{request.param}.pt2"
    info = export_model(MODEL, path, dtype=request.param)
    return path, request.param, info


def run_without_atomnet(package: Path, dtype: str, xyz: Path, tmp_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(package), str(xyz), dtype],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_exported_package_equals_the_calculator_in_a_process_without_atomnet(exported, tmp_path):
    from ase.io import read, write

    path, dtype, _ = exported
    xyz = tmp_path / "structures.extxyz"
    write(xyz, structures())
    out = run_without_atomnet(path, dtype, xyz, tmp_path)
    assert out["atomnet_imported"] is False
    calc = AtomNetCalculator.from_checkpoint(MODEL, dtype=getattr(torch, dtype), skin=0.0)
    # float64: round-off only; float32: the compiled kernels sum in another order than eager torch
    e_rel, f_abs = (1e-10, 1e-8) if dtype == "float64" else (2e-6, 2e-4)  # energies ~ -4,000 eV
    for atoms, got in zip(read(xyz, index=":"), out["results"], strict=True):  # the file's rounded positions
        atoms.calc = calc
        e = atoms.get_potential_energy()
        forces = atoms.get_forces()
        assert got["energy"] == pytest.approx(e, rel=e_rel)
        np.testing.assert_allclose(got["forces"], forces, rtol=0, atol=f_abs)
        np.testing.assert_allclose(got["atomic"], calc.results["energies"], rtol=e_rel, atol=0)
        assert np.sum(got["atomic"]) == pytest.approx(got["energy"], rel=e_rel)


def test_exported_forces_are_minus_the_gradient_of_the_exported_energy(exported):
    """The packaged backward pass is the exact gradient of the packaged energy (central differences)."""
    path, dtype, _ = exported
    if dtype != "float64":
        pytest.skip("finite differences need float64")
    from ase.neighborlist import neighbor_list

    f = torch._inductor.aoti_load_package(str(path))
    atoms = structures()[1]
    i, j, S = neighbor_list("ijS", atoms, 5.0)

    def call(pos):
        return f(
            torch.tensor(atoms.numbers),
            torch.tensor(pos, dtype=torch.float64),
            torch.tensor(i),
            torch.tensor(j),
            torch.zeros(len(i), 3, dtype=torch.float64),
        )

    _, forces, _ = call(atoms.positions)
    h = 1e-5
    for a, c in [(0, 0), (3, 1), (8, 2)]:
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[a, c] += h
        minus[a, c] -= h
        fd = -(float(call(plus)[0]) - float(call(minus)[0])) / (2 * h)
        assert float(forces[a, c]) == pytest.approx(fd, abs=1e-6)


def test_metadata_travel_inside_the_file_and_info_prints_them(exported, capsys):
    path, dtype, info = exported
    meta = read_info(path)
    assert meta == info
    assert meta["dtype"] == dtype and float(meta["cutoff_A"]) == 5.0
    assert meta["energy_unit"] == "eV" and meta["torch_version"] == torch.__version__
    assert main(["export", "--info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"dtype: {dtype}" in printed and "cutoff_A: 5.0" in printed and "signature:" in printed


def test_export_bad_input_is_one_line(tmp_path, capsys):
    assert main(["export", MODEL, str(tmp_path / "model.zip")]) == 2
    assert "end in .pt2" in capsys.readouterr().err
    assert main(["export", MODEL, str(tmp_path / "m.pt2"), "--dtype", "float64"][:2]) == 2
    assert "give MODEL and OUT.pt2" in capsys.readouterr().err
    assert main(["export", "no-such-model", str(tmp_path / "m.pt2")]) == 2
    assert "neither a file nor a pretrained model" in capsys.readouterr().err
    bogus = tmp_path / "bogus.pt2"
    bogus.write_bytes(b"not a zip")
    assert main(["export", "--info", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "not an AOTInductor package" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "cmnet-qm7", str(tmp_path / "cm.pt2")]) == 2
    assert "pair-based model" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.pt2.*")) and not (tmp_path / "cm.pt2").exists()


@pytest.mark.slow
def test_dtnn_exports_too(tmp_path):
    from ase.neighborlist import neighbor_list

    path = tmp_path / "dtnn.pt2"
    export_model("dtnn-md17-ethanol", path, dtype="float64")
    f = torch._inductor.aoti_load_package(str(path))
    atoms = structures()[1]
    i, j, S = neighbor_list("ijS", atoms, float(read_info(path)["cutoff_A"]))
    e, forces, _ = f(
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.positions),
        torch.tensor(i),
        torch.tensor(j),
        torch.zeros(len(i), 3, dtype=torch.float64),
    )
    atoms.calc = AtomNetCalculator.from_checkpoint("dtnn-md17-ethanol", dtype=torch.float64, skin=0.0)
    assert float(e) == pytest.approx(atoms.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(forces.numpy(), atoms.get_forces(), atol=1e-8)


@pytest.mark.slow
def test_the_cpp_example_builds_and_gives_the_calculator_energy(exported, tmp_path):
    """docs/export/run_exported.cpp, compiled against the wheel's libtorch (needs g++)."""
    import re
    import shutil

    path, dtype, _ = exported
    if dtype != "float64" or shutil.which("g++") is None:
        pytest.skip("float64 package and g++ needed")
    source = Path(__file__).parents[1] / "docs" / "export" / "run_exported.cpp"
    t = Path(torch.__file__).parent
    exe = tmp_path / "run_exported"
    subprocess.run(
        ["g++", "-std=c++17", str(source), f"-I{t}/include", f"-I{t}/include/torch/csrc/api/include",
         f"-L{t}/lib", "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{t}/lib", "-o", str(exe)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    out = subprocess.run([str(exe), str(path)], check=True, capture_output=True, text=True).stdout
    energy = float(re.search(r"energy (\S+) eV", out).group(1))
    water = Atoms("OH2", positions=[[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]])
    water.calc = AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64)
    assert energy == pytest.approx(water.get_potential_energy(), rel=1e-8)
