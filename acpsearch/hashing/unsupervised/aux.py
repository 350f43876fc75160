"""Label-free auxiliary semantics: the "tags" LAGNH's attention and tag graph read.

The paper takes object tags from a detector (or user tags); no detector is available offline, and
tags derived from labels would leak them. Three substitutes, each fitted on the *training* split
only and applied unchanged to queries and database (so evaluation reproduces them from a stored
state):

- ``kmeans`` (default): multi-granularity cluster membership. PCA of the features (fitted on the
  training split), then k-means with k in ``granularities`` (default 10, 20, 40); the tag vector is
  the concatenation of the one-hot memberships (multi-hot, ``sum(granularities)`` wide).
- ``bovw``: bag of visual words. Non-overlapping ``patch`` x ``patch`` patches of the images,
  k-means ``words`` visual words; the tag vector marks the words present in the image. Needs images
  ``(n, C, H, W)`` or ``(n, H, W)``, not flat features.
- ``file``: the user's own tags (a detector's or a tagger's), read with ``read_tag_file``; a 0/1
  matrix ``(n, c)`` whose rows follow the data set's order.

``AuxSemantics.state_dict()`` holds only tensors, ints, floats, strings and lists, so it can be
stored in a checkpoint read with ``torch.load(weights_only=True)``; ``AuxSemantics.from_state``
rebuilds it bit-identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from acpsearch.errors import DataError, SpecError

AUX_METHODS = ("kmeans", "bovw", "file")
DEFAULT_GRANULARITIES = (10, 20, 40)
_PCA_DIMS = 50
_BOVW_MAX_PATCHES = 20_000


@dataclass
class AuxSemantics:
    """Fitted auxiliary semantics; ``transform`` maps features (or images) to 0/1 tag vectors."""

    method: str
    n_tags: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    def transform(self, features: np.ndarray | None, tags: np.ndarray | None = None) -> np.ndarray:
        """Tag vectors (n, n_tags) float32 in {0, 1}. For ``file`` the tags themselves are passed
        (checked for width and values); for ``kmeans`` features (n, ...); for ``bovw`` images."""
        if self.method == "file":
            if tags is None:
                raise SpecError("aux: method 'file' takes its tags from the tag file; pass tags=")
            return check_tags(np.asarray(tags), None, "aux tags", n_tags=self.n_tags)
        if features is None:
            raise SpecError(f"aux: method {self.method!r} needs the features to compute tags")
        if self.method == "kmeans":
            return _kmeans_tags(self, np.asarray(features))
        return _bovw_tags(self, np.asarray(features))

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint-safe dict (tensors, ints, strings) that ``from_state`` rebuilds exactly."""
        return {
            "method": self.method,
            "n_tags": int(self.n_tags),
            "params": {k: int(v) for k, v in self.params.items()},
            "arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AuxSemantics:
        """Rebuild from ``state_dict()``; a damaged state is one DataError line."""
        try:
            method = str(state["method"])
            n_tags = int(state["n_tags"])
            params = {str(k): int(v) for k, v in dict(state.get("params", {})).items()}
            arrays = {str(k): _to_numpy(v) for k, v in dict(state.get("arrays", {})).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"aux state: damaged ({exc})") from None
        if method not in AUX_METHODS:
            raise DataError(f"aux state: unknown method {method!r}, expected one of {', '.join(AUX_METHODS)}")
        return cls(method=method, n_tags=n_tags, arrays=arrays, params=params)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def fit_aux(
    features: np.ndarray | None,
    method: str = "kmeans",
    tags: np.ndarray | None = None,
    seed: int = 0,
    granularities: Sequence[int] = DEFAULT_GRANULARITIES,
    words: int = 64,
    patch: int = 7,
) -> AuxSemantics:
    """Fit auxiliary semantics on the training split. ``features``: (n, d) features (kmeans) or
    images (bovw); ``tags``: the training rows of the user's tag file (file)."""
    if method not in AUX_METHODS:
        raise SpecError(f"aux: unknown method {method!r}, expected one of {', '.join(AUX_METHODS)}")
    if method == "file":
        if tags is None:
            raise SpecError("aux: method 'file' needs a tag file (--tags FILE)")
        checked = check_tags(np.asarray(tags), None, "aux tags")
        return AuxSemantics(method="file", n_tags=int(checked.shape[1]))
    if features is None:
        raise SpecError(f"aux: method {method!r} needs the training features")
    x = np.asarray(features)
    if method == "kmeans":
        return _fit_kmeans(x, granularities, seed)
    return _fit_bovw(x, words, patch, seed)


# ---- kmeans: multi-granularity memberships ----------------------------------------------------


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float64)


def _fit_kmeans(x: np.ndarray, granularities: Sequence[int], seed: int) -> AuxSemantics:
    ks = [int(k) for k in granularities]
    if not ks or any(k < 2 for k in ks):
        raise SpecError(f"aux: kmeans granularities must be integers >= 2, got {list(granularities)}")
    flat = _flat(x)
    if flat.shape[0] < max(ks):
        raise DataError(f"aux: {flat.shape[0]} training rows, fewer than the {max(ks)} clusters asked for")
    dims = min(_PCA_DIMS, flat.shape[1], flat.shape[0])
    pca = PCA(n_components=dims, random_state=seed).fit(flat)
    z = pca.transform(flat)
    arrays: dict[str, np.ndarray] = {"pca_mean": pca.mean_, "pca_components": pca.components_}
    for i, k in enumerate(ks):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed + i).fit(z)
        arrays[f"centers{i}"] = km.cluster_centers_
    return AuxSemantics(method="kmeans", n_tags=sum(ks), arrays=arrays, params={"levels": len(ks)})


def _nearest(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (z * z).sum(1, keepdims=True) - 2.0 * z @ centers.T + (centers * centers).sum(1)[None, :]
    nearest: np.ndarray = d.argmin(1)
    return nearest


def _kmeans_tags(aux: AuxSemantics, x: np.ndarray) -> np.ndarray:
    flat = _flat(x)
    comps = aux.arrays["pca_components"]
    if flat.shape[1] != comps.shape[1]:
        raise DataError(f"aux: features have {flat.shape[1]} dimensions, the tags were fitted on {comps.shape[1]}")
    z = (flat - aux.arrays["pca_mean"]) @ comps.T
    out = np.zeros((flat.shape[0], aux.n_tags), dtype=np.float32)
    offset = 0
    for i in range(aux.params["levels"]):
        centers = aux.arrays[f"centers{i}"]
        out[np.arange(flat.shape[0]), offset + _nearest(z, centers)] = 1.0
        offset += centers.shape[0]
    return out


# ---- bovw: bag of visual words -----------------------------------------------------------------


def _patches(images: np.ndarray, patch: int) -> np.ndarray:
    """(n, P, C*patch*patch) non-overlapping patches of (n, C, H, W) or (n, H, W) images."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"aux: method 'bovw' needs images (n, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if h < patch or w < patch:
        raise DataError(f"aux: images of {h}x{w} are smaller than the {patch}x{patch} patches")
    gh, gw = h // patch, w // patch
    crop = np.asarray(images[:, :, : gh * patch, : gw * patch], dtype=np.float64)
    blocks = crop.reshape(n, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    return blocks.reshape(n, gh * gw, c * patch * patch)


def _fit_bovw(images: np.ndarray, words: int, patch: int, seed: int) -> AuxSemantics:
    if words < 2 or patch < 1:
        raise SpecError(f"aux: bovw needs words >= 2 and patch >= 1, got words={words}, patch={patch}")
    p = _patches(images, patch)
    flat = p.reshape(-1, p.shape[2])
    rng = np.random.default_rng(seed)
    if flat.shape[0] > _BOVW_MAX_PATCHES:
        flat = flat[rng.choice(flat.shape[0], _BOVW_MAX_PATCHES, replace=False)]
    if flat.shape[0] < words:
        raise DataError(f"aux: {flat.shape[0]} training patches, fewer than the {words} visual words")
    km = MiniBatchKMeans(n_clusters=words, n_init=3, random_state=seed, batch_size=2048).fit(flat)
    return AuxSemantics(
        method="bovw",
        n_tags=words,
        arrays={"words": km.cluster_centers_},
        params={"patch": patch, "channels": int(images.shape[1]) if images.ndim == 4 else 1},
    )


def _bovw_tags(aux: AuxSemantics, images: np.ndarray) -> np.ndarray:
    p = _patches(images, aux.params["patch"])
    centers = aux.arrays["words"]
    if p.shape[2] != centers.shape[1]:
        raise DataError(f"aux: image patches have {p.shape[2]} values, the visual words {centers.shape[1]}")
    n, m, _ = p.shape
    idx = _nearest(p.reshape(n * m, -1), centers).reshape(n, m)
    out = np.zeros((n, aux.n_tags), dtype=np.float32)
    out[np.repeat(np.arange(n), m), idx.ravel()] = 1.0
    return out


# ---- file: the user's tags ---------------------------------------------------------------------


def check_tags(tags: np.ndarray, n_rows: int | None, where: str, n_tags: int | None = None) -> np.ndarray:
    """A 0/1 tag matrix (n, c) as float32, or one DataError line naming ``where``."""
    if tags.ndim != 2 or tags.shape[1] < 1:
        raise DataError(f"{where}: tags must be a 2-D array (rows, tags), got shape {tuple(tags.shape)}")
    if n_rows is not None and tags.shape[0] != n_rows:
        raise DataError(f"{where}: {tags.shape[0]} tag rows for {n_rows} images")
    if n_tags is not None and tags.shape[1] != n_tags:
        raise DataError(f"{where}: {tags.shape[1]} tags per row, fitted with {n_tags}")
    if tags.dtype.kind not in "biuf":
        raise DataError(f"{where}: tags must be numbers 0/1, got dtype {tags.dtype}")
    values = tags.astype(np.float64, copy=False)
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{where}: tags must be 0 or 1, row {int(r)} column {int(c)} is {float(values[r, c])!r}")
    return values.astype(np.float32)


def read_tag_file(path: str | Path, n_rows: int) -> np.ndarray:
    """Read a tag file: an .npz with an array ``tags`` (n, c), an .npy, or a text file of 0/1 rows
    (spaces or commas). Rows follow the data set's order. Wrong row count / non-binary values /
    unreadable file: one DataError line naming the file."""
    p = Path(path)
    where = f"tags file {p}"
    if not p.is_file():
        raise DataError(f"{where}: no such file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "tags" not in z.files:
                    raise DataError(f"{where}: no array named 'tags' (has: {', '.join(z.files) or 'none'})")
                arr = np.asarray(z["tags"])
        elif p.suffix == ".npy":
            arr = np.asarray(np.load(p, allow_pickle=False))
        else:
            arr = np.loadtxt(p, delimiter="," if "," in p.read_text()[:4096] else None, ndmin=2)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{where}: unreadable ({reason})") from None
    return check_tags(arr, n_rows, where)
