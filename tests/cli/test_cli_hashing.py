"""`acpsearch train` / `acpsearch evaluate` through acpsearch.cli.run: success paths and exit 2 errors."""

from __future__ import annotations

import json

import pytest

from acpsearch.cli import run

SMALL = ["--dataset", "digits", "--query-per-class", "10", "--train-per-class", "50", "--val-per-class", "10"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "base.pt"
    code = run(
        [
            "train",
            "--model",
            "resnet20",
            *SMALL,
            "--bits",
            "16",
            "--epochs",
            "2",
            "--loss",
            "csq",
            "--lr",
            "0.003",
            "--batch-size",
            "64",
            "--seed",
            "1",
            "--augment",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_train_writes_checkpoint_and_table(trained, capsys):
    assert trained.is_file()


def test_train_json_is_one_document(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code = run(
        [
            "train",
            "--model",
            "resnet20",
            *SMALL,
            "--bits",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "250",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "resnet20" and doc["epochs"] == 1 and 0 <= doc["metrics"]["map_all"] <= 1


def test_evaluate_defaults_to_checkpoint_dataset_and_protocol(trained, capsys):
    capsys.readouterr()
    assert run(["evaluate", str(trained), "--json", "--topk", "50"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dataset"] == "digits"
    assert doc["protocol"] == {"query_per_class": 10, "train_per_class": 50, "val_per_class": 10, "seed": 1}
    m = doc["metrics"]
    assert m["topk"] == 50 and m["n_query"] == 100 and m["n_database"] == 1797 - 700
    assert 0.15 <= m["map_all"] <= 1  # chance is ~0.1
    assert run(["evaluate", str(trained)]) == 0
    table = capsys.readouterr().out
    assert "test mAP@all" in table and "mAP@1000" in table


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--model", "resnet18", "--out", "x.pt"], "resnet18"),
        (["train", "--dataset", "imagenet", "--out", "x.pt"], "imagenet"),
        (["train", "--epochs", "0", "--out", "x.pt"], "--epochs"),
        (["train", "--epochs", "many", "--out", "x.pt"], "--epochs"),
        (["train", "--lr", "-0.1", "--out", "x.pt"], "--lr"),
        (["train", "--loss", "triplet", "--out", "x.pt"], "triplet"),
        (["train", "--dataset", "cifar10", "--out", "x.pt"], "--data-dir"),
        (
            ["train", "--dataset", "digits", "--epochs", "1", "--train-per-class", "500", "--out", "x.pt"],
            "train_per_class",
        ),
    ],
)
def test_train_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


def test_evaluate_bad_input_exits_2(trained, tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    assert run(["evaluate", str(bad)]) == 2
    assert "corrupt" in _one_line_error(capsys)
    assert run(["evaluate", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--topk", "0"]) == 2
    assert "--topk" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--dataset", "mnist-9"]) == 2
    assert "mnist-9" in _one_line_error(capsys)
    assert run(["evaluate", str(trained), "--train-per-class", "1000"]) == 2
    assert "train_per_class" in _one_line_error(capsys)


# --- seeds and devices ---------------------------------------------------------------------------
def _train_seeded(path, seed: int, capsys, *extra: str) -> dict:
    argv = [
        "train",
        "--model",
        "resnet20",
        *SMALL,
        "--bits",
        "16",
        "--epochs",
        "2",
        "--lr",
        "0.003",
        "--batch-size",
        "64",
        "--augment",
        "--seed",
        str(seed),
        "--out",
        str(path),
        "--json",
        *extra,
    ]
    capsys.readouterr()
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)


def _weights(path) -> dict:
    from acpsearch.checkpoint import read_checkpoint

    return read_checkpoint(path)["state_dict"]


def test_train_seed_fixes_weights_and_map(tmp_path, capsys):
    """The same `train --seed` twice: the same initial weights, batch order and augmentation, so
    identical saved weights and test mAP (exact on the CPU); another seed: other weights."""
    import torch

    a = _train_seeded(tmp_path / "a.pt", 0, capsys)
    b = _train_seeded(tmp_path / "b.pt", 0, capsys)
    assert a["device"] == "cpu"
    assert a["metrics"]["map_all"] == b["metrics"]["map_all"]
    assert a["metrics"]["map_topk"] == b["metrics"]["map_topk"]
    wa, wb = _weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = _train_seeded(tmp_path / "c.pt", 1, capsys)
    wc = _weights(tmp_path / "c.pt")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())
    del c


@pytest.mark.parametrize(
    "device,expect",
    [
        ("gpu", "error: --device: must be one of auto, cpu, cuda, cuda:N, got 'gpu'"),
        ("cuda:x", "error: --device: must be one of auto, cpu, cuda, cuda:N, got 'cuda:x'"),
        ("cuda:99", "error: --device: 'cuda:99' asked, but torch sees"),
    ],
)
def test_train_bad_device_is_one_line(tmp_path, capsys, device, expect):
    out = tmp_path / "x.pt"
    assert run(["train", *SMALL, "--epochs", "1", "--device", device, "--out", str(out)]) == 2
    assert _one_line_error(capsys).startswith(expect)
    assert not out.exists()


def test_auto_device_and_evaluate_device(trained, tmp_path, capsys):
    """auto = cuda where torch sees a GPU, else the CPU; evaluate --device cpu = the default."""
    import torch

    from acpsearch.devices import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    capsys.readouterr()
    assert run(["evaluate", str(trained), "--json", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)["metrics"]
    assert run(["evaluate", str(trained), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["map_all"] == on_cpu["map_all"]
    assert run(["evaluate", str(trained), "--device", "tpu"]) == 2
    assert "--device" in _one_line_error(capsys)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="this machine has a GPU: cuda is not an error here")
def test_train_cuda_without_gpu_is_exit_2(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert run(["train", *SMALL, "--epochs", "1", "--device", "cuda", "--out", str(out)]) == 2
    assert _one_line_error(capsys) == (
        "error: --device: 'cuda' asked, but torch sees no CUDA GPU on this machine "
        "(torch.cuda.is_available() is False); use cpu or auto"
    )
    assert not out.exists()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_train_and_evaluate_on_cuda(tmp_path, capsys):
    """One epoch on the GPU: the checkpoint is saved with CPU tensors and evaluates on the CPU too."""
    doc = _train_seeded(tmp_path / "g.pt", 0, capsys, "--device", "cuda")
    assert doc["device"].startswith("cuda") and 0 <= doc["metrics"]["map_all"] <= 1
    assert all(t.device.type == "cpu" for t in _weights(tmp_path / "g.pt").values())
    assert run(["evaluate", str(tmp_path / "g.pt"), "--json", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)["metrics"]["map_all"]
    assert run(["evaluate", str(tmp_path / "g.pt"), "--json", "--device", "cuda:0"]) == 0
    on_gpu = json.loads(capsys.readouterr().out)["metrics"]["map_all"]
    assert abs(on_cpu - on_gpu) < 0.05  # sign flips of near-zero outputs may differ between devices
