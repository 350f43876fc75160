"""Every architecture: random non-uniform strategies prune to working models whose measured cost
equals the predicted cost, pruning is equivalent to zeroing the pruned channels, the all-1.0
strategy is the identity, and the input model is never modified."""

from __future__ import annotations

import archs
import numpy as np
import pytest
import torch

import acpsearch as acp
from acpsearch.pruning import apply_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


X = torch.randn(*archs.INPUT, generator=torch.Generator().manual_seed(0))
# Channel-mixing ops (LayerNorm over channels, GroupNorm, XNOR weight scale) see zeroed channels: skip.
MIXING = {"convnext", "senet", "binary_net"}  # binary conv: weight scale = mean over in-channels
# bnn_resnet20: its pruned binary convs keep their scales (baked), so it equals the network with the
# pruned channels' activations at zero, not with the in-channel weights zeroed too (tests/pruning/test_binary.py)
MIXING.add("zoo_bnn_resnet20")


def _last(out):
    return out[-1] if isinstance(out, (tuple, list)) else out


def _zoo_models():
    try:
        from acpsearch.hashing import create_model
    except Exception:  # pragma: no cover - the zoo is written by another helper
        return {}
    from acpsearch.hashing.models import MODEL_NAMES

    out = {}
    for name in [n for n in MODEL_NAMES if n not in ("resnet32", "resnet56")]:  # same blocks as resnet20
        out[f"zoo_{name}"] = lambda n=name: create_model(n, bits=archs.BITS, in_channels=3, image_size=16)
    return out


MODELS = {**{k: (lambda k=k: archs.make(k)) for k in archs.ARCHS}, **_zoo_models()}


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    torch.manual_seed(0)
    model = MODELS[request.param]().eval()
    g = acp.ChannelGraph.from_model(model, X)
    return request.param, model, g


def _zeroed(model, g, indices):
    """Copy of `model` with every tensor slice of the pruned channels set to zero."""
    z = apply_indices.__globals__["copy"].deepcopy(model)
    an = g.analysis
    V = an.vars
    tensors = dict(z.named_parameters(remove_duplicate=False))
    tensors.update(dict(z.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for tname, axes in an.bindings.items():
            t = tensors[tname]
            if "running" in tname:
                continue
            for axis, segs in axes.items():
                off = 0
                for v, rep in segs:
                    r = V.find(v)
                    size = V.size[r]
                    gi = g.group_of_root.get(r)
                    if gi is not None:
                        kept = set(indices[g.groups[gi].name].tolist())
                        for c in range(size):
                            if c in kept:
                                continue
                            if axis == -1:  # grouped conv: channel c of block b is column c - b*per
                                grp_n = an.grouped_in[tname]
                                per = (size * rep) // grp_n
                                b, loc = (off + c) // per, (off + c) % per
                                out_per = t.shape[0] // grp_n
                                t[b * out_per : (b + 1) * out_per, loc] = 0
                            else:
                                t.narrow(axis, off + c * rep, rep).zero_()
                    off += size * rep
    return z


def test_unpruned_cost_matches_measurement(built):
    name, model, g = built
    assert g.cost() == acp.measure_cost(model, X)
    assert g.groups, f"{name}: expected prunable groups"


@pytest.mark.parametrize("criterion,seed", [("l1", 0), ("fpgm", 1), ("random", 2), ("bn_scale", 3)])
def test_random_strategy_prunes_exactly(built, criterion, seed):
    name, model, g = built
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    s = acp.PruningStrategy.from_vector(g, rng.uniform(0.05, 1.0, len(g.groups)), criterion=criterion, seed=seed)
    pruned = acp.prune(model, s, X)
    measured = acp.measure_cost(pruned, X)
    assert measured == g.cost(s)
    assert isinstance(measured.flops, int) and isinstance(measured.params, int)
    assert measured.flops < g.cost().flops
    out = pruned(X)
    assert _last(out).shape == _last(model(X)).shape  # the code length never changes
    for k, v in model.state_dict().items():  # input model untouched
        assert torch.equal(v, before[k]), k
    # cost_batch agrees with cost for the same ratios
    f, p = g.cost_batch(s.ratio_vector()[None, :])
    assert (int(f[0]), int(p[0])) == (measured.flops, measured.params)
    # coupled layers: every kept count is a multiple of its divisor and at least one unit
    for grp in g.groups:
        k = s.kept[grp.name]
        assert k % grp.divisor == 0 and 1 <= k <= grp.channels


def test_pruning_equals_zeroing_the_pruned_channels(built):
    name, model, g = built
    if name in MIXING:
        pytest.skip("channel-mixing norm")
    s = acp.PruningStrategy.from_vector(g, np.random.default_rng(7).uniform(0.2, 0.9, len(g.groups)))
    idx = s.kept_indices()
    pruned = acp.prune(model, s, X)
    zeroed = _zeroed(model, g, idx)
    with torch.no_grad():
        a, b = _last(pruned(X)), _last(zeroed(X))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_all_ones_strategy_is_identity(built):
    name, model, g = built
    pruned = acp.prune(model, acp.PruningStrategy.uniform(g, 1.0), X)
    with torch.no_grad():
        assert torch.equal(_last(pruned(X)), _last(model(X)))
    assert acp.measure_cost(pruned, X) == g.cost()


def test_to_pyg_and_networkx(built):
    name, model, g = built
    s = acp.PruningStrategy.uniform(g, 0.5)
    d0, d1 = g.to_pyg(), g.to_pyg(s)
    assert d0.x.shape == d1.x.shape and d0.x.shape[0] == len(g.nodes)
    assert d0.edge_index.max() < len(g.nodes)
    assert not torch.equal(d0.x, d1.x)
    G = g.to_networkx()
    assert G.number_of_nodes() == len(g.nodes)
    hash_nodes = [n for n, a in G.nodes(data=True) if a["is_hash"]]
    assert hash_nodes and all(G.nodes[n]["channels"] == archs.BITS for n in hash_nodes)
    if name.startswith("zoo_"):
        assert g.hash_layer == "hash_layer"  # every zoo network ends in `hash_layer`
