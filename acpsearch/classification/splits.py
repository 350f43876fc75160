"""Train / validation / test splits of a single-label data set for classification.

`classification_splits(ds, ...)` takes a `Dataset` from `acpsearch.hashing.load_dataset(...)`:

- **test**: the data set's standard test split where it has one (`Dataset.standard_test`, set by
  the loaders): fashion-mnist's t10k images and cifar10's test_batch (the rows from
  ``Dataset.test_start`` on; the rest is the pool), a list-file data set's ``test_list`` (its
  ``query`` part; the pool is its ``train_list`` + ``val_list``). Elsewhere (digits, mnist5k,
  folder, npz) a seeded stratified ``test_fraction`` of every class is held out.
- **validation**: a seeded stratified ``val_fraction`` of every class of the rest; **train** is
  what is left. Every class keeps at least one training item.
- ``train_per_class`` / ``val_per_class`` / ``test_per_class`` cap each part per class (a seeded
  random subset): small, fast runs for tests and smoke checks.

The same data set and seed give the same rows (``indices``); another seed gives others. Images are
normalised per channel with the training part's mean and std (``normalize=False`` leaves them in
[0, 1]). Items of a list-file data set must be in memory (``load_dataset(..., stream=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from acpsearch.errors import DataError
from acpsearch.hashing import Dataset

IndexArray = npt.NDArray[np.int64]
Part = tuple[torch.Tensor, torch.Tensor]
STD_EPS = 1e-6


@dataclass
class ClassificationSplits:
    """(X, y) pairs for train / val / test, the rows they came from and the normalisation used."""

    train: Part
    val: Part
    test: Part
    num_classes: int
    dataset: str = ""
    seed: int = 0
    test_source: str = "held-out"  # "standard" (the data set's own test split) or "held-out"
    indices: dict[str, torch.Tensor] = field(default_factory=dict)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train[0].shape[1:]
        return int(c), int(h), int(w)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train[1]), "val": len(self.val[1]), "test": len(self.test[1])}


def _held_count(n: int, fraction: float) -> int:
    """Items of a class of `n` to hold out: round(fraction * n), at least 1, leaving at least 1."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(round(fraction * n))))


def _stratified(
    idx: IndexArray, labels: npt.NDArray[np.int64], fraction: float, rng: np.random.Generator
) -> tuple[IndexArray, IndexArray]:
    """Split `idx` into (held out, rest), `fraction` of every class held out."""
    held: list[IndexArray] = []
    rest: list[IndexArray] = []
    for c in np.unique(labels[idx]):
        members = rng.permutation(idx[labels[idx] == c])
        k = _held_count(len(members), fraction)
        held.append(members[:k])
        rest.append(members[k:])
    return _join(held), _join(rest)


def _cap(idx: IndexArray, labels: npt.NDArray[np.int64], cap: int | None, rng: np.random.Generator) -> IndexArray:
    """At most `cap` items of every class of `idx` (a seeded random subset); all of them for None."""
    if cap is None:
        return np.sort(idx)
    kept = [rng.permutation(idx[labels[idx] == c])[:cap] for c in np.unique(labels[idx])]
    return np.sort(_join(kept))


def _join(parts: list[IndexArray]) -> IndexArray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _check(ds: Dataset, val_fraction: float, test_fraction: float, caps: dict[str, int | None]) -> None:
    if not isinstance(ds.images, torch.Tensor):
        raise DataError(f"dataset {ds.name}: classification needs the images in memory (load with stream=False)")
    if ds.multi_label:
        raise DataError(f"dataset {ds.name}: classification needs one label per item, the labels are multi-hot")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"splits.{name}: must be in [0, 1), got {value!r}")
    for name, cap in caps.items():
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise DataError(f"splits.{name}: must be a positive integer or None, got {cap!r}")


def _test_and_pool(
    ds: Dataset, labels: npt.NDArray[np.int64], test_fraction: float, rng: np.random.Generator
) -> tuple[IndexArray, IndexArray, str]:
    """(test rows, the rest, where the test rows come from)."""
    every = np.arange(len(labels), dtype=np.int64)
    standard = ds.standard_test()
    if standard is not None and ds.parts is not None:  # list files: the train (+ val) lists are the pool
        lists = [np.asarray(ds.parts.get(k, ()), dtype=np.int64) for k in ("train", "val")]
        return standard, _join(lists), "standard"
    if standard is not None:
        return standard, np.setdiff1d(every, standard).astype(np.int64), "standard"
    test, pool = _stratified(every, labels, test_fraction, rng)
    return test, pool, "held-out"


def _normalise(parts: dict[str, Part], normalize: bool, channels: int) -> tuple[list[float], list[float]]:
    if not normalize or len(parts["train"][1]) == 0:
        return [0.0] * channels, [1.0] * channels
    x = parts["train"][0]
    mean = x.mean(dim=(0, 2, 3), dtype=torch.float64)
    std = x.to(torch.float64).std(dim=(0, 2, 3)).clamp_min(STD_EPS)
    m, s = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
    for key, (xs, ys) in parts.items():
        parts[key] = ((xs - m) / s, ys)
    return [float(v) for v in mean], [float(v) for v in std]


def classification_splits(
    ds: Dataset,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> ClassificationSplits:
    """Seeded, stratified train / val / test splits of `ds` (see the module docstring)."""
    caps = {"train_per_class": train_per_class, "val_per_class": val_per_class, "test_per_class": test_per_class}
    _check(ds, val_fraction, test_fraction, caps)
    labels = ds.labels.numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    test, pool, source = _test_and_pool(ds, labels, test_fraction, rng)
    val, train = _stratified(pool, labels, val_fraction, rng)
    rows = {
        "train": _cap(train, labels, train_per_class, rng),
        "val": _cap(val, labels, val_per_class, rng),
        "test": _cap(test, labels, test_per_class, rng),
    }
    if len(rows["train"]) == 0:
        raise DataError(f"dataset {ds.name}: nothing is left for training")
    indices = {k: torch.from_numpy(v) for k, v in rows.items()}
    parts: dict[str, Part] = {k: (ds.images[t], ds.labels[t]) for k, t in indices.items()}
    mean, std = _normalise(parts, normalize, int(ds.images.shape[1]))
    return ClassificationSplits(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        num_classes=ds.num_classes,
        dataset=ds.name,
        seed=int(seed),
        test_source=source,
        indices=indices,
        mean=mean,
        std=std,
    )


def preprocess_meta(splits: ClassificationSplits, ds: Dataset, normalize: bool) -> dict[str, object]:
    """`meta.preprocess` of a classifier trained on `splits` of `ds`: what ``acpsearch.preprocess``
    applies to raw pixels (the training part's statistics, the data set's scale and resize)."""
    return {
        "mean": splits.mean,
        "std": splits.std,
        "input_shape": list(splits.input_shape),
        "divide_by": float(ds.divide_by),
        "normalize": "train" if normalize else "none",
        "image_size": ds.image_size,
        "resize": "shorter-side-center-crop" if ds.image_size else None,
    }
