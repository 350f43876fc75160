"""Hash-layer surgery: pruning keeps the old bits exactly, merging forms sign(sum s_i h_i), maps compose."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acpsearch.codelength import CodeMap, apply_code_map, find_hash_layer, merge_bits, prune_bits
from acpsearch.errors import SpecError
from acpsearch.hashing import MODEL_NAMES, create_model, with_hash_head


@pytest.fixture(scope="module")
def net_and_x() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("resnet20", bits=16, in_channels=1, image_size=8).eval()
    with torch.no_grad():  # a non-trivial hash layer (the zoo initialises it tiny)
        model.hash_layer.weight.normal_(0, 0.5)
        model.hash_layer.bias.normal_(0, 0.1)
    return model, torch.randn(32, 1, 8, 8)


def test_pruned_bits_are_exactly_the_kept_bits_of_the_old_code(net_and_x: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = net_and_x
    keep = [0, 3, 4, 9, 15]
    short = prune_bits(model, keep, example=x)
    with torch.no_grad():
        old, new = model(x), short(x)
    assert new.shape == (32, 5)
    # the codes are exactly the kept bits; raw values agree to float rounding (a narrower matmul)
    assert torch.equal(torch.where(new >= 0, 1, -1), torch.where(old[:, keep] >= 0, 1, -1))
    assert torch.allclose(new, old[:, keep], atol=1e-5, rtol=0)
    assert model.hash_layer.out_features == 16  # the input network is unchanged
    assert short.hash_layer.weight.shape == (5, 64)  # physically smaller


def test_merging_singleton_groups_is_the_identity(net_and_x: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = net_and_x
    same = merge_bits(model, [[i] for i in range(16)], [[1]] * 16)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))  # singletons copy the layer unchanged: bit-identical


def test_merged_code_is_the_sign_of_the_signed_sum(net_and_x: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = net_and_x
    groups = [[0, 5, 7], [1], [2, 3], [10, 4, 11, 12]]
    signs = [[1, -1, 1], [1], [-1, -1], [1, 1, -1, 1]]
    merged = merge_bits(model, groups, signs, example=x)
    with torch.no_grad():
        h, v = model(x), merged(x)
    want = torch.stack([sum(s * h[:, i] for i, s in zip(g, sg)) for g, sg in zip(groups, signs)], 1)
    assert v.shape == (32, 4)
    assert torch.allclose(v, want, atol=1e-5)
    clear = want.abs() > 1e-4
    assert torch.equal(torch.sign(v)[clear], torch.sign(want)[clear])
    # an anti-correlated pair with sign -1 adds up instead of cancelling
    twin = merge_bits(model, [[0, 1]], [[1, -1]])
    with torch.no_grad():
        model_neg = model(x)
        assert torch.allclose(twin(x)[:, 0], model_neg[:, 0] - model_neg[:, 1], atol=1e-5)


def test_maps_compose_prune_then_merge(net_and_x: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = net_and_x
    first = CodeMap.pruned(16, [1, 2, 5, 8, 13])
    second = CodeMap.merged(5, [[0, 3], [1], [4, 2]], [[1, -1], [1], [1, 1]])
    stepwise = apply_code_map(apply_code_map(model, first), second)
    direct = apply_code_map(model, first.then(second))
    with torch.no_grad():
        assert torch.allclose(stepwise(x), direct(x), atol=1e-5)
    assert first.then(second).groups == ((1, 8), (2,), (13, 5))
    assert CodeMap.from_dict(first.then(second).to_dict()) == first.then(second)


def test_merged_centres_follow_the_signed_sum_and_ties_go_to_the_lead() -> None:
    base = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]])
    m = CodeMap.merged(3, [[0, 1, 2]], [[1, 1, -1]])  # sums: 1+1+1 = 3 ; -1+1-1 = -1
    assert m.centres(base).tolist() == [[1.0], [-1.0]]
    tie = CodeMap.merged(3, [[2, 0]], [[1, 1]])  # class 0: -1+1 = 0 -> lead (col 2) = -1
    assert tie.centres(base).tolist() == [[-1.0], [1.0]]


def test_hash_layer_of_a_user_model_and_bad_layers() -> None:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU())
    head = with_hash_head(backbone, 12, feature_dim=20)
    assert find_hash_layer(head)[0] == "hash_layer"
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 12))
    assert find_hash_layer(plain)[0] == "3"
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(prune_bits(plain, [2, 7], example=x)(x), plain(x)[:, [2, 7]], atol=1e-6)
    with pytest.raises(SpecError, match="hash_layer"):
        find_hash_layer(plain, "2")  # a ReLU
    tail = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Linear(12, 12))
    with pytest.raises(SpecError, match="not the last layer"):
        prune_bits(tail, [0, 1], hash_layer="1", example=x)
    with pytest.raises(SpecError, match="at most one group"):
        merge_bits(plain, [[0, 1], [1]])
    with pytest.raises(SpecError, match="code.groups"):
        prune_bits(plain, [12])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_network_prunes_and_merges_its_code(name: str) -> None:
    """Both surgeries on every zoo network: the short network emits K' values, pruned bits are the
    kept bits of the old code, merged values are the signed sums (before any fine-tuning)."""
    torch.manual_seed(0)
    model = create_model(name, bits=12, in_channels=1, image_size=16).eval()
    _, layer = find_hash_layer(model)
    with torch.no_grad():  # a non-trivial hash layer (the zoo initialises it tiny)
        layer.weight.normal_(0, 0.5)
    x = torch.randn(8, 1, 16, 16)
    keep = [1, 4, 5, 11]
    short = prune_bits(model, keep, example=x).eval()
    merged = merge_bits(model, [[0, 2], [3, 7, 9]], [[1, -1], [1, 1, -1]], example=x).eval()
    with torch.no_grad():
        h, p, m = model(x), short(x), merged(x)
    assert p.shape == (8, 4) and m.shape == (8, 2)
    assert torch.allclose(p, h[:, keep], atol=1e-4, rtol=1e-4)
    want = torch.stack([h[:, 0] - h[:, 2], h[:, 3] + h[:, 7] - h[:, 9]], 1)
    assert torch.allclose(m, want, atol=1e-4, rtol=1e-4)
