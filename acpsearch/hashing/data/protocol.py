"""The retrieval protocol: `load_dataset` by name, and `make_splits`, the CIFAR-10-style hashing
protocol with a validation split: per class `query_per_class` queries, `train_per_class` training
images, `val_per_class` validation images, the rest is the retrieval database. It is seeded and the
database is shuffled, because Hamming ties are frequent and a class-sorted database biases mAP@k
under a stable sort."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from acpsearch.errors import DataError
from acpsearch.hashing.data.builtin import load_cifar10, load_digits, load_fashion_mnist, load_mnist5k
from acpsearch.hashing.data.files import load_folder, load_npz
from acpsearch.hashing.data.gate import Dataset
from acpsearch.hashing.data.listfile import load_listfile
from acpsearch.hashing.data.normalize import apply_normalize, resolve_normalize
from acpsearch.hashing.data.stream import is_source

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
        return load_fashion_mnist(path)
    if key == "digits":
        return load_digits()
    if key == "mnist5k":
        return load_mnist5k()
    if key == "cifar10":
        return load_cifar10(path)
    if key == "folder":
        return load_folder(path, image_size)
    if key == "npz":
        return load_npz(path)
    if key == "listfile":
        return load_listfile(
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
    stratify: bool = True,
) -> Splits:
    """Seeded query / train / val / database split by per-class counts; the rest is the database.

    Counts left out (None) take the data set's defaults (`PROTOCOL_DEFAULTS`). Multi-label data
    have no single class per item: there the counts are multiplied by the number of classes and
    drawn at random from all items. A list-file data set with three lists is split by them.

    Every part is normalised with per-channel statistics of the training split only
    (`normalize="train"`), none (`"none"`) or given ones (`{"mean": [...], "std": [...]}`);
    `Splits.preprocess` records them (checkpoints store it as meta.preprocess).

    `stratify=False` (a label-free study) draws the same total counts at random from all items,
    as for multi-label data: then no label decides which image lands in which split."""
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
    elif ds.multi_label or not stratify:
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
    query, train, val, database = ((apply_normalize(x, mean, std), y) for x, y in (query, train, val, database))
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


def dataset_from_data(data: dict[str, Any], stream: bool | None = None) -> Dataset:
    """The data set a spec's `data` section names (a dict, as `StudySpec.to_dict()` writes it);
    `stream` overrides the section's own choice (a classifier needs the images in memory)."""
    return load_dataset(
        data["dataset"],
        data.get("path"),
        train_list=data.get("train_list"),
        database_list=data.get("database_list"),
        test_list=data.get("test_list"),
        val_list=data.get("val_list"),
        root=data.get("root"),
        image_size=data.get("image_size"),
        stream=data.get("stream", True) if stream is None else stream,
        workers=int(data.get("workers") or 0),
        seed=int((data.get("protocol") or {}).get("seed") or 0),
    )


def splits_from_data(data: dict[str, Any]) -> Splits:
    """The splits of a spec's `data` section (a dict, as `StudySpec.to_dict()` writes it)."""
    ds = dataset_from_data(data)
    proto = {k: v for k, v in (data.get("protocol") or {}).items() if v is not None}
    stratify = data.get("supervision") != "none"  # a label-free study's splits are drawn without labels
    return make_splits(ds, **proto, normalize=data.get("normalize", "train"), stratify=stratify)
