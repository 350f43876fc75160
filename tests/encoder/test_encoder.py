"""StructureEncoder: batched embeddings, contrastive training lowers the loss and separates
positives from negatives, the effect objective learns an ordering, weights-only save/load."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import stats

import acpsearch as acp
from acpsearch.encoder import GraphBatcher, StructureEncoder, info_nce, random_ratios, soft_info_nce, train_encoder
from acpsearch.errors import CheckpointError, SpecError
from acpsearch.hashing import create_model


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=12).eval()
    # channels of clearly different magnitude, as in a trained net (at random init all L1 norms
    # are alike and "L1-chosen" vs "random" channels are nearly the same strategy)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.exp(torch.randn(m.out_channels)).view(-1, 1, 1, 1))
    x = torch.randn(1, 1, 12, 12)
    return model, x, acp.ChannelGraph.from_model(model, x)


def test_embeddings_are_unit_and_batched_equals_single(small) -> None:
    _, _, g = small
    batcher = GraphBatcher(g)
    enc = StructureEncoder(batcher.in_dim, hidden=32, embed_dim=16)
    rng = random.Random(0)
    strategies = [acp.PruningStrategy(g, random_ratios(g, rng)) for _ in range(7)]
    z = enc.embed(g, strategies)
    assert z.shape == (7, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(7), atol=1e-5)
    single = torch.cat([enc.embed(g, [s]) for s in strategies])
    assert torch.allclose(z, single, atol=1e-5)
    sim = enc.similarity(g, [acp.PruningStrategy.uniform(g, keep=1.0)] + strategies)
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    assert torch.all(sim <= 1.0 + 1e-5)


def test_losses_behave() -> None:
    a = torch.nn.functional.normalize(torch.tensor([1.0, 0.0]), dim=0)
    good = info_nce(a, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    bad = info_nce(a, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert float(good) < 0.01 < 1.0 < float(bad)
    items = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.5, 0.5], [0.0, 1.0]]), dim=1)
    ordered = soft_info_nce(a, items, torch.tensor([3.0, 2.0, 1.0]))
    reversed_ = soft_info_nce(a, items, torch.tensor([1.0, 2.0, 3.0]))
    assert float(ordered) < float(reversed_)


def test_sacp_training_lowers_loss_and_separates_positives(small) -> None:
    _, _, g = small
    res = train_encoder(g, "sacp", n_strategies=96, epochs=25, seed=0, encoder_config={"hidden": 32, "embed_dim": 16})
    assert len(res.losses) == 25
    assert res.losses[-1] < 0.5 * res.losses[0]
    # held-out strategies: L1-chosen channels are closer to the unpruned net than random ones
    rng = random.Random(123)
    ratios = [random_ratios(g, rng) for _ in range(40)]
    pos = res.encoder.similarity(g, [acp.PruningStrategy(g, r, criterion="l1") for r in ratios])
    neg = res.encoder.similarity(
        g, [acp.PruningStrategy(g, r, criterion="random", seed=i) for i, r in enumerate(ratios)]
    )
    assert float((pos > neg).float().mean()) >= 0.9
    assert float(pos.mean() - neg.mean()) > 0.1


def test_effect_training_learns_the_signal_order(small) -> None:
    _, _, g = small
    rng = random.Random(0)
    names = [grp.name for grp in g.groups]
    # a synthetic effect signal: keeping the EARLY groups matters most (as measured on ResNet-20)
    weights = np.linspace(1.0, 0.1, len(names))

    def signal(r: dict[str, float]) -> float:
        return float(sum(w * r[n] for w, n in zip(weights, names)))

    train = [random_ratios(g, rng) for _ in range(160)]
    test = [random_ratios(g, rng) for _ in range(60)]
    res = train_encoder(
        g,
        "effect",
        strategies=[acp.PruningStrategy(g, r) for r in train],
        signal=[signal(r) for r in train],
        epochs=40,
        seed=0,
        encoder_config={"hidden": 32, "embed_dim": 16},
    )
    assert res.losses[-1] < res.losses[0]
    sim = res.encoder.similarity(g, [acp.PruningStrategy(g, r) for r in test]).numpy()
    rho = stats.spearmanr(sim, [signal(r) for r in test]).statistic
    assert rho > 0.7, rho


def test_effect_needs_signal(small) -> None:
    _, _, g = small
    with pytest.raises(SpecError, match="effect"):
        train_encoder(g, "effect", strategies=[acp.PruningStrategy.uniform(g, 0.5)])
    with pytest.raises(SpecError, match="encoder.objective"):
        train_encoder(g, "nope")


def test_save_load_weights_only(small, tmp_path) -> None:
    _, _, g = small
    batcher = GraphBatcher(g)
    enc = StructureEncoder(batcher.in_dim, hidden=24, embed_dim=8, layers=2)
    enc.fit_normalizer(batcher.unpruned_x + 1.0)
    path = enc.save(tmp_path / "enc.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"in_dim": batcher.in_dim, "hidden": 24, "embed_dim": 8, "layers": 2, "dropout": 0.0}
    back = StructureEncoder.load(path)
    s = [acp.PruningStrategy.uniform(g, 0.5), acp.PruningStrategy.uniform(g, 0.8)]
    assert torch.allclose(enc.embed(g, s), back.embed(g, s))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="encoder"):
        StructureEncoder.load(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="encoder"):
        StructureEncoder.from_state({"format": "other"})


def test_dense_path_equals_pyg_path(small) -> None:
    _, _, g = small
    batcher = GraphBatcher(g)
    torch.manual_seed(1)
    enc = StructureEncoder(batcher.in_dim, hidden=16, embed_dim=8).eval()
    rng = random.Random(1)
    feats = batcher.features([acp.PruningStrategy(g, random_ratios(g, rng)) for _ in range(5)])
    with torch.no_grad():
        dense = batcher.forward(enc, feats)
        sparse = enc(*batcher.batch(feats))
    assert torch.allclose(dense, sparse, atol=1e-5)


def test_rank_average_of_two_signals() -> None:
    from acpsearch.encoder import rank_average

    # ranks [1, 3, 2] and [3, 1, 2]: every strategy averages rank 2 of 3
    assert rank_average([0.1, 0.3, 0.2], [3.0, 1.0, 2.0]) == pytest.approx([2 / 3] * 3)
    assert rank_average([0.5, 0.9], [0.1, 0.2]) == pytest.approx([0.5, 1.0])  # best in both: 1.0
