"""Data for real users: normalisation from the training split only (stored in checkpoints and
reproduced by acpsearch.preprocess), streamed list-file data sets, CIFAR-10 batches end to end,
per-data-set protocol defaults."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datagen import write_cifar_batches, write_list, write_listfile_set, write_pngs
from torch import nn

import acpsearch
from acpsearch.checkpoint import save_zoo_checkpoint
from acpsearch.errors import DataError, SpecError
from acpsearch.hashing import (
    Dataset,
    checkpoint_meta,
    create_model,
    encode,
    evaluate,
    load_dataset,
    make_splits,
    train_hash_net,
)
from acpsearch.hashing.data import ImageSource, channel_stats, splits_from_data
from acpsearch.service.spec import parse_spec


def _conv(bits: int = 16, c: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, bits)
    )


# --- normalisation from the training split ------------------------------------------------------
def test_normalisation_uses_the_training_split_only():
    """Train images near 0.2, query / database images near 0.9: the stored mean is the train mean."""
    g = torch.Generator().manual_seed(0)
    n_train, n_rest = 40, 60
    x = torch.cat(
        [
            0.2 + 0.05 * torch.randn(n_train, 1, 4, 4, generator=g),
            0.9 + 0.05 * torch.randn(n_rest, 1, 4, 4, generator=g),
        ]
    )
    labels = torch.arange(100) % 2
    parts = {
        "train": np.arange(0, 30),
        "val": np.arange(30, 40),
        "query": np.arange(40, 50),
        "database": np.arange(50, 100),
    }
    ds = Dataset(x, labels, "hand", 2, parts=parts)
    sp = make_splits(ds)
    mean, std = sp.preprocess["mean"][0], sp.preprocess["std"][0]
    assert mean == pytest.approx(float(x[:30].double().mean()), abs=1e-9)
    assert std == pytest.approx(float(x[:30].double().std(unbiased=False)) + 1e-6, abs=1e-6)
    assert abs(mean - float(x.mean())) > 0.3  # the whole set's mean is far away
    assert abs(float(sp.train[0].mean())) < 1e-4 and float(sp.query[0].mean()) > 5  # test split not re-centred
    assert sp.preprocess["normalize"] == "train" and sp.preprocess["input_shape"] == [1, 4, 4]
    # none / given statistics
    assert torch.equal(make_splits(ds, normalize="none").query[0], x[sp.indices["query"]])
    given = make_splits(ds, normalize={"mean": [0.5], "std": [0.25]})
    assert torch.allclose(given.query[0], (x[given.indices["query"]] - 0.5) / 0.25)
    with pytest.raises(DataError, match=r"data\.normalize\.std: every value must be > 0"):
        make_splits(ds, normalize={"mean": [0.5], "std": [0.0]})
    with pytest.raises(DataError, match=r"data\.normalize\.mean: has 2 values, the images have 1 channels"):
        make_splits(ds, normalize={"mean": [0.5, 0.5], "std": [1.0]})


def test_digits_per_class_split_statistics_are_the_train_rows():
    ds = load_dataset("digits")
    sp = make_splits(ds, seed=3)
    train = ds.images[sp.indices["train"]].double()
    assert sp.preprocess["mean"][0] == pytest.approx(float(train.mean()), abs=1e-9)
    assert sp.preprocess["mean"][0] != pytest.approx(float(ds.images.double().mean()), abs=1e-4)


def test_stats_round_trip_through_a_checkpoint_and_preprocess_reproduces_encode_input(tmp_path):
    from sklearn.datasets import load_digits

    sp = make_splits(load_dataset("digits"), seed=0)
    net = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    res = train_hash_net(net, sp, epochs=1, max_batches=2, progress=False)
    path = save_zoo_checkpoint(tmp_path / "d.pt", res.model, "resnet20", 16, 1, 8, checkpoint_meta(sp, "csq", res))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["meta"]["preprocess"] == sp.preprocess
    assert set(ckpt["meta"]["preprocess"]) >= {"mean", "std", "input_shape"}
    raw = load_digits().images[sp.indices["query"].numpy()]  # pixels 0..16 as scikit-learn stores them
    x = acpsearch.preprocess(raw, path)
    assert torch.equal(x, sp.query[0])  # bit for bit the input encode saw
    assert torch.equal(acpsearch.preprocess(raw, ckpt), x) and torch.equal(acpsearch.preprocess(raw, ckpt["meta"]), x)
    loaded = acpsearch.load_model(path)
    assert torch.equal(encode(loaded, x), encode(res.model, sp.query[0]))
    with pytest.raises(acpsearch.CheckpointError, match="no meta.preprocess"):
        acpsearch.preprocess(raw, {"meta": {}})


# --- list files, streamed -----------------------------------------------------------------------
@pytest.fixture()
def lists(tmp_path):
    return write_listfile_set(tmp_path / "set")


def test_listfile_three_lists_multi_hot_relative_paths(lists):
    ds = load_dataset("listfile", **lists)
    assert isinstance(ds.images, ImageSource) and ds.multi_label and ds.num_classes == 3
    assert ds.labels.shape == (75, 3) and int(ds.labels[0].sum()) == 2 and int(ds.labels[1].sum()) == 1
    assert ds.images.shape == (75, 3, 12, 12) and ds.images.files[0].endswith("set/img/00000.png")
    sp = make_splits(ds, seed=0)
    assert sp.sizes() == {"query": 9, "train": 27, "val": 3, "database": 36}
    assert sp.protocol["from_lists"] == 1
    assert isinstance(sp.database[0], ImageSource)
    m = evaluate(_conv(), sp, topk=5)  # relevance: sharing >= 1 label
    assert m["topk"] == 5 and 0 < m["map_topk"] <= 1 and m["n_database"] == 36


def test_streaming_gives_the_same_codes_and_statistics_as_in_memory(lists):
    streamed = make_splits(load_dataset("listfile", **lists, workers=1), seed=0)
    memory = make_splits(load_dataset("listfile", **lists, stream=False), seed=0)
    assert isinstance(memory.database[0], torch.Tensor) and isinstance(streamed.database[0], ImageSource)
    assert streamed.preprocess == memory.preprocess
    assert channel_stats(load_dataset("listfile", **lists).images) == channel_stats(
        load_dataset("listfile", **lists, stream=False).images
    )
    net = _conv()
    for part in ("query", "database", "train"):
        assert torch.equal(getattr(streamed, part)[0][:], getattr(memory, part)[0])
        assert torch.equal(
            encode(net, getattr(streamed, part)[0], batch_size=8), encode(net, getattr(memory, part)[0], batch_size=8)
        )
    # training draws the same batches from both
    a = train_hash_net(_conv(), streamed, epochs=1, batch_size=8, progress=False)
    b = train_hash_net(_conv(), memory, epochs=1, batch_size=8, progress=False)
    assert a.history[0]["loss"] == pytest.approx(b.history[0]["loss"], rel=1e-5)


def test_one_list_with_protocol_and_image_size(tmp_path):
    rels, labels = write_pngs(tmp_path, 60, side=20)
    ds = load_dataset("listfile", str(write_list(tmp_path / "all.txt", rels, labels)), image_size=8)
    assert ds.images.shape == (60, 3, 8, 8) and ds.parts is None
    sp = make_splits(ds, 2, 6, 2, seed=0)  # multi-label: counts x 3 classes
    assert sp.sizes() == {"query": 6, "train": 18, "val": 6, "database": 30}
    assert sp.preprocess["image_size"] == 8 and sp.preprocess["input_shape"] == [3, 8, 8]
    # a user's own PIL image, resized and centre-cropped as the data set was
    from PIL import Image

    with Image.open(tmp_path / rels[int(sp.indices["query"][0])]) as im:
        x = acpsearch.preprocess(im.copy(), sp.preprocess)
    assert torch.equal(x[0], sp.query[0][:1][0])


def test_listfile_errors_are_one_line_naming_the_list_and_line(tmp_path, lists):
    bad = tmp_path / "bad.txt"
    bad.write_text("img/00000.png 0 1 0\nimg/nope.png 1 0 0\n")
    with pytest.raises(DataError) as exc:
        load_dataset("listfile", str(bad), root=str(tmp_path / "set"))
    assert str(exc.value) == (
        f"dataset listfile: list {str(bad)!r} line 2: image 'img/nope.png' not found under {str(tmp_path / 'set')!r}"
    )
    bad.write_text("img/00000.png 0 1 0\nimg/00001.png 0 2 0\n")
    with pytest.raises(DataError, match=r"line 2: label vector must be 0/1 values separated by spaces, got '2'$"):
        load_dataset("listfile", str(bad), root=str(tmp_path / "set"))
    bad.write_text("img/00000.png 0 1 0\nimg/00001.png 0 1\n")
    with pytest.raises(DataError, match=r"line 2: label vector has 2 values, earlier lines have 3$"):
        load_dataset("listfile", str(bad), root=str(tmp_path / "set"))
    with pytest.raises(DataError, match=r"test_list missing"):
        load_dataset("listfile", train_list=lists["train_list"], database_list=lists["database_list"])
    # an image that is damaged is found when it is decoded: one line, list file and line named
    (tmp_path / "set" / "img" / "00070.png").write_bytes(b"not a png")
    sp = make_splits(load_dataset("listfile", **lists, workers=1), seed=0)
    with pytest.raises(DataError) as exc:
        encode(_conv(), sp.query[0])
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(
        f"dataset listfile: test_list {lists['test_list']!r} line 5: cannot read image"
    )


def test_spec_listfile_keys():
    base = {"model": {"zoo": "resnet20"}, "budget": {"flops": 0.5}}
    s = parse_spec(
        {
            **base,
            "data": {
                "dataset": "listfile",
                "train_list": "t",
                "database_list": "d",
                "test_list": "q",
                "image_size": 32,
                "workers": 2,
                "normalize": {"mean": [0.5], "std": [0.2]},
            },
        }
    )
    assert s.data.image_size == 32 and s.data.normalize.mean == [0.5] and s.data.stream
    for data, msg in [
        ({"dataset": "listfile"}, "spec: data.train_list: dataset 'listfile' needs data.path"),
        ({"dataset": "digits", "train_list": "t"}, "spec: data.train_list: only for dataset 'listfile'"),
        ({"dataset": "listfile", "path": "a", "test_list": "q"}, "spec: data.test_list: give either"),
        ({"dataset": "digits", "normalize": "whole"}, "spec: data.normalize"),
        (
            {"dataset": "digits", "normalize": {"mean": [0.5], "std": [0]}},
            "spec: data.normalize: std.0: input should be greater than 0",
        ),
    ]:
        with pytest.raises(SpecError) as exc:
            parse_spec({**copy.deepcopy(base), "data": data})
        assert str(exc.value).startswith(msg) and "\n" not in str(exc.value)


def test_splits_from_a_spec_data_section(lists):
    data = parse_spec(
        {
            "model": {"zoo": "resnet20"},
            "budget": {"flops": 0.5},
            "data": {"dataset": "listfile", **lists, "normalize": "none"},
        }
    ).to_dict()["data"]
    sp = splits_from_data(data)
    assert sp.preprocess["normalize"] == "none" and sp.sizes()["database"] == 36


# --- CIFAR-10 python batches, end to end --------------------------------------------------------
def test_cifar10_batches_end_to_end(tmp_path):
    raw = write_cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=50)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.images.shape == (300, 3, 32, 32) and ds.divide_by == 255.0
    sp = make_splits(ds, 3, 20, 3, seed=0)
    assert sp.sizes() == {"query": 30, "train": 200, "val": 30, "database": 40}
    assert torch.equal(acpsearch.preprocess(raw[sp.indices["query"].numpy()], sp.preprocess), sp.query[0])
    net = create_model("resnet20", bits=16, in_channels=3, image_size=32)
    res = train_hash_net(net, sp, epochs=1, batch_size=50, progress=False)
    m = evaluate(res.model, sp, topk=10)
    assert m["n_query"] == 30 and m["n_database"] == 40 and m["bits"] == 16
    assert m["map_all"] > 0.15  # chance is ~0.1: the classes' pixel levels differ


# --- protocol defaults --------------------------------------------------------------------------
def test_protocol_defaults_fit_each_built_in_data_set():
    from acpsearch.hashing.data import protocol_defaults

    assert protocol_defaults("digits") == {"query_per_class": 10, "train_per_class": 60, "val_per_class": 15}
    assert (
        protocol_defaults("fashion-mnist")["train_per_class"] == 500 == protocol_defaults("cifar10")["train_per_class"]
    )
    sp = make_splits(load_dataset("digits"))
    assert sp.protocol == {"query_per_class": 10, "train_per_class": 60, "val_per_class": 15, "seed": 0}


def test_cli_train_digits_without_protocol_flags(tmp_path, capsys):
    import json

    from acpsearch.cli import run

    out = tmp_path / "d.pt"
    assert (
        run(["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "256", "--out", str(out), "--json"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["metrics"]["n_query"] == 100 and doc["metrics"]["n_database"] == 947
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["protocol"]["train_per_class"] == 60 and meta["preprocess"]["input_shape"] == [1, 8, 8]


def test_cli_train_and_evaluate_a_list_file_set(lists, tmp_path, capsys):
    import json

    from acpsearch.cli import run

    out = tmp_path / "l.pt"
    argv = [
        "train",
        "--dataset",
        "listfile",
        "--train-list",
        lists["train_list"],
        "--database-list",
        lists["database_list"],
        "--test-list",
        lists["test_list"],
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--bits",
        "16",
        "--topk",
        "20",
        "--out",
        str(out),
        "--json",
    ]
    assert run(argv) == 0
    trained = json.loads(capsys.readouterr().out)["metrics"]
    assert trained["n_query"] == 9 and trained["n_database"] == 36
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["preprocess"]["input_shape"] == [3, 8, 8] and meta["preprocess"]["image_size"] == 8
    assert run(["evaluate", str(out), "--topk", "20", "--json"]) == 0  # the lists and statistics stored in meta
    again = json.loads(capsys.readouterr().out)["metrics"]
    assert again["map_all"] == trained["map_all"] and again["map_topk"] == trained["map_topk"]


def test_a_study_prunes_a_network_trained_on_a_streamed_list_file_set(tmp_path, ray_session):
    """submit + run on a DeepHash-pytorch list-file set that stays on disk (decoded per batch):
    the base is trained on it, the search and fine-tuning read it, the winner stores the training
    split's normalisation. (Peak memory is measured by benchmarks/stream_memory.py, not here.)"""
    import yaml
    from conftest import TINY_SPEC

    from acpsearch.checkpoint import read_checkpoint
    from acpsearch.cli import run
    from acpsearch.service import study as st
    from acpsearch.service.storage import open_storage

    lists = write_listfile_set(tmp_path / "data", n_train=60, n_db=60, n_test=15, side=12)
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(
        {
            "name": "listfile-study",
            "model": {"zoo": "resnet20", "bits": 16},
            "data": {"dataset": "listfile", **lists, "image_size": 12},
            "train": {"loss": "csq", "epochs": 2, "lr": 0.003, "batch_size": 32},
            "search": {
                "candidates": 6,
                "sampler": "random",
                "workers": 1,
                "seed": 0,
                "ranker": "l1_retained",
                "rounds": 1,
            },
            "finetune": {"top": 1, "epochs": 1, "lr": 0.001, "early_stop": None},
        }
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert run(["submit", str(tmp_path / "s.yaml"), "--storage", url]) == 0
    assert run(["run", "listfile-study", "--storage", url, "--artifacts", str(tmp_path / "art")]) == 0
    study = st.load_search_study(open_storage(url), "listfile-study")
    assert study.user_attrs["state"] == "done"
    stored = study.user_attrs["spec"]["data"]
    assert stored["dataset"] == "listfile" and stored["stream"] is True
    winner = study.user_attrs["winner"]
    assert winner["flops_ratio"] <= 0.5 + 1e-9
    pre = read_checkpoint(winner["path"])["meta"]["preprocess"]
    assert pre["input_shape"][-2:] == [12, 12] and len(pre["mean"]) == 3  # RGB, from the training list
