"""The search's functional signals on a classifier: the probe's agreement of top-1 predictions and
adaptive BN's validation top-1 (``task="classification"``), through the generic pruning / search
libraries (which never import acpsearch.classification)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import acpsearch as acp
from acpsearch.classification import classification_splits, create_classifier, evaluate_classifier, train_classifier
from acpsearch.errors import SpecError
from acpsearch.hashing import load_dataset
from acpsearch.pruning import FunctionalProbe, recalibrate_bn
from acpsearch.pruning.probe import prediction_agreement, softened_kl_agreement
from acpsearch.search.rankers import RANKERS, make_ranker
from acpsearch.search.space import Budget, DynamicSpace


@pytest.fixture(scope="module")
def setup():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    splits = classification_splits(load_dataset("digits"), train_per_class=60, val_per_class=15, seed=0)
    torch.manual_seed(0)
    model = create_classifier("resnet20", splits.num_classes, in_channels=1, image_size=8)
    model = train_classifier(model, splits, epochs=3, lr=3e-3, batch_size=64, seed=0).model.eval()
    x = torch.zeros(1, 1, 8, 8)
    g = acp.ChannelGraph.from_model(model, x)
    space = DynamicSpace(g, Budget(flops=0.3))
    cands = [acp.PruningStrategy.uniform(g, 1.0), *space.sample_many(4, random.Random(0))]
    yield model, splits, x, g, cands
    torch.set_num_threads(old)


def test_the_probe_compares_top1_predictions(setup) -> None:
    model, splits, x, _g, cands = setup
    probe_X = splits.val[0]
    probe = FunctionalProbe(model, x, splits.train[0][:256], probe_X, calib_batch_size=64, task="classification")
    assert probe.base_codes.shape == (len(probe_X), 10)  # the reference is the logits, not +1/-1 codes
    agree = probe.agreement(cands)
    assert agree[0] == pytest.approx(1.0)
    assert np.all((agree >= 0) & (agree <= 1)) and np.all(agree[1:] < 1.0)
    # a fraction of probe items: a multiple of 1 / n
    assert np.allclose(agree * len(probe_X), np.round(agree * len(probe_X)), atol=1e-6)
    # the retrieval probe on the same classifier compares signs of the logits instead: another signal
    codes = FunctionalProbe(model, x, splits.train[0][:256], probe_X, calib_batch_size=64).agreement(cands[1:])
    assert not np.allclose(codes, agree[1:])
    with pytest.raises(SpecError, match="task"):
        FunctionalProbe(model, x, splits.train[0][:64], probe_X, task="detection")


def test_agreement_measures() -> None:
    ref = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert prediction_agreement(ref, ref) == 1.0 and softened_kl_agreement(ref, ref) == pytest.approx(1.0)
    flipped = ref.flip(1)
    assert prediction_agreement(flipped, ref) == 0.0 and softened_kl_agreement(flipped, ref) < 1.0


def test_adaptive_bn_scores_validation_top1(setup) -> None:
    model, splits, x, g, cands = setup
    ctx = dict(model=model, splits=splits, example_input=x, calib_batches=2, graph=g)
    abn = make_ranker("adaptive_bn", task="classification", **ctx)
    scores = abn.score(cands)
    assert np.all((scores >= 0) & (scores <= 1)) and scores[0] >= scores[1:].max()
    # the unpruned candidate: the top-1 of the net with batch norm recalibrated on the calibration batches
    calibrated = recalibrate_bn(acp.prune(model, cands[0], x), abn.probe.calib_X, 128)
    assert scores[0] == pytest.approx(evaluate_classifier(calibrated, *splits.val)["top1"])
    assert scores[0] > 0.8  # a trained digits classifier; chance is 0.1
    agree = make_ranker(
        "code_agreement", task="classification", calib_X=splits.train[0][:256], probe_X=splits.val[0], **ctx
    )
    assert agree.score(cands[:1])[0] == pytest.approx(1.0)
    with pytest.raises(SpecError, match="task"):
        make_ranker("random", task="detection")
    assert "adaptive_bn" in RANKERS and make_ranker("random").name == "random"  # retrieval stays the default
