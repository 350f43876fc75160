"""Hash centres, the three losses' definitions, and that each one trains a small net on digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing import CSQLoss, get_loss, hash_centers, load_dataset, make_splits, train_hash_net


def _hamming(c: torch.Tensor) -> torch.Tensor:
    return (c.shape[1] - c @ c.T) / 2


def test_hadamard_centres_are_half_the_bits_apart():
    c = hash_centers(10, 32)
    assert c.shape == (10, 32) and set(c.unique().tolist()) == {-1.0, 1.0}
    d = _hamming(c)
    off = d[~torch.eye(10, dtype=torch.bool)]
    assert torch.all(off == 16)
    # 2K classes use the negated rows too: distance K between a row and its negation
    c2 = hash_centers(32, 16)
    assert torch.equal(c2[16:], -c2[:16])
    assert _hamming(c2)[~torch.eye(32, dtype=torch.bool)].min() >= 8


def test_random_balanced_centres_when_more_than_2k_classes():
    c = hash_centers(40, 16, seed=3)  # 40 > 2 * 16
    assert c.shape == (40, 16)
    assert torch.all(c.sum(1) == 0)  # balanced: K/2 ones each
    assert len({tuple(r.tolist()) for r in c}) == 40
    assert torch.equal(c, hash_centers(40, 16, seed=3))  # seeded
    assert not torch.equal(c, hash_centers(40, 16, seed=4))
    assert torch.all(hash_centers(3, 12).sum(1) == 0)  # K not a power of two


def test_multi_label_centre_is_sign_of_sum_with_random_ties():
    loss = CSQLoss(bits=8, num_classes=3, seed=0)
    c = loss.centers
    labels = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 1]])
    t = loss.targets(labels)
    assert torch.equal(t[0], torch.sign(c.sum(0)))  # three centres: odd sum, never 0
    assert torch.equal(t[2], c[2])
    pair = c[0] + c[1]
    assert torch.equal(t[1][pair != 0], torch.sign(pair[pair != 0]))
    assert (pair == 0).any() and set(t[1][pair == 0].tolist()) <= {-1.0, 1.0}


def test_csq_is_small_at_the_centre_and_large_away():
    loss = CSQLoss(bits=16, num_classes=4)
    y = torch.tensor([0, 1, 2, 3])
    at_centre = loss(loss.centers[y] * 5, y)
    opposite = loss(-loss.centers[y] * 5, y)
    assert at_centre < 0.01 < 5 < opposite


def test_hashnet_scale_grows_and_pairwise_loss_prefers_agreement():
    loss = get_loss("hashnet", bits=8, num_classes=2)
    y = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[3.0] * 8, [3.0] * 8, [-3.0] * 8, [-3.0] * 8])
    loss.eval()
    assert loss(good, y) < loss(good[[0, 2, 1, 3]], y)
    loss.train()
    s0 = loss.scale
    for _ in range(10):
        loss(good, y)
    assert loss.scale > s0


def test_dpsh_prefers_similar_codes_for_similar_pairs():
    loss = get_loss("dpsh", bits=8, num_classes=2)
    y = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[1.0] * 8, [1.0] * 8, [-1.0] * 8, [-1.0] * 8])
    assert loss(good, y) < loss(good[[0, 2, 1, 3]], y)


def test_unknown_loss_is_spec_error():
    with pytest.raises(SpecError, match="csq, hashnet, dpsh"):
        get_loss("triplet", 16, 10)


@pytest.fixture(scope="module")
def digits_splits():
    return make_splits(load_dataset("digits"), 20, 100, 20, seed=0)


@pytest.mark.parametrize("name", ["csq", "hashnet", "dpsh"])
def test_each_loss_lowers_and_learns_on_digits(digits_splits, name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 32))
    res = train_hash_net(net, digits_splits, loss=name, epochs=8, batch_size=64, progress=False)
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < 0.85 * first, (first, last)
    assert res.best_val_map > 0.7  # chance is ~0.1
