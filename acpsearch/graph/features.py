"""Node features for the structure encoder (DESIGN.md, "Strategy and node features").

Static descriptors (computed once per graph): node type one-hot, log(1+in channels),
log(1+out channels), kernel, stride, log(1+groups), relative depth, FLOPs share, params share,
is-hash flag. Strategy descriptors: keep ratio of the node's output and input channels, the
node's FLOPs kept (pruned / unpruned), the fraction of L1 importance the strategy's criterion
retains on the node's output and input groups (L1 mass of the kept channels / total; 1.0 for
L1 itself at ratio 1, lower for random choices), and the criterion one-hot. Everything per
strategy is a few numpy gathers over precomputed index arrays (target <= 5 ms for ResNet-56).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from acpsearch.graph.core import CRITERIA, NODE_TYPES

if TYPE_CHECKING:  # pragma: no cover
    from acpsearch.graph.core import ChannelGraph
    from acpsearch.pruning.strategy import PruningStrategy

STATIC_FEATURES = [f"type_{t}" for t in NODE_TYPES] + [
    "log_in_channels",
    "log_out_channels",
    "kernel",
    "stride",
    "log_groups",
    "depth",
    "flops_share",
    "params_share",
    "is_hash",
]
STRATEGY_FEATURES = ["keep_out", "keep_in", "flops_kept", "importance_out", "importance_in"] + [
    f"criterion_{c}" for c in CRITERIA
]
FEATURE_NAMES = STATIC_FEATURES + STRATEGY_FEATURES


class _Static:
    def __init__(self, g: ChannelGraph) -> None:
        n = len(g.nodes)
        total = g.cost()
        x = np.zeros((n, len(STATIC_FEATURES)), dtype=np.float32)
        maxd = max((nd.depth for nd in g.nodes), default=1) or 1
        for i, nd in enumerate(g.nodes):
            t = "hash" if nd.module == g.hash_layer and nd.type in ("conv", "linear", "hash") else nd.type
            x[i, NODE_TYPES.index(t if t in NODE_TYPES else "other")] = 1.0
            k = len(NODE_TYPES)
            x[i, k : k + 9] = [
                np.log1p(nd.in_channels),
                np.log1p(nd.out_channels),
                nd.kernel,
                nd.stride,
                np.log1p(nd.groups),
                nd.depth / maxd,
                nd.flops / max(total.flops, 1),
                nd.params / max(total.params, 1),
                float(nd.module == g.hash_layer),
            ]
        self.x = x
        src = [p for nd in g.nodes for p in nd.preds]
        dst = [nd.index for nd in g.nodes for _ in nd.preds]
        self.edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
        self.out_form = g.node_out_form
        self.in_form = g.node_in_form
        fm, fc = g.form_matrix, g.form_const
        self.M_out, self.c_out = fm[self.out_form].astype(np.float64), fc[self.out_form].astype(np.float64)
        self.M_in, self.c_in = fm[self.in_form].astype(np.float64), fc[self.in_form].astype(np.float64)
        C = g.channels.astype(np.float64)
        self.full_out = np.maximum(self.M_out @ C + self.c_out, 1.0)
        self.full_in = np.maximum(self.M_in @ C + self.c_in, 1.0)
        base_L = g._eval_forms(g.channels[None, :])[0]
        base_t = base_L[g.ft_a] * base_L[g.ft_b] * g.ft_num // g.ft_den
        self.node_base_flops = np.bincount(g.ft_node, weights=base_t, minlength=n)
        self.C = C


def _retained(g: ChannelGraph, strategy: PruningStrategy, kept: np.ndarray) -> np.ndarray:
    """Per group: L1 mass of the channels the criterion keeps / total L1 mass."""
    key = (strategy.criterion, strategy.seed if strategy.criterion == "random" else 0)
    cache = g._order_cache.get(key)
    if cache is None:
        from acpsearch.graph.importance import keep_order

        cache = []
        for grp in g.groups:
            ref = g.importance(grp.name, "l1")
            crit = ref if strategy.criterion == "l1" else g.importance(grp.name, strategy.criterion, strategy.seed)
            orders = keep_order(crit, grp.divisor)
            tot = float(ref.sum()) or 1.0
            cums = np.stack([np.concatenate([[0.0], np.cumsum(ref[o])]) for o in orders]) / tot
            cache.append(cums)
        g._order_cache[key] = cache
    out = np.ones(len(g.groups))
    for gi, cums in enumerate(cache):
        out[gi] = cums[:, kept[gi] // g.groups[gi].divisor].sum() if cums.shape[1] > 1 else 1.0
    return out


def strategy_features(g: ChannelGraph, strategy: PruningStrategy | None) -> np.ndarray:
    st: _Static = g._pyg_static
    n = st.x.shape[0]
    crit = "l1" if strategy is None else strategy.criterion
    if strategy is None:
        kept = g.channels.astype(np.float64)
        R = np.ones(len(g.groups))
    else:
        kept = strategy.kept_vector().astype(np.float64)
        R = _retained(g, strategy, strategy.kept_vector())
    keep_out = (st.M_out @ kept + st.c_out) / st.full_out
    keep_in = (st.M_in @ kept + st.c_in) / st.full_in
    RC = R * st.C
    imp_out = (st.M_out @ RC + st.c_out) / st.full_out
    imp_in = (st.M_in @ RC + st.c_in) / st.full_in
    L = g._eval_forms(kept.astype(np.int64)[None, :])[0]
    t = L[g.ft_a] * L[g.ft_b] * g.ft_num // g.ft_den
    nf = np.bincount(g.ft_node, weights=t, minlength=n)
    flops_kept = np.where(st.node_base_flops > 0, nf / np.maximum(st.node_base_flops, 1), 1.0)
    s = np.zeros((n, len(STRATEGY_FEATURES)), dtype=np.float32)
    s[:, 0], s[:, 1], s[:, 2], s[:, 3], s[:, 4] = keep_out, keep_in, flops_kept, imp_out, imp_in
    s[:, 5 + CRITERIA.index(crit)] = 1.0
    return s


def to_pyg(g: ChannelGraph, strategy: PruningStrategy | None = None) -> Any:
    """Build a torch_geometric Data(x, edge_index) for (graph, strategy); None = unpruned."""
    from torch_geometric.data import Data

    if g._pyg_static is None:
        g._pyg_static = _Static(g)
    st: _Static = g._pyg_static
    x = np.concatenate([st.x, strategy_features(g, strategy)], axis=1)
    return Data(x=torch.from_numpy(x), edge_index=st.edge_index, num_nodes=x.shape[0])
