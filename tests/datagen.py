"""Small generated data sets on disk for the data tests: DeepHash-pytorch list files of PNGs and
CIFAR-10 "python version" batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_pngs(
    root: Path, n: int, side: int = 12, classes: int = 3, seed: int = 0, mode: str = "RGB", sub: str = "img"
) -> tuple[list[str], np.ndarray]:
    """`n` PNG images under root/sub (relative paths returned) and (n, classes) multi-hot labels:
    every image has its class k = i % classes, every 4th one also class (k + 1) % classes. The
    pixels depend on the first class, so a network can learn something."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / sub).mkdir(parents=True, exist_ok=True)
    rels, labels = [], np.zeros((n, classes), dtype=np.int64)
    for i in range(n):
        k = i % classes
        labels[i, k] = 1
        if i % 4 == 0:
            labels[i, (k + 1) % classes] = 1
        base = 40 + 70 * k
        shape = (side, side, 3) if mode == "RGB" else (side, side)
        arr = np.clip(rng.normal(base, 30, shape), 0, 255).astype(np.uint8)
        rel = f"{sub}/{i:05d}.png"
        Image.fromarray(arr, mode).save(root / rel)
        rels.append(rel)
    return rels, labels


def write_list(path: Path, rels: list[str], labels: np.ndarray) -> Path:
    """A list file: `relative/path.png 0 1 0 ...` per line."""
    path.write_text("".join(f"{r} {' '.join(str(int(v)) for v in row)}\n" for r, row in zip(rels, labels)))
    return path


def write_listfile_set(
    root: Path, n_train: int = 30, n_db: int = 36, n_test: int = 9, side: int = 12, classes: int = 3
) -> dict[str, str]:
    """Three lists (train / database / test) over PNGs under root; returns their paths."""
    rels, labels = write_pngs(root, n_train + n_db + n_test, side, classes)
    a, b = n_train, n_train + n_db
    return {
        "train_list": str(write_list(root / "train.txt", rels[:a], labels[:a])),
        "database_list": str(write_list(root / "database.txt", rels[a:b], labels[a:b])),
        "test_list": str(write_list(root / "test.txt", rels[b:], labels[b:])),
    }


def write_cifar_batches(root: Path, per_batch: int = 50, seed: int = 0) -> np.ndarray:
    """data_batch_1..5, test_batch and batches.meta as CIFAR-10's pickles (uint8 rows of 3072 =
    3x32x32, labels 0..9); pixels lean on the class so a 1-epoch net beats chance. Returns all
    images (N, 3, 32, 32) in file order."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.permutation(np.arange(per_batch) % 10)  # balanced: per_batch / 10 per class
        data = np.clip(rng.normal(20 + 22 * labels[:, None], 40, (per_batch, 3072)), 0, 255).astype(np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in labels], b"batch_label": name.encode()}, f)
        out.append(data.reshape(-1, 3, 32, 32))
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(
            {
                b"label_names": [f"c{i}".encode() for i in range(10)],
                b"num_cases_per_batch": per_batch,
                b"num_vis": 3072,
            },
            f,
        )
    return np.concatenate(out)


def write_bad_list(root: Path, kind: str) -> dict[str, str]:
    """A one-list data set under root whose list file is bad: missing-image (line 2 names an image
    that does not exist) | bad-label (line 1's label vector holds an 'x')."""
    root.mkdir(parents=True, exist_ok=True)
    rels, labels = write_pngs(root, 4, side=8)
    lines = [f"{r} {' '.join(str(int(v)) for v in row)}" for r, row in zip(rels, labels)]
    if kind == "missing-image":
        lines[1] = "img/nope.png 1 0 0"
    elif kind == "bad-label":
        lines[0] = f"{rels[0]} 1 x 0"
    else:
        raise ValueError(kind)
    path = root / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return {"list": str(path), "root": str(root)}
