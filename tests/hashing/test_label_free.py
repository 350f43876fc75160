"""Label-free training and scoring on sklearn digits: neighbour mAP, the inductive LAGNH loss, the
unstratified splits, and the proof that labels cannot reach training, validation or the adaptive-BN
ranker (shuffled labels: bit-identical weights, scores and codes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from acpsearch.errors import DataError, SpecError
from acpsearch.hashing import create_model, get_loss, load_dataset, make_splits, train_hash_net
from acpsearch.hashing.labelfree import NeighbourScore, neighbour_map, neighbour_relevance, unlabelled
from acpsearch.hashing.lagnh_setup import label_free_setup

PROTO = {"query_per_class": 10, "train_per_class": 30, "val_per_class": 10, "seed": 0}


def _codes(n: int, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(n, bits, generator=g) < 0.5, 1.0, -1.0)


def test_neighbour_map_is_one_for_the_reference_itself_and_lower_for_others():
    q, d = _codes(20, 16, 0), _codes(200, 16, 1)
    assert neighbour_map(q, d, q, d, k=10) == pytest.approx(1.0)
    other = neighbour_map(_codes(20, 16, 2), _codes(200, 16, 3), q, d, k=10)
    assert 0 < other < 0.5
    # a few flipped bits keep most of the neighbourhoods
    noisy_d = d.clone()
    noisy_d[:, 0] *= -1
    noisy_q = q.clone()
    noisy_q[:, 0] *= -1
    assert neighbour_map(noisy_q, noisy_d, q, d, k=10) == pytest.approx(1.0)  # one bit flipped everywhere: same order
    noisy_d[::2, 1] *= -1
    assert other < neighbour_map(noisy_q, noisy_d, q, d, k=10) < 1.0


def test_neighbour_relevance_counts_ties_and_checks_shapes():
    ref_q = torch.tensor([[1.0, 1.0]])
    ref_d = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    ql, dl = neighbour_relevance(ref_q, ref_d, k=2)
    # the nearest (distance 0) and both items at distance 1 (tied with the 2nd): three relevant
    assert ql.tolist() == [[1.0]] and dl[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(DataError, match="neighbours"):
        neighbour_relevance(ref_q, torch.zeros(3, 5))
    with pytest.raises(DataError, match="k must be >= 1"):
        neighbour_relevance(ref_q, ref_d, k=0)


def test_lagnh_loss_trains_its_tag_layers_and_discriminator():
    torch.manual_seed(0)
    loss = get_loss("lagnh", 8, 10, tag_dim=5)
    h = torch.randn(16, 8, requires_grad=True)
    tags = (torch.rand(16, 5) < 0.4).float()
    disc_before = [p.detach().clone() for p in loss.disc.parameters()]
    value = loss(h, tags)
    value.backward()
    assert torch.isfinite(value) and h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.generator_parameters())
    # the discriminator took its own step inside forward (and the generator loss left it alone)
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, loss.disc.parameters()))
    loss.eval()
    frozen = [p.detach().clone() for p in loss.disc.parameters()]
    loss(h.detach(), tags)
    assert all(torch.equal(a, b) for a, b in zip(frozen, loss.disc.parameters()))  # eval: no step
    with pytest.raises(SpecError, match="tag_dim"):
        get_loss("lagnh", 8, 10)
    with pytest.raises(SpecError, match=r"\(batch, 5\) tags"):
        loss(h, torch.zeros(16))  # labels instead of tags


def test_unstratified_splits_ignore_the_labels():
    ds = load_dataset("digits")
    shuffled = dataclasses.replace(
        ds, labels=ds.labels[torch.randperm(len(ds), generator=torch.Generator().manual_seed(5))]
    )
    a, b = make_splits(ds, **PROTO, stratify=False), make_splits(shuffled, **PROTO, stratify=False)
    for part in ("query", "train", "val", "database"):
        assert torch.equal(a.indices[part], b.indices[part])
    assert a.sizes()["train"] == 300 and a.sizes()["val"] == 100  # the same totals as per class x 10
    # the stratified protocol does depend on them
    assert not torch.equal(make_splits(ds, **PROTO).indices["train"], make_splits(shuffled, **PROTO).indices["train"])
    plain = unlabelled(a, torch.ones(300, 3))
    assert plain.train[1].shape == (300, 3) and int(plain.val[1].abs().sum()) == 0 and plain.query[0].shape[0] == 0


def _label_free_run(labels_seed: int | None) -> tuple[torch.nn.Module, list[float], torch.Tensor]:
    """Base training of lagnh on digits, labels shuffled by `labels_seed` (None: the true ones)."""
    torch.manual_seed(0)
    ds = load_dataset("digits")
    if labels_seed is not None:
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(labels_seed))
        ds = dataclasses.replace(ds, labels=ds.labels[perm])
    splits = make_splits(ds, **PROTO, stratify=False)
    lf = label_free_setup(splits, "kmeans", seed=0)
    torch.manual_seed(0)
    net = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    res = train_hash_net(net, lf.splits, loss="lagnh", epochs=2, lr=0.003, batch_size=64, progress=False, **_kw(lf))
    return res.model, [h["val_map"] for h in res.history], lf.splits.train[1]


def _kw(lf: object) -> dict[str, object]:
    return {"loss_kwargs": lf.loss_kwargs, "val_score": lf.val_score}  # type: ignore[attr-defined]


def test_shuffled_labels_give_bit_identical_training_and_ranking():
    from acpsearch.graph import ChannelGraph
    from acpsearch.pruning import PruningStrategy
    from acpsearch.search.rankers import make_ranker

    a_net, a_curve, a_tags = _label_free_run(None)
    b_net, b_curve, b_tags = _label_free_run(11)
    assert torch.equal(a_tags, b_tags) and a_curve == b_curve
    for (ka, va), (kb, vb) in zip(a_net.state_dict().items(), b_net.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert all(0 < v <= 1 for v in a_curve)
    # the adaptive-BN ranker in a label-free study scores by neighbour mAP against the unpruned net
    ds = load_dataset("digits")
    splits = unlabelled(make_splits(ds, **PROTO, stratify=False))
    ex = torch.zeros(1, 1, 8, 8)
    graph = ChannelGraph.from_model(a_net, ex)
    ranker = make_ranker(
        "adaptive_bn",
        model=a_net,
        splits=splits,
        example_input=ex,
        graph=graph,
        select="neighbour_map",
        calib_batches=2,
    )
    keep_all = PruningStrategy(graph, {g.name: 1.0 for g in graph.groups})
    half = PruningStrategy(graph, {g.name: 0.3 for g in graph.groups})
    scores = ranker.score([keep_all, half])
    # keeping every channel (BN recalibrated on 2 batches) stays near the reference; 30% falls away
    assert 0.5 < scores[0] <= 1.0 and scores[1] < scores[0]
    ref = NeighbourScore(splits, reference=a_net)
    assert ref(a_net) == pytest.approx(1.0)
    assert np.isfinite(scores).all()
