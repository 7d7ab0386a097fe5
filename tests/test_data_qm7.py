"""QM7 reader: the real shared files and broken copies made in tmp_path."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from atomnet.data.qm7 import read_qm7
from atomnet.errors import DataFormatError

METHANE = "5\ncharge = 0\n C 1.04 -0.05 -0.07\n H 2.13 -0.05 -0.07\n H 0.67 0.17 -1.07\n H 0.67 0.69 0.62\n H 0.67 -1.03 0.22\n"


def make_qm7(tmp_path, files: dict[str, str], hof: str):
    tar_path = tmp_path / "qm7.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"qm7/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "hof_qm7.txt").write_text(hof)
    return tar_path


def test_real_qm7(shared_data):
    table = read_qm7(shared_data / "qm7" / "qm7.tar.gz", shared_data / "qm7" / "hof_qm7.txt")
    assert table.n_molecules == 7101
    assert table.units["energy"] == "kcal/mol"
    e = table.properties["energy"]
    assert e[0] == pytest.approx(-417.031) and e[1] == pytest.approx(-711.117)  # hof column 2
    assert e.min() == pytest.approx(-2188.25) and e.max() == pytest.approx(-403.695)
    assert set(np.unique(table.numbers)) == {1, 6, 7, 8, 16}
    assert table.n_atoms.max() == 23 and table.ids[0] == 1 and np.all(np.diff(table.ids) > 0)
    z, r = table.molecule(0)
    assert list(z) == [6, 1, 1, 1, 1]
    assert np.linalg.norm(r[1] - r[0]) == pytest.approx(1.089, abs=1e-3)  # C-H bond in Å


def test_small_and_default_hof(tmp_path):
    tar = make_qm7(
        tmp_path, {"0001.xyz": METHANE, "0002.xyz": METHANE}, "0001.xyz -417.0 -1\n0002.xyz -1.5 2\n"
    )
    table = read_qm7(tar)  # hof_qm7.txt next to the tarball
    assert table.n_molecules == 2 and list(table.properties["energy"]) == [-417.0, -1.5]
    assert read_qm7(tar, limit=1).n_molecules == 1


@pytest.mark.parametrize(
    "text, hof, match",
    [
        ("5\ncharge = 0\n C 1 2 3\n H 1 2 4\n", None, "header says 5 atoms but the file has 2"),
        (METHANE.replace(" H 2.13", " Xx 2.13"), None, "unknown element 'Xx'"),
        (METHANE.replace("-0.05 -0.07\n H 2.13", "abc -0.07\n H 2.13"), None, "non-numeric coordinate"),
        (METHANE.replace("2.13", "nan"), None, "non-finite coordinate"),
        ("", None, "empty file"),
        ("five\ncharge = 0\n", None, "expected the number of atoms"),
        (METHANE, "0002.xyz -1 -1\n", "no energy entry for molecule 0001.xyz"),
        (METHANE, "0001.xyz abc -1\n", "energy 'abc' is not a number"),
        (METHANE, "0001.xyz nan -1\n", "not finite"),
    ],
)
def test_broken_input(tmp_path, text, hof, match):
    tar = make_qm7(tmp_path, {"0001.xyz": text}, hof or "0001.xyz -1 -1\n")
    with pytest.raises(DataFormatError, match=match) as info:
        read_qm7(tar)
    assert "0001.xyz" in str(info.value) or "hof_qm7.txt" in str(info.value)


def test_truncated_archive(tmp_path):
    tar = make_qm7(tmp_path, {f"{i:04d}.xyz": METHANE for i in range(1, 200)}, "")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="qm7.tar.gz"):
        read_qm7(tar)
