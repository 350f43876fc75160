"""LSH / PCAH / ITQ / BiHalf on digits features: +-1 codes and the orderings that must hold."""

from __future__ import annotations

import numpy as np
import torch

from acpsearch.hashing import mean_average_precision
from acpsearch.hashing.unsupervised import bihalf, fit_bihalf, fit_itq, fit_lsh, fit_pcah


def _map(h, feats):
    (xq, yq), (xd, yd) = feats["query"], feats["database"]
    return mean_average_precision(h.encode(xq), h.encode(xd), yq, yd)


def test_itq_beats_lsh_at_32_bits(digits_feats):
    xt = digits_feats["train"][0]
    itq = _map(fit_itq(xt, 32, seed=0), digits_feats)
    lsh = [_map(fit_lsh(xt, 32, seed=s), digits_feats) for s in range(3)]
    assert itq > 0.6  # measured 0.652
    assert itq > max(lsh) + 0.08  # measured LSH 0.50-0.52 over seeds


def test_codes_are_pm1_and_itq_rotation_is_orthogonal(digits_feats):
    xt, xq = digits_feats["train"][0], digits_feats["query"][0]
    for h in (fit_lsh(xt, 16), fit_pcah(xt, 16), fit_itq(xt, 16)):
        c = h.encode(xq)
        assert c.shape == (len(xq), 16) and set(np.unique(c)) <= {-1.0, 1.0}
    pcah, itq = fit_pcah(xt, 16), fit_itq(xt, 16)
    rot = np.linalg.lstsq(pcah.projection, itq.projection, rcond=None)[0]
    assert np.allclose(rot @ rot.T, np.eye(16), atol=1e-6)
    assert np.array_equal(fit_pcah(xt, 16, seed=3).encode(xq), pcah.encode(xq))


def test_bihalf_layer_balances_bits_and_pulls_towards_codes():
    u = torch.randn(8, 4, requires_grad=True)
    b = bihalf(u, gamma=6.0)
    assert (b.sum(0) == 0).all() and set(b.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(b > 0, u > u.median(0, keepdim=True).values)  # the top half of each bit -> +1
    b.sum().backward()
    assert torch.allclose(u.grad, 1.0 + 6.0 * (u - b).detach() / u.numel())


def test_bihalf_trains_and_beats_lsh(digits_feats):
    xt = digits_feats["train"][0]
    h = fit_bihalf(xt, 32, seed=0, epochs=20)
    # the similarity loss itself is not monotone under the median split's straight-through
    # gradient (measured: it rises while mAP improves), so the test checks retrieval, not the loss
    assert len(h.losses) == 20 and all(0 <= v < 1 for v in h.losses)
    assert _map(h, digits_feats) > _map(fit_lsh(xt, 32, seed=0), digits_feats) + 0.05
