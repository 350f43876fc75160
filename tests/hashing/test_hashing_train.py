"""Training / encoding / evaluation on digits, fine-tuning hooks, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import acpsearch
from acpsearch.checkpoint import save_zoo_checkpoint
from acpsearch.errors import SpecError
from acpsearch.hashing import (
    checkpoint_meta,
    create_model,
    encode,
    evaluate,
    load_dataset,
    make_splits,
    train_hash_net,
    validation_map,
)
from acpsearch.hashing.train import augment_batch


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_dataset("digits"), query_per_class=20, train_per_class=100, val_per_class=20, seed=0)


def _mlp(bits: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, bits))


def test_train_and_evaluate_reach_map_085_on_digits(splits):
    res = train_hash_net(_mlp(), splits, loss="csq", epochs=25, batch_size=64, seed=0, progress=False)
    m = evaluate(res.model, splits, topk=100)
    assert m["map_all"] >= 0.85, m
    assert m["map_topk"] >= m["map_all"] - 0.05
    assert m["n_query"] == 200 and m["n_database"] == 1797 - 1400 and m["topk"] == 100
    assert 0 < m["precision_at_n"] <= 1
    # the kept model is the best epoch by validation mAP
    assert res.best_val_map == pytest.approx(max(h["val_map"] for h in res.history))
    assert validation_map(res.model, splits) == pytest.approx(res.best_val_map)
    assert m["val_map"] == pytest.approx(res.best_val_map)


def test_seeded_training_is_reproducible(splits):
    a = train_hash_net(_mlp(16), splits, epochs=2, progress=False, seed=3)
    b = train_hash_net(_mlp(16), splits, epochs=2, progress=False, seed=3)
    assert torch.equal(encode(a.model, splits.query[0]), encode(b.model, splits.query[0]))


def test_encode_gives_pm1_codes(splits):
    codes = encode(_mlp(12), splits.query[0], batch_size=7)
    assert codes.shape == (200, 12) and set(codes.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="no CUDA device (the GPU path ran in benchmarks/structure_sweep.py)",
            ),
        ),
    ],
)
def test_training_runs_on_the_models_device(splits, device):
    from acpsearch.hashing.encoding import model_device

    assert model_device(nn.ReLU()) == torch.device("cpu")  # parameterless: the CPU
    net = _mlp(16).to(device)
    teacher = _mlp(16).to(device)
    res = train_hash_net(net, splits, epochs=2, progress=False, teacher=teacher, distill=1.0)
    assert model_device(res.model).type == device and model_device(teacher).type == device
    codes = encode(res.model, splits.query[0])
    assert codes.device.type == "cpu" and codes.shape == (200, 16)  # the numpy metrics read them
    assert evaluate(res.model, splits, topk=50)["map_all"] > 0.3


class TupleNet(nn.Module):
    """A fine-tuned pruned net may return (features, code): the last element is the code."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU())
        self.hash_layer = nn.Linear(128, 16)

    def forward(self, x):
        f = self.body(x)
        return f, self.hash_layer(f)


def test_tuple_output_callback_stop_and_max_batches(splits):
    seen = []
    res = train_hash_net(
        TupleNet(), splits, epochs=10, progress=False, callback=lambda e, v: seen.append((e, v)) or e >= 3
    )
    assert [e for e, _ in seen] == [1, 2, 3] and res.epochs_run == 3 and res.stopped_early
    assert all(0 <= v <= 1 for _, v in seen)
    res2 = train_hash_net(TupleNet(), splits, epochs=10, batch_size=100, max_batches=25, progress=False)
    assert res2.epochs_run == 3  # 10 batches per epoch -> 25 batches end inside epoch 3
    res3 = train_hash_net(TupleNet(), splits, epochs=50, time_budget_s=0.0, progress=False)
    assert res3.epochs_run == 1 and res3.stopped_early


def test_progress_display_runs(splits, capsys):
    train_hash_net(_mlp(8), splits, epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "val mAP" in err


def test_bad_training_arguments(splits):
    with pytest.raises(SpecError, match="epochs"):
        train_hash_net(_mlp(), splits, epochs=0)
    with pytest.raises(SpecError, match="lr"):
        train_hash_net(_mlp(), splits, lr=-1)
    with pytest.raises(SpecError, match="loss"):
        train_hash_net(_mlp(), splits, loss="nope")
    with pytest.raises(SpecError, match="finetune.distill: needs the unpruned network as teacher"):
        train_hash_net(_mlp(), splits, distill=1.0)
    with pytest.raises(SpecError, match="finetune.distill: must be a number >= 0"):
        train_hash_net(_mlp(), splits, distill=-1.0, teacher=_mlp())


def test_distillation_keeps_the_students_codes_near_the_teachers(splits):
    """With a heavy distillation weight a student agrees with the frozen teacher's codes on unseen
    queries far more than the same run without it; the teacher's weights do not move. Half of the
    teacher's bits are flipped, so agreement cannot come from the shared hash centres alone."""
    teacher = train_hash_net(_mlp(), splits, epochs=10, batch_size=64, seed=0, progress=False).model
    with torch.no_grad():
        teacher[-1].weight[:16].neg_()
        teacher[-1].bias[:16].neg_()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    t_codes = encode(teacher, splits.query[0])

    def student(distill: float) -> float:
        torch.manual_seed(5)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        res = train_hash_net(
            net,
            splits,
            epochs=6,
            batch_size=64,
            seed=1,
            progress=False,
            teacher=teacher if distill else None,
            distill=distill,
        )
        return float((encode(res.model, splits.query[0]) == t_codes).float().mean())

    plain, distilled = student(0.0), student(20.0)
    assert plain < 0.6 and distilled >= 0.75, (plain, distilled)  # measured: 0.50 and 0.84
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_augment_batch_shifts_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, g, pad=0, hflip=False), x)
    y = augment_batch(x, g, pad=1, hflip=False)
    assert y.shape == x.shape
    for i in range(2):  # each output is x shifted by at most one pixel (zeros shifted in)
        ok = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.nn.functional.pad(x[i], (1, 1, 1, 1))[:, 1 + dy : 5 + dy, 1 + dx : 5 + dx]
                ok |= torch.equal(shifted, y[i])
        assert ok
    flips = augment_batch(x.repeat(50, 1, 1, 1), g, pad=0, hflip=True)
    n_flipped = sum(torch.equal(f, x[0].flip(2)) for f in flips[0::2])
    assert 5 < n_flipped < 45


def test_checkpoint_round_trip_with_load_model(splits, tmp_path):
    net = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    res = train_hash_net(net, splits, epochs=2, progress=False, augment=True)
    metrics = evaluate(res.model, splits, topk=50)
    meta = checkpoint_meta(splits, "csq", res, metrics)
    path = save_zoo_checkpoint(tmp_path / "r20.pt", res.model, "resnet20", 16, 1, 8, meta)
    loaded = acpsearch.load_model(path)
    assert not loaded.training
    assert torch.equal(encode(loaded, splits.database[0]), encode(res.model, splits.database[0]))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model"] == {"zoo": "resnet20", "kwargs": {"bits": 16, "in_channels": 1, "image_size": 8}}
    assert ckpt["meta"]["dataset"] == "digits" and ckpt["meta"]["protocol"]["train_per_class"] == 100
    assert ckpt["meta"]["metrics"]["map_all"] == pytest.approx(metrics["map_all"])
    assert ckpt["meta"]["epochs"] == 2 and ckpt["meta"]["loss"] == "csq"
