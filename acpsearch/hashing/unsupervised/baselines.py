"""The standard unsupervised baselines on features: LSH, PCAH, ITQ (linear hashers) and BiHalf.

All take training features (n, d) (anything with more dimensions is flattened) and return a hasher
whose ``encode(x)`` gives +-1 float32 codes (n, bits), sign with 0 -> +1.

- LSH: Gaussian random projections of the centred features (Charikar 2002).
- PCAH: the top ``bits`` principal directions (sklearn PCA), sign of the projections.
- ITQ: PCAH followed by an orthogonal rotation that minimises the quantisation error, found by
  alternating sign and orthogonal Procrustes (Gong & Lazebnik 2011); 50 iterations.
- BiHalf (Li & van Gemert 2021): see ``bihalf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA

from acpsearch.errors import DataError, SpecError

BASELINE_NAMES = ("lsh", "pcah", "itq", "bihalf")


def flat_features(x: np.ndarray, where: str = "features") -> np.ndarray:
    """(n, d) float64 view of features or images; one DataError line for an empty array."""
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise DataError(f"{where}: need a non-empty (n, d) array, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr.reshape(arr.shape[0], -1), dtype=np.float64)


def to_codes(h: np.ndarray) -> np.ndarray:
    """+-1 float32 codes from real values (0 -> +1)."""
    return np.where(h >= 0, 1.0, -1.0).astype(np.float32)


@dataclass
class LinearHasher:
    """codes = sign((x - mean) @ projection)."""

    name: str
    mean: np.ndarray
    projection: np.ndarray

    @property
    def bits(self) -> int:
        return int(self.projection.shape[1])

    def encode(self, x: np.ndarray) -> np.ndarray:
        flat = flat_features(x)
        if flat.shape[1] != self.mean.shape[0]:
            raise DataError(f"{self.name}: features have {flat.shape[1]} dimensions, fitted on {self.mean.shape[0]}")
        return to_codes((flat - self.mean) @ self.projection)


def _check_bits(bits: int, limit: int | None, name: str) -> None:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits < 1:
        raise SpecError(f"{name}: bits must be a positive integer, got {bits!r}")
    if limit is not None and bits > limit:
        raise SpecError(f"{name}: {bits} bits exceed the {limit} principal directions the training features have")


def fit_lsh(x: np.ndarray, bits: int, seed: int = 0) -> LinearHasher:
    """Random Gaussian hyperplanes through the training mean."""
    _check_bits(bits, None, "lsh")
    flat = flat_features(x)
    rng = np.random.default_rng(seed)
    return LinearHasher("lsh", flat.mean(0), rng.standard_normal((flat.shape[1], bits)))


def _pca(flat: np.ndarray, bits: int, name: str, seed: int) -> PCA:
    _check_bits(bits, min(flat.shape), name)
    return PCA(n_components=bits, random_state=seed).fit(flat)


def fit_pcah(x: np.ndarray, bits: int, seed: int = 0) -> LinearHasher:
    """Top principal directions."""
    flat = flat_features(x)
    pca = _pca(flat, bits, "pcah", seed)
    return LinearHasher("pcah", pca.mean_, pca.components_.T.copy())


def fit_itq(x: np.ndarray, bits: int, seed: int = 0, iterations: int = 50) -> LinearHasher:
    """PCA, then a rotation R minimising ||B - V R||_F alternately over B = sign(V R) and R."""
    flat = flat_features(x)
    pca = _pca(flat, bits, "itq", seed)
    v = pca.transform(flat)
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        r, _ = orthogonal_procrustes(v, b)  # argmin_R ||V R - B||, R orthogonal
    return LinearHasher("itq", pca.mean_, pca.components_.T @ r)
