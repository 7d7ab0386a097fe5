"""Kernel ridge regression: kernels vs brute force, synthetic fits, CV, memory limit, save/load, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atomnet.baselines.krr import (
    KERNELS,
    KernelRidge,
    KernelTooLargeError,
    KRRError,
    cross_validate,
    fit_cv,
    kernel_matrix,
)
from atomnet.cli import main


def brute_force(X, Y, kernel, sigma):
    K = np.zeros((len(X), len(Y)))
    for i in range(len(X)):
        for j in range(len(Y)):
            d = X[i] - Y[j]
            if kernel == "gaussian":
                K[i, j] = np.exp(-(d @ d) / (2 * sigma**2))
            else:
                K[i, j] = np.exp(-np.abs(d).sum() / sigma)
    return K


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernel_against_double_loop(kernel):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    np.testing.assert_allclose(kernel_matrix(X, Y, kernel, 1.7), brute_force(X, Y, kernel, 1.7), rtol=1e-12)
    np.testing.assert_allclose(KERNELS[kernel](X, X, 0.9).diagonal(), 1.0)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_symmetric_blocked_distances_equal_full(kernel):
    """self_distance (each pair once, mirrored) = distance(X, X), for a size that is no multiple of the block."""
    import torch

    X = torch.as_tensor(np.random.default_rng(2).normal(size=(23, 5)))
    k = KERNELS[kernel]
    full, sym = k.distance(X, X), k.self_distance(X, block=7)
    assert torch.equal(sym, sym.T)
    torch.testing.assert_close(sym, full, rtol=1e-13, atol=1e-12)


def smooth(X):
    return np.sin(2 * X[:, 0]) + 0.5 * np.cos(X[:, 1]) + 3.0


@pytest.mark.parametrize("kernel, sigma, tol", [("gaussian", 0.7, 2e-3), ("laplacian", 3.0, 0.05)])
def test_recovers_smooth_function(kernel, sigma, tol):
    rng = np.random.default_rng(1)
    X, Xt = rng.uniform(-2, 2, size=(600, 2)), rng.uniform(-1.8, 1.8, size=(200, 2))
    model = KernelRidge(kernel, sigma, 1e-8).fit(X, smooth(X))
    err = np.abs(model.predict(Xt) - smooth(Xt)).mean()
    assert err < tol
    assert model.score(Xt, smooth(Xt)) > 0.99


def test_blocked_prediction_equals_direct():
    rng = np.random.default_rng(2)
    X, Xt = rng.normal(size=(50, 3)), rng.normal(size=(37, 3))
    y = smooth(X)
    big = KernelRidge("laplacian", 2.0, 1e-6).fit(X, y)
    tiny = KernelRidge("laplacian", 2.0, 1e-6, block_gb=50 * 8 * 2 * 4 / 1e9).fit(X, y)  # 4 rows per block
    direct = kernel_matrix(Xt, X, "laplacian", 2.0) @ big.alpha_ + big.intercept_
    np.testing.assert_allclose(big.predict(Xt), direct, rtol=1e-12)
    np.testing.assert_allclose(tiny.predict(Xt), direct, rtol=1e-12)


def test_cv_picks_sensible_lambda():
    rng = np.random.default_rng(3)
    X = rng.uniform(-2, 2, size=(300, 1))
    y = np.sin(3 * X[:, 0])
    noisy = y + rng.normal(scale=0.3, size=len(y))
    lams = [1e-8, 1e-1, 1e3]
    cv = cross_validate(X, noisy, "gaussian", sigmas=[0.3], lams=lams, folds=5)
    assert cv.lam == 1e-1  # noise needs regularisation, 1e3 washes the signal out
    assert cv.mae.shape == (1, 3) and np.argmin(cv.mae[0]) == 1
    cv_clean = cross_validate(X, y, "gaussian", sigmas=[0.03, 0.3, 30.0], lams=[1e-8, 1.0], folds=4)
    assert cv_clean.sigma == 0.3 and cv_clean.lam == 1e-8
    model, cv2 = fit_cv(X, y, "gaussian", sigmas=[0.3], lams=[1e-8], folds=3)
    assert model.sigma == 0.3 and np.abs(model.predict(X) - y).max() < 1e-3


def test_memory_limit_fails_early():
    X = np.zeros((20_000, 1))
    with pytest.raises(KernelTooLargeError, match="20000 x 20000 training kernel needs about 9.60 GB"):
        KernelRidge("laplacian", 1.0, 1e-8, max_memory_gb=1.0).fit(X, np.zeros(20_000))
    with pytest.raises(KernelTooLargeError, match="cross-validation"):
        cross_validate(X, np.zeros(20_000), "laplacian", [1.0], [1e-8], max_memory_gb=1.0)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    X, Xt = rng.normal(size=(40, 3)), rng.normal(size=(10, 3))
    model = KernelRidge("gaussian", 1.3, 1e-7).fit(X, smooth(X))
    model.save(tmp_path / "m.npz")
    loaded = KernelRidge.load(tmp_path / "m.npz")
    assert (loaded.kernel, loaded.sigma, loaded.lam) == ("gaussian", 1.3, 1e-7)
    np.testing.assert_array_equal(loaded.predict(Xt), model.predict(Xt))


def test_bad_input():
    with pytest.raises(KRRError, match="unknown kernel 'cosine'"):
        KernelRidge("cosine")
    with pytest.raises(KRRError, match="not fitted"):
        KernelRidge().predict(np.zeros((2, 2)))
    with pytest.raises(KRRError, match="NaN"):
        KernelRidge().fit(np.array([[0.0], [np.nan]]), np.zeros(2))
    with pytest.raises(KRRError, match=r"targets must have shape \(2,\)"):
        KernelRidge().fit(np.zeros((2, 1)), np.zeros(3))
    model = KernelRidge("gaussian", 1.0, 0.0).fit(np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))
    with pytest.raises(KRRError, match="features have 2 columns"):
        model.predict(np.zeros((1, 2)))
    with pytest.raises(KRRError, match="not positive definite"):
        KernelRidge("gaussian", 1.0, 0.0).fit(np.zeros((3, 1)), np.arange(3.0))  # duplicate points, λ=0


def test_cli_tiny_qm7(shared_data, tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "curve.png"
    argv = ["krr", str(shared_data / "qm7" / "qm7.tar.gz"), "--limit", "400", "--train-sizes", "100,200",
            "--test-size", "100", "--cv-folds", "3", "--sigmas", "1000,4000", "--lambdas", "1e-8", "--json", str(out), "--plot", str(png), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["units"]["mae"] == "kcal/mol"
    assert set(data) >= {"100", "200", "units", "settings"}
    for n in ("100", "200"):
        assert set(data[n]) >= {"mae", "rmse", "sigma", "lambda", "fit_seconds"}
        assert 1.0 < data[n]["mae"] < 100.0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "MAE" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_cli_errors(shared_data, tmp_path, capsys):
    tar = str(shared_data / "qm7" / "qm7.tar.gz")
    assert main(["krr", tar, "--limit", "50", "--train-sizes", "100", "--no-progress"]) == 2
    assert "need 100 training" in capsys.readouterr().err
    assert main(["krr", str(tmp_path / "missing.tar.gz")]) == 2


def test_cli_store_and_split(shared_data, tmp_path):
    """An HDF5 store (energies in eV) and a shared split file give the same errors in kcal/mol as the tarball."""
    from atomnet.data.qm7 import read_qm7
    from atomnet.data.splits import random_split, save_split
    from atomnet.data.store import write_store

    tar = shared_data / "qm7" / "qm7.tar.gz"
    write_store(read_qm7(tar, limit=300), tmp_path / "qm7.h5", progress=False)
    save_split(tmp_path / "split.npz", random_split(300, (200, 20, 80), seed=1))
    results = []
    for data in (tmp_path / "qm7.h5", tar):
        out = tmp_path / f"{data.suffix}.json"
        argv = ["krr", str(data), "--limit", "300", "--split", str(tmp_path / "split.npz"), "--train-sizes", "150",
                "--cv-folds", "3", "--sigmas", "3000", "--lambdas", "1e-8", "--json", str(out), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["settings"]["test_size"] == 80
    # not identical: the store keeps float32 positions, and row-norm sorting of symmetry-equivalent atoms
    # (equal norms) is decided by rounding, so a few sorted matrices differ in atom order
    assert results[0]["150"]["mae"] == pytest.approx(results[1]["150"]["mae"], rel=0.05)


def test_native_l1_distances_equal_a_direct_sum_for_any_threads():
    """The C++ L1 kernel (4-row register blocks, 64-row tiles over threads) equals Σ_k |x_k − y_k| written out,
    for row counts that are no multiple of 4 or 64, float64 and float32, and gives the same bits on 1 and 2
    threads (each distance is one sum whatever the thread count)."""
    import torch

    from atomnet.baselines.krr import L1_EXTENSION

    native = L1_EXTENSION.load()
    if not L1_EXTENSION.enabled():
        pytest.skip("ATOMNET_NATIVE_KRR=0 is set")
    assert native is not None, "the KRR L1 kernel did not build (see the warning above)"
    g = torch.Generator().manual_seed(0)
    for n, m, d in ((7, 131, 276), (1, 1, 1), (9, 65, 37)):
        X, Y = (
            torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(m, d, generator=g, dtype=torch.float64),
        )
        direct = (X[:, None, :] - Y[None, :, :]).abs().sum(-1)
        torch.testing.assert_close(native.l1_distance(X, Y), direct, rtol=1e-13, atol=0)
        torch.testing.assert_close(
            native.l1_distance(X.float(), Y.float()), direct.float(), rtol=1e-5, atol=0
        )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.l1_distance(X, Y)
        torch.set_num_threads(2)
        assert torch.equal(one, native.l1_distance(X, Y))
    finally:
        torch.set_num_threads(threads)


def test_l1_kernel_without_the_native_build_uses_cdist(tmp_path, monkeypatch):
    """A failed build warns once and the Laplacian kernel still equals the double loop (torch.cdist)."""
    from torch.utils import cpp_extension

    from atomnet.baselines.krr import L1_EXTENSION

    monkeypatch.setenv("ATOMNET_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(L1_EXTENSION, "state", {})

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'atomnet_l1': g++ not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(6, 5)), rng.normal(size=(3, 5))
    with pytest.warns(RuntimeWarning, match="KRR L1 distance kernel could not be built .*g\\+\\+ not found"):
        K = kernel_matrix(X, Y, "laplacian", 1.3)
    np.testing.assert_allclose(K, brute_force(X, Y, "laplacian", 1.3), rtol=1e-12)
    assert (L1_EXTENSION.kernel_dir() / "FAILED").is_file()
