"""Kernel ridge regression (Rupp et al. 2012; Hansen et al. 2013) with Cholesky solves in float64.

    f(x) = b + Σ_i α_i k(x, x_i),     α = (K + λI)⁻¹ (y - b),     b = mean(y_train)

Kernels (:data:`KERNELS`): Gaussian k = exp(-‖x - x'‖₂² / (2σ²)); Laplacian k = exp(-‖x - x'‖₁ / σ).
σ is in the units of the features (e.g. Coulomb-matrix entries); λ is dimensionless (kernel values are ≤ 1).
Centering by the training mean b is our choice (qmllib fits without it); it makes λ and σ less critical.

L1 distances (the Laplacian kernel's O(n m d) step) run in C++ (``kernels/l1.cpp``: four rows against one per pass,
OpenMP over tiles of 64 rows; built once per machine by :mod:`atomnet.native`; faster than qmllib in ``docs/performance.md``);
``torch.cdist`` is used when the build fails or ``ATOMNET_NATIVE_KRR=0`` is set. Both give the same distances to
round-off (tested against a direct sum).

Memory: fitting n training points holds about three n x n float64 matrices (distances, kernel, Cholesky
factor), 24 n² bytes: 0.78 GB for n = 5,700, 2.4 GB for n = 10,000, 24 GB for n = 32,000. Too large a
problem fails *before* allocating with :class:`KernelTooLargeError` (limit: ``max_memory_gb`` or 80 % of the
available memory). Prediction evaluates the test-train kernel in row blocks of at most ``block_gb``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atomnet.errors import AtomNetError
from atomnet.files import atomic_output
from atomnet.native import NativeExtension

BYTES = 8  # float64
#: L1 distances in C++ (register-blocked, OpenMP); ``torch.cdist(p=1)`` when it cannot be built
L1_EXTENSION = NativeExtension(
    "l1",
    Path(__file__).with_name("kernels") / "l1.cpp",
    "KRR L1 distance kernel",
    switch="ATOMNET_NATIVE_KRR",
)


class KernelTooLargeError(AtomNetError, MemoryError):
    """A kernel matrix would not fit into the memory limit."""


class KRRError(AtomNetError, ValueError):
    """Bad input to kernel ridge regression (shapes, NaN, unfitted model, failed factorisation)."""


# ---------------------------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class Kernel:
    """k(x, y) = transform(distance(x, y), σ). Splitting the two lets CV reuse one distance matrix."""

    name: str
    norm: str  #: "l1" (Manhattan) or "sqeuclidean"

    def distance(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """(n, d), (m, d) -> (n, m) L1 or squared-L2 distances, float64."""
        if self.norm == "l1":
            native = L1_EXTENSION.load()
            return native.l1_distance(X, Y) if native is not None else torch.cdist(X, Y, p=1.0)
        D = torch.cdist(X, Y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
        return D.square_()

    def self_distance(self, X: torch.Tensor, block: int = 256) -> torch.Tensor:
        """(n, d) -> symmetric (n, n) distances among the rows of X, computing each pair once.

        Row blocks i <= j go through :meth:`distance` and are mirrored into place: about half the work of
        ``distance(X, X)`` for the O(n² d) step that dominates a fit.
        """
        n = X.shape[0]
        D = torch.empty((n, n), dtype=X.dtype)
        for i in range(0, n, block):
            D[i : i + block, i:] = self.distance(X[i : i + block], X[i:])
            D[i + block :, i : i + block] = D[i : i + block, i + block :].T
        return D

    def transform(self, D: torch.Tensor, sigma: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """Kernel values from distances (``out=D`` works in place)."""
        scale = -1.0 / sigma if self.norm == "l1" else -1.0 / (2.0 * sigma * sigma)
        out = torch.empty_like(D) if out is None else out
        return torch.mul(D, scale, out=out).exp_()

    def __call__(self, X: np.ndarray, Y: np.ndarray, sigma: float) -> np.ndarray:
        """Kernel matrix (n, m) of feature arrays X (n, d) and Y (m, d), float64."""
        D = self.distance(_as_tensor(X), _as_tensor(Y))
        return self.transform(D, sigma, out=D).numpy()


#: Kernel registry: name -> callable ``k(X, Y, sigma) -> (n, m)``. Adding a kernel is one entry.
KERNELS: dict[str, Kernel] = {
    "gaussian": Kernel("gaussian", "sqeuclidean"),
    "laplacian": Kernel("laplacian", "l1"),
}


def get_kernel(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise KRRError(f"unknown kernel {name!r}; choose from {sorted(KERNELS)}") from None


def kernel_matrix(X: np.ndarray, Y: np.ndarray, kernel: str = "laplacian", sigma: float = 1.0) -> np.ndarray:
    """(n, m) kernel matrix between rows of X (n, d) and Y (m, d)."""
    return get_kernel(kernel)(X, Y, sigma)


def _as_tensor(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float64))


# ---------------------------------------------------------------------------------------------- memory
def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (GB); falls back to total physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def check_memory(n_bytes: float, max_memory_gb: float | None, what: str) -> None:
    """Raise :class:`KernelTooLargeError` if ``n_bytes`` exceeds the limit (default 80 % of available)."""
    limit = 0.8 * available_memory_gb() if max_memory_gb is None else float(max_memory_gb)
    if n_bytes > limit * 1e9:
        raise KernelTooLargeError(
            f"{what} needs about {n_bytes / 1e9:.2f} GB but the limit is {limit:.2f} GB "
            f"({'max_memory_gb' if max_memory_gb is not None else '80% of available memory'}); "
            "use fewer training molecules or raise max_memory_gb"
        )


# ---------------------------------------------------------------------------------------------- solver
def _check_xy(X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise KRRError(f"features must be a non-empty (n_samples, n_features) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise KRRError(f"features contain NaN/inf (row {int(np.flatnonzero(~np.isfinite(X).all(1))[0])})")
    if y is None:
        return X, None
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (len(X),):
        raise KRRError(f"targets must have shape ({len(X)},), got {y.shape}")
    if not np.isfinite(y).all():
        raise KRRError(f"targets contain NaN/inf (index {int(np.flatnonzero(~np.isfinite(y))[0])})")
    return X, y


def _cholesky_solve(K: torch.Tensor, y: torch.Tensor, lam: float, overwrite: bool = False) -> torch.Tensor:
    """Solve (K + λI) α = y by Cholesky (K is not modified unless ``overwrite``: then it holds the factor)."""
    A = K if overwrite else K.clone()
    A.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(A, out=(A, torch.empty((), dtype=torch.int32)))
    if int(info) != 0:
        raise KRRError(
            f"K + lambda*I is not positive definite (lambda={lam:g}, failed at pivot {int(info)}); "
            "increase lambda or check for duplicate training points"
        )
    del A
    # two triangular solves: 10x faster than torch.cholesky_solve for one right-hand side
    z = torch.linalg.solve_triangular(L, y[:, None], upper=False)
    return torch.linalg.solve_triangular(L.mT, z, upper=True)[:, 0]


class KernelRidge:
    """Kernel ridge regression with a scikit-learn-like API.

    Args:
        kernel: name in :data:`KERNELS` (``"laplacian"`` or ``"gaussian"``).
        sigma: kernel width σ (feature units).
        lam: ridge regulariser λ added to the kernel diagonal.
        max_memory_gb: memory limit for the training kernel (default 80 % of available memory).
        block_gb: memory per prediction block (test rows x training rows x 8 bytes x 2).

    Attributes after :meth:`fit`: ``X_train_`` (n, d), ``alpha_`` (n,), ``intercept_`` (float, target units),
    ``fit_seconds_``.
    """

    def __init__(
        self,
        kernel: str = "laplacian",
        sigma: float = 1.0,
        lam: float = 1e-8,
        max_memory_gb: float | None = None,
        block_gb: float = 0.25,
    ):
        get_kernel(kernel)
        if not sigma > 0 or not lam >= 0:
            raise KRRError(f"need sigma > 0 and lambda >= 0, got sigma={sigma}, lambda={lam}")
        self.kernel = kernel
        self.sigma = float(sigma)
        self.lam = float(lam)
        self.max_memory_gb = max_memory_gb
        self.block_gb = block_gb

    def fit(self, X: np.ndarray, y: np.ndarray) -> KernelRidge:
        """Fit on features X (n, d) and targets y (n,)."""
        import time

        X, y = _check_xy(X, y)
        check_memory(3 * len(X) ** 2 * BYTES, self.max_memory_gb, f"a {len(X)} x {len(X)} training kernel")
        t0 = time.perf_counter()
        k = get_kernel(self.kernel)
        Xt = _as_tensor(X)
        K = k.self_distance(Xt)
        k.transform(K, self.sigma, out=K)
        self.intercept_ = float(y.mean())
        alpha = _cholesky_solve(K, torch.as_tensor(y - self.intercept_), self.lam, overwrite=True)
        self.X_train_ = X
        self.alpha_ = alpha.numpy()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions (m,) for features X (m, d), computing the kernel in row blocks."""
        if not hasattr(self, "alpha_"):
            raise KRRError("model is not fitted; call fit() first")
        X, _ = _check_xy(X)
        if X.shape[1] != self.X_train_.shape[1]:
            raise KRRError(
                f"features have {X.shape[1]} columns, the model was fitted on {self.X_train_.shape[1]}"
            )
        k = get_kernel(self.kernel)
        Xtr, alpha = _as_tensor(self.X_train_), torch.as_tensor(self.alpha_)
        n = len(Xtr)
        block = max(1, int(self.block_gb * 1e9 / (2 * n * BYTES)))
        check_memory(2 * min(block, len(X)) * n * BYTES, self.max_memory_gb, "a prediction kernel block")
        out = np.empty(len(X))
        Xt = _as_tensor(X)
        for start in range(0, len(X), block):
            D = k.distance(Xt[start : start + block], Xtr)
            out[start : start + block] = (k.transform(D, self.sigma, out=D) @ alpha).numpy()
        return out + self.intercept_

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Coefficient of determination R² of the predictions (as scikit-learn)."""
        _, y = _check_xy(X, y)
        resid = y - self.predict(X)
        return float(1.0 - (resid @ resid) / ((y - y.mean()) @ (y - y.mean())))

    def save(self, path: str | Path) -> None:
        """Save to ``.npz`` (training features, α, intercept, hyperparameters), written atomically."""
        if not hasattr(self, "alpha_"):
            raise KRRError("model is not fitted; nothing to save")
        path = Path(path)
        meta = {"kernel": self.kernel, "sigma": self.sigma, "lam": self.lam, "intercept": self.intercept_}
        with atomic_output(path, ".npz") as tmp:
            np.savez(tmp, X_train=self.X_train_, alpha=self.alpha_, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> KernelRidge:
        """Load a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            model = cls(meta["kernel"], meta["sigma"], meta["lam"], **kwargs)
            model.X_train_, model.alpha_ = f["X_train"], f["alpha"]
        model.intercept_ = float(meta["intercept"])
        return model


def errors(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """{"mae", "rmse"} in the units of y."""
    d = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return {"mae": float(np.abs(d).mean()), "rmse": float(np.sqrt((d * d).mean()))}


# ---------------------------------------------------------------------------------------------- CV
@dataclass
class CVResult:
    """Grid-search outcome: ``mae[i, j]`` = mean validation MAE of (sigmas[i], lams[j]) over the folds."""

    sigmas: np.ndarray
    lams: np.ndarray
    mae: np.ndarray
    sigma: float
    lam: float


def kfold_indices(n: int, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold (train, validation) index pairs over range(n)."""
    if not 2 <= folds <= n:
        raise KRRError(f"need 2 <= folds <= n_samples, got folds={folds}, n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, folds)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(parts[i])) for i in range(folds)]


def default_sigmas(X: np.ndarray, kernel: str, n: int = 7, seed: int = 0) -> np.ndarray:
    """σ grid spread around the median pairwise distance of (up to 500 rows of) X.

    Laplacian: median L1 distance x 2^(0 ... n-1); Gaussian: median L2 distance x 2^(-1 ... n-2).
    (On QM7 sorted-CM/Laplacian the best σ is ~8x the median, eigenvalue-CM/Gaussian ~2-4x.)
    """
    X = np.asarray(X, dtype=np.float64)
    rows = np.random.default_rng(seed).permutation(len(X))[:500]
    D = get_kernel(kernel).distance(_as_tensor(X[rows]), _as_tensor(X[rows])).numpy()
    med = float(np.median(D[np.triu_indices(len(rows), 1)])) if len(rows) > 1 else 1.0
    if kernel == "gaussian":
        med = np.sqrt(med)
        return max(med, 1e-12) * 2.0 ** np.arange(-1, n - 1)
    return max(med, 1e-12) * 2.0 ** np.arange(0, n)


DEFAULT_LAMS = (1e-9, 1e-6, 1e-3)


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    kernel: str = "laplacian",
    sigmas: Sequence[float] | None = None,
    lams: Sequence[float] = DEFAULT_LAMS,
    folds: int = 5,
    seed: int = 0,
    max_memory_gb: float | None = None,
    progress: bool = False,
) -> CVResult:
    """Grid search over (σ, λ) by k-fold CV on (X, y) only, minimising the mean validation MAE.

    The distance matrix of X is computed once and reused for every σ, fold and λ.
    Pass only *training* data: the test set must not influence the choice.
    """
    X, y = _check_xy(X, y)
    n = len(X)
    check_memory(4 * n * n * BYTES, max_memory_gb, f"cross-validation on {n} samples")
    k = get_kernel(kernel)
    sigmas = default_sigmas(X, kernel) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    lams = np.sort(np.asarray(lams, dtype=np.float64))
    splits = kfold_indices(n, folds, seed)
    Xt = _as_tensor(X)
    D = k.self_distance(Xt)
    yt = torch.as_tensor(y)
    mae = np.zeros((len(sigmas), len(lams)))
    steps = [(i, f) for i in range(len(sigmas)) for f in range(folds)]
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"CV {kernel} n={n}", leave=False)
    K = torch.empty_like(D)
    for i, f in steps:
        if f == 0:
            k.transform(D, float(sigmas[i]), out=K)
        tr, va = (torch.as_tensor(s) for s in splits[f])
        Ktr = K[tr][:, tr]
        Kva = K[va][:, tr]
        b = yt[tr].mean()
        for j, lam in enumerate(lams):
            try:
                alpha = _cholesky_solve(Ktr, yt[tr] - b, float(lam))
            except KRRError:
                mae[i, j] += np.inf
                continue
            mae[i, j] += float((Kva @ alpha + b - yt[va]).abs().mean()) / folds
    if not np.isfinite(mae).any():
        raise KRRError("every (sigma, lambda) pair failed the Cholesky factorisation; use larger lambdas")
    i, j = np.unravel_index(np.argmin(mae), mae.shape)
    return CVResult(sigmas=sigmas, lams=lams, mae=mae, sigma=float(sigmas[i]), lam=float(lams[j]))


def fit_cv(
    X: np.ndarray,
    y: np.ndarray,
    kernel: str = "laplacian",
    sigmas: Sequence[float] | None = None,
    lams: Sequence[float] = DEFAULT_LAMS,
    folds: int = 5,
    seed: int = 0,
    max_memory_gb: float | None = None,
    progress: bool = False,
) -> tuple[KernelRidge, CVResult]:
    """:func:`cross_validate` on (X, y), then fit a :class:`KernelRidge` with the best (σ, λ) on all of it."""
    cv = cross_validate(X, y, kernel, sigmas, lams, folds, seed, max_memory_gb, progress)
    model = KernelRidge(kernel, cv.sigma, cv.lam, max_memory_gb=max_memory_gb).fit(X, y)
    return model, cv
