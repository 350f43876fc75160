"""ODH: learned centres (MLP + straight-through sign), the hash proxy loss, the two-stage training,
frozen centres in fine-tuning (also of a pruned network), and the CLI train / evaluate path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing import (
    CentreModule,
    OdhConfig,
    OdhLoss,
    create_model,
    get_loss,
    hash_distill,
    hash_proxy_loss,
    load_dataset,
    make_splits,
    train_hash_net,
    train_odh,
)
from acpsearch.hashing.odh import loss_kwargs_from_meta, odh_meta
from acpsearch.hashing.odh_train import Positives

PROTO = {"query_per_class": 10, "train_per_class": 40, "val_per_class": 10, "seed": 0}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_dataset("digits"), **PROTO)


def _class_matrix(classes: int = 10, d: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(classes, d, generator=torch.Generator().manual_seed(seed))


def test_centres_are_pm1_of_the_right_shape_and_learn_through_the_sign():
    cm = CentreModule(_class_matrix(), bits=32)
    h = cm()
    assert h.shape == (10, 32)
    assert set(h.detach().unique().tolist()) == {-1.0, 1.0}
    h.sum().backward()
    grads = [p.grad for p in cm.mlp.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # the STE passes the gradient on
    assert not cm.class_matrix.requires_grad  # W itself is frozen


def test_proxy_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    x = torch.randn(40, 12)
    y = torch.arange(40) % 4
    net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16))
    cm = CentreModule(_class_matrix(4, 8), bits=16)
    opt = torch.optim.Adam([*net.parameters(), *cm.parameters()], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = hash_proxy_loss(torch.tanh(net(x)), cm(), y, 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    # the codes now sit at their class's centre: cosine to it is the largest for every item
    with torch.no_grad():
        sims = torch.tanh(net(x)) @ cm().T
    assert (sims.argmax(1) == y).float().mean() >= 0.9


def test_proxy_loss_is_the_cross_entropy_over_cosine_by_temperature():
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    centres = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    labels = torch.tensor([0, 1])
    cos = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    want = torch.nn.functional.cross_entropy(cos / 0.5, labels)
    assert torch.allclose(hash_proxy_loss(codes, centres, labels, 0.5), want)


def test_distill_rewards_agreeing_groups():
    a = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0]])
    b = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    assert float(hash_distill(a, a, 2, gen)) == pytest.approx(-1.0, abs=1e-5)  # identical codes: cos 1
    assert float(hash_distill(b, b.flip(0), 2, gen)) > -0.5


def test_positives_are_of_the_same_class():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    gen = torch.Generator().manual_seed(1)
    groups = Positives(y, 3).groups(torch.arange(10), 3, gen).view(10, 3)
    assert torch.equal(groups[:, 0], torch.arange(10))
    assert bool((y[groups] == y[:, None]).all())


def test_two_stage_training_selects_on_validation_and_keeps_centres(splits):
    net = create_model("resnet20", 16, in_channels=1, image_size=8)
    w = _class_matrix(10, 16)
    res = train_odh(net, splits, w, OdhConfig(stage2_from=0.5), epochs=2, lr=3e-3, batch_size=32, progress=False)
    stages = [h["stage"] for h in res.train.history]
    assert stages == [1, 2] and res.stage1_epochs == 1
    best = max(h["val_map"] for h in res.train.history)
    assert res.train.best_val_map == pytest.approx(best)
    assert res.centres.shape == (10, 16) and set(res.centres.unique().tolist()) == {-1.0, 1.0}
    assert len(res.centre_distance) == 2


def test_odh_refuses_bad_input(splits):
    net = create_model("resnet20", 16, in_channels=1, image_size=8)
    with pytest.raises(SpecError, match="class matrix has 4 classes"):
        train_odh(net, splits, _class_matrix(4), epochs=1, progress=False)
    with pytest.raises(SpecError, match="needs the learned hash centres"):
        get_loss("odh", 16, 10)
    with pytest.raises(SpecError, match=r"\(10 classes, 16 bits\)"):
        get_loss("odh", 16, 10, centers=torch.ones(10, 8))
    with pytest.raises(SpecError, match="no ODH centres"):
        loss_kwargs_from_meta("odh", {"loss": "csq"})
    assert loss_kwargs_from_meta("csq", {}) == {}


def test_finetune_of_a_pruned_network_reuses_the_stored_frozen_centres(splits):
    from acpsearch.graph import ChannelGraph
    from acpsearch.pruning import PruningStrategy, prune

    net = create_model("resnet20", 16, in_channels=1, image_size=8)
    res = train_odh(net, splits, _class_matrix(10, 16), epochs=1, lr=3e-3, batch_size=32, progress=False)
    meta = {"odh": odh_meta(res.centres, 0.2)}
    ex = torch.zeros(1, 1, 8, 8)
    g = ChannelGraph.from_model(res.train.model, ex)
    pruned = prune(res.train.model, PruningStrategy.uniform(g, keep=0.5, criterion="l1"), ex)
    criterion = get_loss("odh", 16, 10, **loss_kwargs_from_meta("odh", meta))
    assert isinstance(criterion, OdhLoss) and torch.equal(criterion.centers, res.centres)
    assert not any(True for _ in criterion.parameters())  # nothing of the loss is trained
    before = criterion.centers.clone()
    out = train_hash_net(pruned, splits, loss=criterion, epochs=2, lr=1e-3, batch_size=32, progress=False)
    assert torch.equal(criterion.centers, before)  # frozen through the fine-tune
    assert out.history[-1]["loss"] < out.history[0]["loss"] * 1.05


# --- CLI ------------------------------------------------------------------------------------------
SMALL = ["--dataset", "digits", "--query-per-class", "10", "--train-per-class", "40", "--val-per-class", "10"]


def _train(out, *extra: str) -> list[str]:
    return ["train", "--model", "resnet20", *SMALL, "--bits", "16", "--epochs", "4", "--lr", "0.003"] + [
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def odh_ckpt(tmp_path_factory):
    from acpsearch.cli import run

    out = tmp_path_factory.mktemp("odh") / "odh.pt"
    assert run(_train(out, "--loss", "odh", "--json")) == 0
    return out


def test_cli_trains_odh_stores_centres_and_loads(odh_ckpt, capsys):
    import acpsearch
    from acpsearch.checkpoint import read_checkpoint
    from acpsearch.cli import run

    meta = read_checkpoint(odh_ckpt)["meta"]
    assert meta["loss"] == "odh" and meta["odh"]["teacher"] is None and meta["odh"]["teacher_epochs"] == 1
    c = torch.tensor(meta["odh"]["centers"])
    assert c.shape == (10, 16) and set(c.unique().tolist()) == {-1, 1}
    model = acpsearch.load_model(odh_ckpt)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 16)
    capsys.readouterr()
    assert run(["evaluate", str(odh_ckpt), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert 0.12 < m["map_all"] <= 1  # chance is about 0.1


def test_cli_odh_with_a_classifier_teacher_and_bad_teachers(odh_ckpt, tmp_path, capsys):
    from acpsearch.checkpoint import read_checkpoint, save_classifier_checkpoint
    from acpsearch.classification import create_classifier
    from acpsearch.cli import run

    teacher = tmp_path / "cls.pt"
    assert run(_train(teacher, "--task", "classification")[:1] + _cls_args(teacher)) == 0
    out = tmp_path / "t.pt"
    assert run(_train(out, "--loss", "odh", "--teacher", str(teacher), "--epochs", "2")) == 0
    assert read_checkpoint(out)["meta"]["odh"]["teacher"] == str(teacher)
    capsys.readouterr()
    # a hash network is not a classifier; a classifier of 3 classes does not fit digits' 10
    three = tmp_path / "three.pt"
    save_classifier_checkpoint(three, create_classifier("resnet20", 3, 1, 8), "resnet20", 3, 1, 8, meta={})
    for bad, needle in ((odh_ckpt, "not a classifier"), (three, "3 classes"), (tmp_path / "no.pt", "not found")):
        assert run(_train(tmp_path / "x.pt", "--loss", "odh", "--teacher", str(bad))) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --teacher:") and needle in err and "\n" not in err
        assert not (tmp_path / "x.pt").exists()
    assert run(_train(tmp_path / "x.pt", "--loss", "csq", "--teacher", str(teacher))) == 2
    assert "only with --loss odh" in capsys.readouterr().err


def _cls_args(out) -> list[str]:
    return ["--task", "classification", "--model", "resnet20", *SMALL, "--epochs", "2", "--out", str(out)]
