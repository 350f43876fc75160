"""Bit criteria: what each one keeps, and the CSQ guard (kept class centres never coincide)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acpsearch.codelength import CRITERIA, BitData, CodeMap, code_loss, min_centre_distance, score_bits, select_bits
from acpsearch.codelength.criteria import centre_order
from acpsearch.codelength.layer import empirical_centres
from acpsearch.codelength.merge import merge_step
from acpsearch.errors import SpecError
from acpsearch.hashing import hash_centers


def _data(loss: str = "csq", n: int = 200, bits: int = 64, seed: int = 0) -> BitData:
    """Outputs pulled to Hadamard centres (10 classes, 64 bits: 16 distinct columns, 4 constant);
    the constant columns are made the most confident and most 'quantised' bits on purpose."""
    g = torch.Generator().manual_seed(seed)
    centres = hash_centers(10, bits)
    y = torch.arange(n) % 10
    h = centres[y] * (1.0 + torch.rand(n, bits, generator=g)) + 0.8 * torch.randn(n, bits, generator=g)
    const = [j for j in range(bits) if bool((centres[:, j] == centres[0, j]).all())]
    h[:, const] = centres[y][:, const] * 6.0
    return BitData(h, y, 10, loss, centres if loss == "csq" else None, seed=seed, map_queries=100)


def test_hadamard_columns_repeat_as_expected() -> None:
    c = hash_centers(10, 64)
    distinct = {tuple((c[:, j] * c[0, j]).tolist()) for j in range(64)}
    assert len(distinct) == 16
    assert min_centre_distance(c) == 32
    assert min_centre_distance(c[:, [0, 16, 32, 48]]) == 0  # four copies of the constant column


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_csq_selection_never_keeps_coinciding_centres(criterion: str) -> None:
    data = _data()
    for k in (32, 12, 6):
        sel = select_bits(criterion, data, k)
        assert len(sel.keep) == k and len(set(sel.keep)) == k
        assert min_centre_distance(data.centres[:, sel.keep]) > 0, (criterion, k, sel.keep)


def test_the_guard_fires_where_the_raw_criterion_collapses() -> None:
    data = _data()
    raw = np.argsort(-score_bits("quant", data), kind="stable")[:4]  # the 4 constant columns
    assert min_centre_distance(data.centres[:, raw]) == 0
    sel = select_bits("quant", data, 4)
    assert sel.guarded
    assert min_centre_distance(data.centres[:, sel.keep]) > 0
    assert not select_bits("quant", data, 4, guard=False).guarded


def test_centre_order_takes_distinct_non_constant_columns_first() -> None:
    c = hash_centers(10, 64)
    first = centre_order(c)[:15]
    keys = {tuple((c[:, j] * c[0, j]).tolist()) for j in first}
    assert len(keys) == 15  # 15 distinct non-constant columns before any duplicate
    assert all(not bool((c[:, j] == c[0, j]).all()) for j in first)
    assert min_centre_distance(c[:, centre_order(c)[:12]]) >= 4


def test_criteria_rank_as_defined() -> None:
    data = _data("dpsh", bits=16)
    data.h[:, 3] = data.h[:, 3].abs() + 1.0  # bit 3: always +1, the least balanced
    bal = score_bits("balance", data)
    assert bal[3] == bal.min() == -1.0  # (tied with the constant column 0)
    g = torch.Generator().manual_seed(3)
    y = torch.arange(200) % 10
    h = torch.randn(10, 16, generator=g)[y] * 2 + 0.5 * torch.randn(200, 16, generator=g)
    h[:, 5] = 2 * torch.randn(200, generator=g)  # bit 5 ignores the labels
    data2 = BitData(h, y, 10, "dpsh", None, map_queries=100)
    assert int(np.argmin(score_bits("map", data2))) == 5  # removing noise hurts mAP least
    loss = score_bits("loss", data2)  # the DPSH loss over the other 15 bits
    rest = [j for j in range(16) if j != 5]
    want = float(code_loss("dpsh", 15, 10)(data2.h[:, rest], data2.labels))
    assert loss[5] == pytest.approx(want, rel=1e-6)
    a, b = score_bits("random", data), score_bits("random", data)
    assert np.array_equal(a, b) and len(a) == 16
    sel = select_bits("centre", data2, 8)  # no loss centres: the class means' signs
    assert min_centre_distance(empirical_centres(data2.z, data2.labels, 10)[:, sel.keep]) > 0
    with pytest.raises(SpecError, match="criterion"):
        score_bits("nope", data)
    with pytest.raises(SpecError, match="lengths"):
        select_bits("balance", data, 17)


def test_merge_step_pairs_duplicates_with_signs_and_keeps_centres_apart() -> None:
    data = _data(bits=32)
    data.h[:, 7] = -data.h[:, 23] + 0.01  # bit 7 is the negation of bit 23: merged with sign -1
    local = merge_step(data, 8)
    assert local.bits == 24
    merged = [(g, s) for g, s in zip(local.groups, local.signs) if len(g) == 2]
    present = {i for g in local.groups for i in g}
    dropped = set(range(32)) - present
    assert len(merged) + len(dropped) == 8
    const = {j for j in range(32) if bool((data.centres[:, j] == data.centres[0, j]).all())}
    assert dropped <= const  # only constant neurons (correlated with nothing) are dropped, not merged
    assert {7, 23} in [set(g) for g, _ in merged]
    for g, s in merged:
        if set(g) == {7, 23}:
            assert s[0] * s[1] == -1  # anti-correlated: opposite signs, so they add up
        else:  # partners are duplicates of one Hadamard column (up to sign)
            assert torch.equal(data.centres[:, g[0]] * s[0], data.centres[:, g[1]] * s[1])
    assert min_centre_distance(local.centres(data.centres)) > 0
    shrink = CodeMap.identity(32)
    for _ in range(3):  # progressive halving: the composed map uses each base neuron at most once
        local = merge_step(BitData(data.h @ shrink.matrix().T, data.labels, 10, map_queries=100), shrink.bits // 2)
        shrink = shrink.then(local)
    assert shrink.bits == 4
    flat = [i for g in shrink.groups for i in g]
    assert len(flat) == len(set(flat)) > 4  # merged groups, not just 4 kept neurons
