"""QM9 readers on the real shared tarball, the qm9pack package, atomrefs, and broken inputs."""

from __future__ import annotations

import bz2
import importlib.util
import io
import tarfile

import numpy as np
import pytest

from atomnet.data.qm9 import (
    QM9_ATOMREFS,
    QM9_PROPERTIES,
    QM9_UNITS,
    read_qm9_atomrefs,
    read_qm9_tarball,
    read_qm9pack,
    read_uncharacterized,
)
from atomnet.errors import DataFormatError
from atomnet.units import HARTREE, unit_factor

METHANE = (
    "5\n"
    "gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t0.044749\t-40.47893\t"
    "-40.476062\t-40.475117\t-40.498597\t6.469\t\n"
    "C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689\n"
    "H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921\n"
    "H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922\n"
    "H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923\n"
    "H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923\n"
    "1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078\n"
    "C\tC\t\n"
    "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4\n"
)


def make_tar(path, members: dict[str, str], mode: str = "w:bz2"):
    with tarfile.open(path, mode) as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def subset(shared_data):
    return read_qm9_tarball(shared_data / "qm9" / "qm9_subset.tar.bz2", limit=400, progress=False)


def test_methane_u0(tmp_path):
    table = read_qm9_tarball(
        make_tar(tmp_path / "m.tar.bz2", {"dsgdb9nsd_000001.xyz": METHANE}), progress=False
    )
    assert table.ids.tolist() == [1]
    assert table.properties["U0"][0] == -40.47893
    assert table.units["U0"] == "Hartree"
    assert table.properties["U0"][0] * unit_factor(table.units["U0"]) == pytest.approx(-40.47893 * HARTREE)
    assert table.numbers.tolist() == [6, 1, 1, 1, 1]
    assert table.properties["charges"].tolist() == [-0.535689, 0.133921, 0.133922, 0.133923, 0.133923]


def test_subset_matches_direct_parse(subset, shared_data):
    # gdb 10 (first member), values read by eye from dsgdb9nsd_000010.xyz
    assert subset.ids[:3].tolist() == [10, 40, 41]
    p = {k: subset.properties[k][0] for k in QM9_PROPERTIES}
    assert p["A"] == 159.03567 and p["mu"] == 3.8266 and p["alpha"] == 24.45
    assert p["homo"] == -0.3264 and p["gap"] == 0.364 and p["r2"] == 160.7223
    assert p["U0"] == -132.71815 and p["G"] == -132.742149 and p["Cv"] == 10.287
    numbers, pos = subset.molecule(0)
    assert numbers.tolist() == [6, 6, 7, 1, 1, 1]
    np.testing.assert_array_equal(pos[2], [0.017652353, -1.1445292595, -0.00420445])
    assert subset.properties["charges"][:3].tolist() == [-0.490926, 0.247402, -0.285473]
    assert set(subset.units) >= set(QM9_PROPERTIES) and subset.units == QM9_UNITS
    # an independent parse of every member of the first 400
    with tarfile.open(shared_data / "qm9" / "qm9_subset.tar.bz2") as tar:
        for m, member in zip(range(400), tar, strict=False):
            lines = tar.extractfile(member).read().decode().splitlines()
            head = lines[1].split()
            assert int(head[1]) == subset.ids[m]
            assert subset.properties["U0"][m] == float(head[12].replace("*^", "e"))
            assert subset.n_atoms[m] == int(lines[0])


def test_exponent_notation(subset):
    # 170 QM9 molecules use Mathematica exponents; all values parsed as finite floats
    assert np.isfinite(subset.positions).all()
    assert len(subset.properties["charges"]) == subset.n_atoms.sum() == len(subset.numbers)


def test_uncharacterized_list():
    ids = read_uncharacterized()
    assert len(ids) == 3054
    assert ids[:5].tolist() == [58, 61, 80, 185, 186] and ids[-1] == 133866


def test_exclude_uncharacterized(tmp_path):
    members = {
        "dsgdb9nsd_000001.xyz": METHANE,
        "dsgdb9nsd_000058.xyz": METHANE.replace("gdb 1\t", "gdb 58\t"),
    }
    path = make_tar(tmp_path / "m.tar.bz2", members)
    assert read_qm9_tarball(path, progress=False).ids.tolist() == [1, 58]
    kept = read_qm9_tarball(path, exclude_uncharacterized=True, progress=False)
    assert kept.ids.tolist() == [1] and kept.meta["excluded_uncharacterized"] == "1"
    own = tmp_path / "own.txt"
    own.write_text("# my list\n1\n")
    assert read_qm9_tarball(path, exclude_uncharacterized=own, progress=False).ids.tolist() == [58]


def test_atomrefs_match_file(shared_data):
    refs = read_qm9_atomrefs(shared_data / "qm9" / "atomref.txt")
    assert set(refs) == set(QM9_ATOMREFS)
    for key in refs:
        np.testing.assert_array_equal(refs[key], QM9_ATOMREFS[key])
    assert refs["U0"][1] == -0.500273 and refs["U0"][6] == -37.846772 and refs["Cv"][9] == 2.981


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack not installed")
def test_qm9pack_matches_tarball(subset):
    pack = read_qm9pack(limit=3000, progress=False)
    assert pack.ids[0] == 1 and pack.properties["U0"][0] == -40.47893
    assert pack.units == QM9_UNITS
    index = {int(i): k for k, i in enumerate(pack.ids)}
    common = [m for m, i in enumerate(subset.ids) if int(i) in index]
    assert len(common) > 10
    for m in common:
        k = index[int(subset.ids[m])]
        for name in QM9_PROPERTIES:
            assert pack.properties[name][k] == subset.properties[name][m], name
        np.testing.assert_array_equal(pack.molecule(k)[1], subset.molecule(m)[1])
        np.testing.assert_array_equal(pack.molecule(k)[0], subset.molecule(m)[0])


# ---------------------------------------------------------------------------------------------- broken
def _broken(tmp_path, text, name="dsgdb9nsd_000001.xyz"):
    return make_tar(tmp_path / "broken.tar.bz2", {name: text})


@pytest.mark.parametrize(
    "text, problem",
    [
        ("\n".join(METHANE.splitlines()[:4]), "truncated"),
        (METHANE.replace("5\n", "4\n", 1), "atom count mismatch"),
        (METHANE.replace("5\n", "6\n", 1), "atom count mismatch"),
        (METHANE.replace("-40.47893", "abc"), "non-numeric"),
        (METHANE.replace("1.0858041578", "nan"), "NaN/inf"),
        (METHANE.replace("0.0019761204", "inf"), "NaN/inf"),
        (METHANE.replace("H\t 1.0117", "Xx\t 1.0117"), "unknown element symbol 'Xx'"),
        ("0\n" + "\n".join(METHANE.splitlines()[1:2]), "empty molecule"),
        (METHANE.replace("gdb 1\t", ""), "17 fields"),
    ],
)
def test_broken_molecule(tmp_path, text, problem):
    with pytest.raises(DataFormatError, match=rf"broken\.tar\.bz2 \(dsgdb9nsd_000001\.xyz.*\): .*{problem}"):
        read_qm9_tarball(_broken(tmp_path, text), progress=False)


def test_line_number_in_message(tmp_path):
    with pytest.raises(DataFormatError, match=r"dsgdb9nsd_000001\.xyz, line 5\)"):
        read_qm9_tarball(_broken(tmp_path, METHANE.replace("H\t 1.0117", "Xx\t 1.0117")), progress=False)


def test_not_a_tarball(tmp_path):
    path = tmp_path / "qm9.tar.bz2"
    path.write_bytes(bz2.compress(b"hello world\n" * 10))
    with pytest.raises(DataFormatError, match=r"qm9\.tar\.bz2: not a readable tar archive"):
        read_qm9_tarball(path, progress=False)


def test_tarball_not_qm9(tmp_path):
    path = make_tar(tmp_path / "other.tar.bz2", {"README": "hi", "data/file.txt": "x"})
    with pytest.raises(DataFormatError, match=r"other\.tar\.bz2: not a QM9 tarball"):
        read_qm9_tarball(path, progress=False)
    path = make_tar(tmp_path / "qm7.tar.gz", {"qm7/0001.xyz": "3\ncharge = 0\n"}, mode="w:gz")
    with pytest.raises(DataFormatError, match=r"qm7\.tar\.gz \(qm7/0001\.xyz\): not a QM9 tarball"):
        read_qm9_tarball(path, progress=False)


def test_truncated_archive(tmp_path, shared_data):
    data = (shared_data / "qm9" / "qm9_subset.tar.bz2").read_bytes()
    path = tmp_path / "cut.tar.bz2"
    path.write_bytes(data[:500_000])  # past the first bz2 block
    with pytest.raises(
        DataFormatError, match=r"cut\.tar\.bz2: truncated or corrupt archive after member dsgdb9nsd_"
    ):
        read_qm9_tarball(path, progress=False)


def test_bad_atomref(tmp_path):
    path = tmp_path / "atomref.txt"
    path.write_text("nothing here\n")
    with pytest.raises(DataFormatError, match=r"atomref\.txt: no element rows"):
        read_qm9_atomrefs(path)
    path.write_text("   H     0.000000     -0.500273      x       -0.497912       -0.510927       2.981\n")
    with pytest.raises(DataFormatError, match=r"atomref\.txt \(line 1\): non-numeric"):
        read_qm9_atomrefs(path)


def test_qm9pack_not_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install qm9pack"):
        read_qm9pack(limit=1)


@pytest.mark.slow
def test_full_subset(shared_data):
    table = read_qm9_tarball(
        shared_data / "qm9" / "qm9_subset.tar.bz2", exclude_uncharacterized=True, progress=False
    )
    expected = np.loadtxt(shared_data / "qm9" / "qm9_subset_gdb_indices.txt", dtype=np.int64)
    assert table.n_molecules == 10_000 and sorted(table.ids.tolist()) == sorted(expected.tolist())
    assert table.meta["excluded_uncharacterized"] == "0"  # the subset comes from qm9pack, which omits them
