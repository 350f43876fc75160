"""LAGNH on digits features: both variants and the no-tags ablation train (losses fall), give +-1
codes, and inductive encoding does not depend on which other images are encoded alongside."""

from __future__ import annotations

import numpy as np
import pytest

from acpsearch.errors import SpecError
from acpsearch.hashing import mean_average_precision
from acpsearch.hashing.unsupervised import LAGNHConfig, fit_aux, fit_lagnh

SMALL = {"bits": 16, "embed": 32, "hidden": 64, "epochs": 8, "batch": 300, "lr": 1e-3}


@pytest.fixture(scope="module")
def tagged(digits_feats):
    aux = fit_aux(digits_feats["train"][0], seed=0)
    return {k: aux.transform(v[0]) for k, v in digits_feats.items()}


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_lagnh_trains_and_codes_are_pm1(digits_feats, tagged, variant):
    xt = digits_feats["train"][0]
    model = fit_lagnh(xt, tagged["train"], LAGNHConfig(variant=variant, **SMALL))
    first, last = model.history[0], model.history[-1]
    assert last["total"] < first["total"]
    assert last["recons"] < first["recons"]
    assert model.cfg.g_steps == (5 if variant == "code" else 1)
    (xq, yq), (xd, yd) = digits_feats["query"], digits_feats["database"]
    for mode in ("inductive", "batch"):
        cq = model.encode(xq, tagged["query"], mode=mode)
        assert cq.shape == (len(xq), 16) and set(np.unique(cq)) <= {-1.0, 1.0}
    cq, cd = model.encode(xq, tagged["query"]), model.encode(xd, tagged["database"])
    assert mean_average_precision(cq, cd, yq, yd) > 0.3  # chance on ten classes is about 0.1


def test_inductive_codes_do_not_depend_on_the_other_images(digits_feats, tagged):
    model = fit_lagnh(digits_feats["train"][0], tagged["train"], LAGNHConfig(**{**SMALL, "epochs": 2}))
    xq, tq = digits_feats["query"][0], tagged["query"]
    perm = np.random.default_rng(0).permutation(len(xq))
    whole = model.encode(xq, tq, chunk=37)
    assert np.array_equal(model.encode(xq[perm], tq[perm], chunk=64), whole[perm])
    assert np.array_equal(model.encode(xq[:5], tq[:5]), whole[:5])


def test_lagnh_without_tags_and_bad_settings(digits_feats, tagged):
    xt = digits_feats["train"][0]
    model = fit_lagnh(xt, None, LAGNHConfig(use_tags=False, **SMALL))
    # without tags the reconstruction target is the (moving) visual graph, so the total is not
    # comparable across epochs; the quantisation term must still fall and there is no tag term
    assert model.history[-1]["quant"] < model.history[0]["quant"] and model.history[-1]["tag"] == 0.0
    assert model.encode(digits_feats["query"][0]).shape == (len(digits_feats["query"][0]), 16)
    with pytest.raises(SpecError, match="lagnh.variant: must be one of paper, code"):
        fit_lagnh(xt, tagged["train"], LAGNHConfig(variant="github"))
    with pytest.raises(SpecError, match="no tags were given"):
        fit_lagnh(xt, None, LAGNHConfig(**SMALL))
    tagged_model = fit_lagnh(xt, tagged["train"], LAGNHConfig(**{**SMALL, "epochs": 1}))
    with pytest.raises(SpecError, match="pass the tags"):
        tagged_model.encode(digits_feats["query"][0])
