"""The one gate between a loader and the rest: the `Dataset` a loader returns, and the checks its
arrays pass before anything is normalised or split.

A malformed data set is one `DataError` line that names the file (or data set), never a traceback
or a silently broken data set:

- images: a numeric dtype (bool, integers, floats; not object, strings, complex), (N, H, W) or
  (N, C, H, W) (npz also (N, H, W, C)), at least one image, 1..MAX_CHANNELS channels, sides of
  1..MAX_SIDE pixels, at most MAX_VALUES values in all, every value finite (the first NaN / inf is
  reported with its index: one of them would turn the whole normalised data set into NaN);
- labels: (N,) class ids of an integer (or bool) dtype, non-negative, one per image, or (N, C)
  multi-hot (npz) of a numeric dtype; at least two classes (retrieval mAP needs them).
- Class ids are *remapped* to 0..C-1 in increasing order of the original ids (`Dataset.class_ids`
  keeps the original id of each class, and `class_names` of a folder data set keeps only the
  folders that hold images). Ids that already are 0..C-1 stay as they are, so their splits do not
  change; a sparse id such as 2**40 costs one class, not a loop over 2**40 of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from acpsearch.errors import DataError

MAX_SIDE = 4096  # pixels per image side (hash networks here take small images; bigger ones are resized first)
MAX_CHANNELS = 64
MAX_VALUES = 2**31  # values in a data set: 8 GiB as float32, and normalising makes copies of it


@dataclass
class Dataset:
    """Images (N, C, H, W) float32 in [0, 1] (raw pixels / `divide_by`; not yet normalised: that is
    `make_splits`'s job, with statistics of the training split), or an `ImageSource` that decodes
    them from disk per batch; labels (N,) int64 or (N, C) multi-hot."""

    images: Any  # torch.Tensor or ImageSource
    labels: torch.Tensor
    name: str
    num_classes: int
    path: str | None = None
    class_names: list[str] | None = None
    class_ids: list[int] | None = None  # the original label id of each class (labels are remapped to 0..C-1)
    divide_by: float = 1.0  # the loader's pixels were divided by this to land in [0, 1]
    parts: dict[str, np.ndarray] | None = None  # fixed query/train/val/database rows (list files)
    image_size: int | None = None  # the configured size (shorter side resized to it, centre crop)
    test_start: int | None = None  # rows from here on are the data set's standard test split (fashion-mnist, cifar10)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def standard_test(self) -> np.ndarray | None:
        """The rows of the data set's own test split: fashion-mnist's t10k images and cifar10's
        test_batch (``test_start`` onwards), a list-file data set's test list; None when it has none."""
        if self.test_start is not None:
            return np.arange(self.test_start, len(self), dtype=np.int64)
        if self.parts is not None and len(self.parts.get("query", ())) > 0:
            return np.asarray(self.parts["query"], dtype=np.int64)
        return None


def _to_unit(x: np.ndarray) -> tuple[torch.Tensor, float]:
    """uint8/float images (N, C, H, W) -> float32 in [0, 1] (divided by 255 when above 1) and the
    divisor. Normalisation comes later, with the training split's statistics (`make_splits`)."""
    x = x.astype(np.float32)
    divide_by = 1.0
    if x.max(initial=0.0) > 1.0:
        divide_by = 255.0
        x /= np.float32(divide_by)
    return torch.from_numpy(x), divide_by


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dtype_problem(dtype: np.dtype, labels: bool = False) -> str | None:
    """Why an array of this dtype is not image data (or class ids), or None when it is."""
    kinds = "biu" if labels else "biuf"
    if dtype.kind in kinds:
        return None
    words = {
        "O": "Python objects",
        "U": "strings",
        "S": "bytes",
        "c": "complex numbers",
        "V": "records",
        "M": "dates",
        "m": "time deltas",
        "f": "floats",
    }
    what = words.get(dtype.kind, f"dtype {dtype}")
    need = "integer class ids" if labels else "numbers (bool, integer or float)"
    return f"holds {what} ({dtype}), not {need}"


def check_arrays(
    images: Any,
    labels: Any,
    source: str,
    *,
    layout: str = "NCHW",
    arrays: tuple[str, str] = ("images", "labels"),
    where: Callable[[int], str] | None = None,
    class_names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int] | None, list[str] | None]:
    """The one gate between a loader and the rest: check a data set's arrays, return them as
    (images (N, C, H, W), labels, class_ids, class_names).

    `source` starts every message ("dataset npz: 'FILE'"); `arrays` names the two arrays as the
    user knows them; `where(i)` names the file (and row) that image i came from. `layout` is
    "NCHW" ((N, H, W) gets a channel axis) or "auto" ((N, H, W, C) is recognised as well).
    Single-label ids are remapped to 0..C-1 (see the module docstring); `class_names[k]` names
    the original id k (a folder) and is returned for the classes that remain."""
    xname, yname = arrays

    def at(i: int) -> str:
        return f" ({where(i)})" if where is not None else ""

    x = _check_images(np.asarray(images), source, xname, layout, at)
    y, class_ids, names = _check_labels(np.asarray(labels), len(x), source, yname, at, class_names)
    return x, y, class_ids, names


def _check_images(x: np.ndarray, source: str, xname: str, layout: str, at: Callable[[int], str]) -> np.ndarray:
    """The images of `check_arrays` as (N, C, H, W), or the DataError that says what is wrong."""
    problem = dtype_problem(x.dtype)
    if problem:
        raise DataError(f"{source}: {xname} {problem}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and layout == "auto" and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        forms = "(N, H, W), (N, H, W, C) or (N, C, H, W)" if layout == "auto" else "(N, H, W) or (N, C, H, W)"
        raise DataError(f"{source}: {xname} must be {forms}, got shape {x.shape}")
    n, c, h, w = (int(v) for v in x.shape)
    if n < 1:
        raise DataError(f"{source}: no images ({xname} has shape {x.shape})")
    if not 1 <= c <= MAX_CHANNELS:
        raise DataError(f"{source}: {xname} has {c} channels, must be 1 to {MAX_CHANNELS} (shape {x.shape})")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise DataError(f"{source}: {xname} images are {h}x{w}, each side must be 1 to {MAX_SIDE} pixels")
    if n * c * h * w > MAX_VALUES:
        raise DataError(
            f"{source}: {xname} has {n * c * h * w} values (shape {x.shape}), more than {MAX_VALUES} "
            "fit in memory here; use fewer or smaller images"
        )
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            flat = int(np.argmin(finite.reshape(-1)))
            idx = tuple(int(v) for v in np.unravel_index(flat, x.shape))
            raise DataError(
                f"{source}: {xname}[{idx[0]}]{at(idx[0])} has a non-finite value ({x[idx]}) at "
                f"index {idx[1:]} (channel, row, column); every pixel must be a finite number"
            )
        del finite
    return x


def _check_labels(
    y: np.ndarray, n: int, source: str, yname: str, at: Callable[[int], str], class_names: list[str] | None
) -> tuple[np.ndarray, list[int] | None, list[str] | None]:
    """The labels of `check_arrays` for `n` images: (labels, class_ids, class_names), single-label ids
    remapped to 0..C-1."""
    problem = dtype_problem(y.dtype, labels=y.ndim == 1)
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(
            f"{source}: {yname} must be (N,) class ids or (N, C) multi-hot for N={n} images, got shape {y.shape}"
        )
    if problem and y.ndim == 1 and y.dtype.kind == "f":
        raise DataError(f"{source}: {yname} {problem}; store the class ids as integers")
    if problem:
        raise DataError(f"{source}: {yname} {problem}")
    if y.ndim == 2:  # multi-hot: one column per class
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            row = int(np.argmin(np.isfinite(y).all(axis=1)))
            raise DataError(f"{source}: {yname}[{row}]{at(row)} has a non-finite value")
        if y.shape[1] < 2:
            raise DataError(
                f"{source}: {yname} is multi-hot with {y.shape[1]} class column(s); retrieval needs at least 2 classes"
            )
        return (y > 0).astype(np.int64), None, None
    if y.dtype.kind == "i" and y.size and y.min() < 0:
        i = int(np.argmax(y < 0))
        raise DataError(f"{source}: {yname}[{i}]{at(i)} is {int(y[i])}; class ids must be non-negative integers")
    ids, inverse = np.unique(y, return_inverse=True)
    if len(ids) < 2:
        only = repr(class_names[int(ids[0])]) if class_names is not None else str(int(ids[0]))
        raise DataError(f"{source}: all {n} images are of one class ({only}); retrieval needs at least 2 classes")
    class_ids = [int(v) for v in ids]
    names = [class_names[k] for k in class_ids] if class_names is not None else None
    return inverse.reshape(-1).astype(np.int64), class_ids, names


def finish_dataset(
    x: Any,
    y: Any,
    name: str,
    path: str | None,
    class_names: list[str] | None = None,
    shuffle_seed: int | None = None,
    *,
    source: str | None = None,
    layout: str = "NCHW",
    arrays: tuple[str, str] = ("images", "labels"),
    where: Callable[[int], str] | None = None,
    divide_by: float | None = None,
    test_start: int | None = None,
) -> Dataset:
    source = source or (f"dataset {name}: {path!r}" if path else f"dataset {name}")
    x, y, class_ids, class_names = check_arrays(
        x, y, source, layout=layout, arrays=arrays, where=where, class_names=class_names
    )
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(x))
        x, y = x[perm], y[perm]
    labels = torch.from_numpy(np.ascontiguousarray(y)).long()
    num_classes = int(labels.shape[1]) if labels.ndim == 2 else len(class_ids or ())
    with np.errstate(all="ignore"):  # huge finite values overflow float32: refused just below
        images, scale = _to_unit(x)
    # the training split's statistics square the pixels: those squares must stay finite too
    squares = images.square().sum((0, 2, 3), dtype=torch.float64)
    if not bool(torch.isfinite(images).all()) or not bool(torch.isfinite(squares).all()):
        biggest = max(abs(float(x.min())), abs(float(x.max())))
        raise DataError(
            f"{source}: pixel values too large to normalise (largest magnitude {biggest}); "
            "store pixels as 0..255 or 0..1"
        )
    return Dataset(
        images,
        labels,
        name,
        num_classes,
        path,
        class_names,
        class_ids,
        divide_by=float(divide_by if divide_by is not None else scale),
        test_start=test_start,
    )
