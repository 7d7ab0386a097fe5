"""The result of explaining one molecule: :class:`Explanation`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Explanation:
    """Atom relevance of one molecule's predicted energy under one method.

    Attributes:
        method: registered method name (:func:`atomnet.explain.list_methods`).
        params: the method's parameters as used (defaults filled in).
        energy: the model's prediction, eV.
        relevance: (n_atoms,) in input atom order; ``units`` says in what (eV for conserving methods).
        unexplained: eV, what a conserving method does not put on atoms (biases, ε-stabilisers, reference
            energies; the baseline energy for integrated gradients): Σ relevance + unexplained = energy.
            ``None`` for methods that make no such promise (gradients, SmoothGrad).
        reference: (n_atoms,) eV, the per-atom constants mean + atomref[Z_i] that the output
            standardisation adds, reported apart from learned relevance (part of ``unexplained``).
        units: unit of ``relevance``.
        numbers: (n_atoms,) atomic numbers; positions: (n_atoms, 3) Å (for pictures).
        absorbed: eV per module name: the relevance each module did not pass on (LRP), whose sum is
            ``unexplained``.
        features: for a network on a feature vector (CMNet), the relevance of each input entry (d,) (the
            "pixels": Coulomb-matrix entries in sorted order), ``None`` otherwise; feature_atoms (d, 2): the
            atoms (indices in this molecule) each entry belongs to, −1 none (diagonal: second; padding: both).
            ``relevance`` is ``features`` mapped to atoms: M_ij half to i and half to j, M_ii to i.
    """

    method: str
    params: dict
    energy: float
    relevance: np.ndarray
    unexplained: float | None
    reference: np.ndarray
    units: str
    numbers: np.ndarray
    positions: np.ndarray
    absorbed: dict[str, float] = field(default_factory=dict)
    features: np.ndarray | None = None
    feature_atoms: np.ndarray | None = None

    @property
    def conserving(self) -> bool:
        return self.unexplained is not None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field (arrays as lists)."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "energy": float(self.energy),
            "relevance": np.asarray(self.relevance, dtype=float).tolist(),
            "unexplained": None if self.unexplained is None else float(self.unexplained),
            "reference": np.asarray(self.reference, dtype=float).tolist(),
            "units": self.units,
            "numbers": np.asarray(self.numbers).astype(int).tolist(),
            "positions": np.asarray(self.positions, dtype=float).tolist(),
            "absorbed": {k: float(v) for k, v in self.absorbed.items()},
        } | (
            {}
            if self.features is None
            else {
                "features": np.asarray(self.features, dtype=float).tolist(),
                "feature_atoms": np.asarray(self.feature_atoms).astype(int).tolist(),
            }
        )

    def to_json(self, **kwargs) -> str:
        """The fields as a JSON string (``json.dumps`` keyword arguments pass through)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> Explanation:
        return cls(
            method=d["method"],
            params=dict(d["params"]),
            energy=float(d["energy"]),
            relevance=np.asarray(d["relevance"], dtype=float),
            unexplained=d["unexplained"],
            reference=np.asarray(d["reference"], dtype=float),
            units=d["units"],
            numbers=np.asarray(d["numbers"], dtype=int),
            positions=np.asarray(d["positions"], dtype=float).reshape(-1, 3),
            absorbed=dict(d.get("absorbed", {})),
            features=None if d.get("features") is None else np.asarray(d["features"], dtype=float),
            feature_atoms=None
            if d.get("feature_atoms") is None
            else np.asarray(d["feature_atoms"], dtype=int),
        )
