"""Rankers share one interface and measure what they claim, on a small real hash net (digits)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import acpsearch as acp
from acpsearch.encoder import FunctionalProbe, recalibrate_bn, train_encoder
from acpsearch.errors import SpecError
from acpsearch.hashing import create_model, load_dataset, make_splits, train_hash_net
from acpsearch.search.rankers import (
    RANKERS,
    AdaptiveBNRanker,
    CodeAgreementRanker,
    L1RetainedRanker,
    RandomRanker,
    SimilarityRanker,
    make_ranker,
)
from acpsearch.search.space import Budget, DynamicSpace


@pytest.fixture(scope="module")
def setup():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets on a shared 2-core machine: one thread is much faster
    torch.manual_seed(0)
    splits = make_splits(load_dataset("digits"), query_per_class=10, train_per_class=60, val_per_class=10, seed=0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8)
    res = train_hash_net(model, splits, epochs=3, lr=3e-3, batch_size=64, progress=False, channels_last=False)
    model = res.model.eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, 1, 8, 8)
    g = acp.ChannelGraph.from_model(model, x)
    space = DynamicSpace(g, Budget(flops=0.5))
    cands = [acp.PruningStrategy.uniform(g, 1.0)] + space.sample_many(5, random.Random(0))
    yield model, splits, x, g, cands
    torch.set_num_threads(old)


def test_all_rankers_share_the_interface(setup) -> None:
    model, splits, x, g, cands = setup
    enc = train_encoder(g, "sacp", n_strategies=32, epochs=3, encoder_config={"hidden": 16, "embed_dim": 8}).encoder
    ctx = dict(
        encoder=enc,
        graph=g,
        model=model,
        splits=splits,
        example_input=x,
        calib_X=splits.train[0],
        probe_X=splits.val[0],
        calib_batches=2,
    )
    for name in RANKERS:
        r = make_ranker(name, **ctx)
        scores = r.score(cands)
        assert r.name == name
        assert isinstance(scores, np.ndarray) and scores.shape == (len(cands),) and np.all(np.isfinite(scores))
        assert r.last_seconds > 0
    with pytest.raises(SpecError, match="unknown ranker"):
        make_ranker("oracle", **ctx)


def test_functional_rankers_put_the_unpruned_net_first(setup) -> None:
    model, splits, x, g, cands = setup
    agree = CodeAgreementRanker(model, x, splits.train[0], splits.val[0]).score(cands)
    assert agree[0] == pytest.approx(1.0)
    assert np.all(agree[1:] < 1.0) and np.all(agree >= 0.0)
    abn = AdaptiveBNRanker(model, splits, x, calib_batches=2, batch_size=64).score(cands)
    assert np.all((abn >= 0) & (abn <= 1))
    assert abn[0] >= abn[1:].max() - 0.05  # the full net is (nearly) the best by val mAP
    assert abn[0] > 0.3  # a trained net retrieves far above chance (0.1)


def test_branch_damage_ranker(setup) -> None:
    """The encoder target's second signal: built by name like the study's rankers, 1.0 for the
    unpruned net, lower for every pruned candidate; the agreement ranker's probe data."""
    model, splits, x, g, cands = setup
    r = make_ranker(
        "branch_damage", graph=g, model=model, example_input=x, calib_X=splits.train[0], probe_X=splits.val[0]
    )
    scores = r.score(cands)
    assert r.name == "branch_damage" and "branch_damage" not in RANKERS  # not a study ranker
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(scores[1:] < 1.0) and np.all(np.isfinite(scores)) and r.last_seconds > 0


def test_ft_steps_ranker_is_the_validation_map_after_a_short_fine_tune(setup) -> None:
    """The encoder's ft_steps target: the same number as fine-tuning the pruned net `steps` steps
    with the recipe and reading its validation mAP; deterministic; 0 steps refused."""
    from acpsearch.hashing import validation_map

    model, splits, x, g, cands = setup
    recipe = {"loss": "csq", "lr": 1e-3, "batch_size": 64, "seed": 0}
    r = make_ranker("ft_steps", model=model, splits=splits, example_input=x, steps=3, recipe=recipe)
    scores = r.score(cands[:3])
    assert r.name == "ft_steps" and "ft_steps" not in RANKERS  # not a study ranker: an encoder target
    assert np.all((scores > 0) & (scores <= 1)) and r.last_seconds > 0
    assert np.array_equal(scores, r.score(cands[:3]))  # same seed, same base: same value
    net = acp.prune(model, cands[1], x)
    res = train_hash_net(net, splits, epochs=1, max_batches=3, eval_every=1, progress=False, **recipe)
    assert scores[1] == pytest.approx(float(validation_map(res.model, splits)), abs=1e-6)
    assert scores[1] == pytest.approx(res.best_val_map, abs=1e-6)
    with pytest.raises(SpecError, match="ft_steps"):
        make_ranker("ft_steps", model=model, splits=splits, example_input=x, steps=0)


def test_l1_retained_is_the_kept_importance_share(setup) -> None:
    _, _, _, g, _ = setup
    r = L1RetainedRanker(g)
    full, half, quarter = r.score([acp.PruningStrategy.uniform(g, k) for k in (1.0, 0.5, 0.25)])
    assert full == pytest.approx(1.0)
    assert 1.0 > half > quarter > 0.0
    assert half > 0.5  # the kept channels are the most important ones: more than half the mass


def test_random_ranker_is_seeded() -> None:
    a = RandomRanker(3).score(range(10))
    b = RandomRanker(3).score(range(10))
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10


def test_similarity_ranker_matches_encoder(setup) -> None:
    _, _, _, g, cands = setup
    enc = train_encoder(g, "sacp", n_strategies=32, epochs=2, encoder_config={"hidden": 16, "embed_dim": 8}).encoder
    scores = SimilarityRanker(enc, g).score(cands)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(scores, enc.similarity(g, cands).numpy(), atol=1e-6)


def test_bn_recalibration_changes_running_stats(setup) -> None:
    model, splits, x, g, cands = setup
    probe = FunctionalProbe(model, x, splits.train[0][:128], splits.val[0])
    net = acp.prune(model, cands[1], x)
    before = [m.running_mean.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    recalibrate_bn(net, splits.train[0][:128], batch_size=64)
    after = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.allclose(a, b) for a, b in zip(before, after))
    assert not net.training
    assert probe.pruned(cands[1]) is not None
