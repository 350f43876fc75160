"""ChannelGraph: prunable channel groups, closed-form cost model, graph exports.

What the cost model counts (and `acpsearch.pruning.measure_cost` measures the same way):

* ``flops`` = multiply-accumulates (MACs) **per input sample** of every call of a convolution
  (``nn.Conv1d/2d/3d`` and subclasses: output elements x in_channels/groups x kernel volume;
  transposed convs: input elements x out_channels/groups x kernel volume) and of every
  ``nn.Linear`` (and subclasses: output elements x in_features). Biases, norms, activations,
  pooling, elementwise ops and functional convs/linears (``F.conv2d``) are not counted.
* ``params`` = every parameter of the model (``model.parameters()``, shared ones once), incl.
  norms, biases and free ``nn.Parameter`` such as layer-scale gammas; buffers are not counted.

How the closed form evaluates these counts (linear forms of the groups' kept counts, one term
per conv/linear call and per parameter tensor) is `acpsearch.graph.forms`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from acpsearch.errors import SpecError, UnsupportedModelError
from acpsearch.graph.analysis import analyse
from acpsearch.graph.channels import Analysis, Seg
from acpsearch.graph.features import NodeDescriptors, to_pyg
from acpsearch.graph.forms import CostForms
from acpsearch.graph.strategy import DescribedStrategy, KeptCounts
from acpsearch.graph.tracing import ExampleInput

if TYPE_CHECKING:
    import networkx as nx
    from torch_geometric.data import Data


@dataclass(frozen=True)
class Cost:
    """Model cost: float MACs per input sample (``flops``) and parameter count; for binary networks
    also binary MACs per sample (``bops``) and how many parameters are binary weights (1 bit each).
    ``ops = flops + bops / 64`` and ``model_bits`` (float parameters 32 bits, binary ones 1 bit)."""

    flops: int
    params: int
    bops: int = 0
    binary_params: int = 0

    @property
    def ops(self) -> float:
        """Operations per sample: float MACs plus binary MACs / 64 (the BNN literature's convention)."""
        return self.flops + self.bops / 64

    @property
    def model_bits(self) -> int:
        """Model size in bits: binary weights 1 bit, every other parameter 32 bits."""
        return 32 * (self.params - self.binary_params) + self.binary_params

    def ops_ratio(self, base: Cost) -> float:
        return self.ops / max(base.ops, 1.0)

    def ratio(self, base: Cost) -> tuple[float, float]:
        """(flops ratio, params ratio) relative to `base`."""
        return self.flops / max(base.flops, 1), self.params / max(base.params, 1)

    def flops_ratio(self, base: Cost) -> float:
        return self.flops / max(base.flops, 1)

    def params_ratio(self, base: Cost) -> float:
        return self.params / max(base.params, 1)

    def to_dict(self) -> dict[str, int]:
        """{"flops", "params"}, plus "bops" and "binary_params" for a binary network."""
        out = {"flops": int(self.flops), "params": int(self.params)}
        if self.bops or self.binary_params:
            out.update(bops=int(self.bops), binary_params=int(self.binary_params))
        return out


@dataclass
class ChannelGroup:
    """Channel dimensions pruned together; kept count must be a multiple of `divisor`."""

    name: str
    channels: int
    modules: list[str]
    divisor: int = 1
    index: int = 0
    flops_share: float = 0.0
    params_share: float = 0.0


@dataclass
class NodeRecord:
    """One graph node: a parameterised layer, a merge op (add/mul/cat) or a free-parameter op."""

    name: str
    type: str
    op: str
    module: str | None
    kernel: int
    stride: int
    groups: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    flops: int
    params: int
    in_groups: list[str]
    out_groups: list[str]
    depth: int
    preds: list[int] = field(default_factory=list)
    index: int = 0


class ChannelGraph(CostForms):
    """A traced model's channel structure; see the module docstring for the cost definition."""

    def __init__(self, model: nn.Module, analysis: Analysis, example_input: ExampleInput) -> None:
        self.model = model
        self.analysis = analysis
        self.hash_layer = analysis.hash_layer
        self.example_shape = [
            int(s) for s in (example_input[0] if isinstance(example_input, (tuple, list)) else example_input).shape
        ]
        self._check_bindings()
        self._build_groups()
        self._build_forms()
        self._build_nodes()
        self._pyg_static: NodeDescriptors | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_input: ExampleInput, hash_layer: str | None = None) -> ChannelGraph:
        """Trace `model` on `example_input` (one forward, no grad) and find its channel groups."""
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        analysis, _ = analyse(model, example_input, hash_layer)
        return cls(model, analysis, example_input)

    def _check_bindings(self) -> None:
        """Every bound axis must match its tensor's size; a mismatch freezes (never mis-slices)."""
        V = self.analysis.vars
        tensors: dict[str, torch.Tensor] = dict(self.model.named_parameters(remove_duplicate=False))
        tensors.update(dict(self.model.named_buffers(remove_duplicate=False)))
        for tname, axes in self.analysis.bindings.items():
            t = tensors.get(tname)
            for axis, segs in axes.items():
                total = sum(V.size[v] * r for v, r in segs)
                if axis == -1:
                    g = self.analysis.grouped_in.get(tname, 1)
                    ok = t is not None and t.dim() > 1 and t.shape[1] * g == total
                else:
                    ok = t is not None and axis < t.dim() and t.shape[axis] == total
                if not ok:
                    for v, _ in segs:
                        V.freeze(v)

    def _build_groups(self) -> None:
        V = self.analysis.vars
        used: dict[int, list[str]] = {}

        def note(segs: Iterable[Seg], who: str) -> None:
            for v, _ in segs:
                r = V.find(v)
                lst = used.setdefault(r, [])
                if who not in lst:
                    lst.append(who)

        for tname, axes in self.analysis.bindings.items():
            owner = tname.rsplit(".", 1)[0] if "." in tname else tname
            if owner not in self.analysis.modules:  # a free parameter (layer scale, ...): name it
                owner = tname
            for segs in axes.values():
                note(segs, owner)
        for lay in self.analysis.layers:
            note(lay.in_segs, lay.name)
            note(lay.out_segs, lay.name)
        self.groups: list[ChannelGroup] = []
        self.group_of_root: dict[int, int] = {}
        names: set[str] = set()
        for r in sorted(used):
            if V.frozen[r] or V.size[r] <= 1:
                continue
            name = V.label[r]
            k = 2
            while name in names:
                name = f"{V.label[r]}#{k}"
                k += 1
            names.add(name)
            self.group_of_root[r] = len(self.groups)
            self.groups.append(ChannelGroup(name, V.size[r], used[r], V.blocks[r], len(self.groups)))
        self.group_index = {g.name: g.index for g in self.groups}
        self.channels = np.array([g.channels for g in self.groups], dtype=np.int64)
        self.divisors = np.array([g.divisor for g in self.groups], dtype=np.int64)

    def _build_forms(self) -> None:
        """Cost terms (`CostForms`), the unpruned cost and each group's cost shares."""
        self._build_terms()
        G = len(self.groups)
        self._base_cost = self._eval_terms(self.channels[None, :])
        bo, bp = self._eval_binary(self.channels[None, :])
        base = Cost(int(self._base_cost[0][0]), int(self._base_cost[1][0]), int(bo[0]), int(bp[0]))
        self._base = base
        # cost shares per group: cost removed when the group alone is pruned to zero channels
        if G:
            probe = np.repeat(self.channels[None, :], G, axis=0)
            probe[np.arange(G), np.arange(G)] = 0
            fl, pa = self._eval_terms(probe)
            for gi, grp in enumerate(self.groups):
                grp.flops_share = float((base.flops - fl[gi]) / max(base.flops, 1))
                grp.params_share = float((base.params - pa[gi]) / max(base.params, 1))

    def _build_nodes(self) -> None:
        an = self.analysis
        V = an.vars
        params = dict(self.model.named_parameters())
        base_L = self._eval_forms(self.channels[None, :])[0]
        node_flops = np.zeros(len(an.layers), dtype=np.int64)
        for i in range(len(self.ft_num)):
            node_flops[self.ft_node[i]] += (
                base_L[self.ft_a[i]] * base_L[self.ft_b[i]] * self.ft_num[i] // self.ft_den[i]
            )
        self.nodes: list[NodeRecord] = []
        self.node_in_form = np.zeros(len(an.layers), dtype=np.int64)
        self.node_out_form = np.zeros(len(an.layers), dtype=np.int64)

        def gnames(segs: tuple[Seg, ...]) -> list[str]:
            out = []
            for v, _ in segs:
                gi = self.group_of_root.get(V.find(v))
                if gi is not None and self.groups[gi].name not in out:
                    out.append(self.groups[gi].name)
            return out

        for i, lay in enumerate(an.layers):
            self.node_in_form[i] = self.form_of(lay.in_segs) if lay.in_segs else 0
            self.node_out_form[i] = self.form_of(lay.out_segs) if lay.out_segs else 0
            self.nodes.append(
                NodeRecord(
                    name=lay.name,
                    type=lay.type,
                    op=lay.op,
                    module=lay.module,
                    kernel=lay.kernel,
                    stride=lay.stride,
                    groups=lay.groups,
                    in_shape=lay.in_shape,
                    out_shape=lay.out_shape,
                    in_channels=sum(V.size[v] * r for v, r in lay.in_segs),
                    out_channels=sum(V.size[v] * r for v, r in lay.out_segs),
                    flops=int(node_flops[i]),
                    params=int(sum(params[p].numel() for p in lay.params if p in params)),
                    in_groups=gnames(lay.in_segs),
                    out_groups=gnames(lay.out_segs),
                    depth=lay.depth,
                    preds=sorted(lay.preds),
                    index=i,
                )
            )
        # forms may have grown (node forms): rebuild the matrix
        if len(self._forms) != self.form_matrix.shape[0]:
            self._set_form_matrix()

    # ------------------------------------------------------------------ strategy arithmetic
    def group(self, name: str) -> ChannelGroup:
        idx = self.group_index.get(name)
        if idx is None:
            raise SpecError(f"group {name!r}: no such prunable channel group (see ChannelGraph.groups)")
        return self.groups[idx]

    def units(self, round_to: int) -> np.ndarray:
        """Rounding unit per group: lcm(round_to, divisor) when it fits, else the divisor."""
        u = np.array([math.lcm(int(round_to), int(d)) for d in self.divisors], dtype=np.int64)
        return np.where(u <= self.channels, u, self.divisors)

    def kept_counts(self, ratios: np.ndarray, round_to: int = 4) -> np.ndarray:
        """Vectorised rounding rule: ratio 1 keeps all; else round(ratio*C/unit)*unit in [unit, C]."""
        r = np.asarray(ratios, dtype=np.float64)
        C = self.channels
        u = self.units(round_to)
        k = np.floor(r * C / u + 0.5).astype(np.int64) * u
        k = np.clip(k, u, C)
        return np.where(r >= 1.0, C, k)

    def kept_channels(self, group: str | ChannelGroup, ratio: float, round_to: int = 4) -> int:
        """Kept channel count of one group at `ratio` (the single rounding rule)."""
        g = group if isinstance(group, ChannelGroup) else self.group(group)
        r = np.ones(len(self.groups))
        r[g.index] = ratio
        return int(self.kept_counts(r, round_to)[g.index])

    def cost(self, strategy: KeptCounts | None = None) -> Cost:
        """Cost of the model pruned by `strategy` (unpruned when None); closed form, exact."""
        if strategy is None:
            return self._base
        kept = strategy.kept_vector()[None, :]
        f, p = self._eval_terms(kept)
        bo, bp = self._eval_binary(kept)
        return Cost(int(f[0]), int(p[0]), int(bo[0]), int(bp[0]))

    def cost_batch(self, ratios: np.ndarray, round_to: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Exact (flops, params) arrays for ratio rows [n, n_groups], same rounding as strategies."""
        r = np.asarray(ratios, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] != len(self.groups):
            raise SpecError(f"ratios: expected shape [n, {len(self.groups)}], got {list(r.shape)}")
        return self._eval_terms(self.kept_counts(r, round_to))

    def ops_batch(self, ratios: np.ndarray, round_to: int = 4) -> np.ndarray:
        """Exact ops (flops + bops / 64) per ratio row [n, n_groups], same rounding as strategies."""
        f, _ = self.cost_batch(ratios, round_to)
        bo, _ = self._eval_binary(self.kept_counts(np.asarray(ratios, dtype=np.float64), round_to))
        return np.asarray(f, dtype=np.float64) + bo / 64

    def cost_kept_full(self, kept: np.ndarray) -> Cost:
        """The Cost of one explicit kept-count vector (bops and binary parameters included)."""
        row = np.asarray(kept, dtype=np.int64).reshape(1, len(self.groups))
        f, p = self._eval_terms(row)
        bo, bp = self._eval_binary(row)
        return Cost(int(f[0]), int(p[0]), int(bo[0]), int(bp[0]))

    def cost_kept(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flops, params) for explicit kept-count rows [n, n_groups]."""
        return self._eval_terms(np.asarray(kept, dtype=np.int64).reshape(-1, len(self.groups)))

    # ------------------------------------------------------------------ exports
    def to_networkx(self) -> nx.DiGraph:
        """networkx.DiGraph: node attributes type, channels, kernel, stride, groups, flops, params, groups."""
        import networkx as nx

        G = nx.DiGraph()
        for n in self.nodes:
            G.add_node(
                n.name,
                type=n.type,
                op=n.op,
                module=n.module,
                in_channels=n.in_channels,
                channels=n.out_channels,
                kernel=n.kernel,
                stride=n.stride,
                groups=n.groups,
                flops=n.flops,
                params=n.params,
                in_groups=list(n.in_groups),
                out_groups=list(n.out_groups),
                depth=n.depth,
                in_shape=list(n.in_shape),
                out_shape=list(n.out_shape),
                is_hash=n.module == self.hash_layer,
            )
        for n in self.nodes:
            for p in n.preds:
                G.add_edge(self.nodes[p].name, n.name)
        return G

    def to_pyg(self, strategy: DescribedStrategy | None = None) -> Data:
        """torch_geometric Data: x = static descriptors + strategy descriptors (see features.py)."""
        if self._pyg_static is None:
            self._pyg_static = NodeDescriptors(self)
        return to_pyg(self, self._pyg_static, strategy)

    def summary(self) -> list[dict[str, Any]]:
        """One row per group: name, channels, divisor, flops/params share (for `acpsearch inspect`)."""
        return [
            {
                "name": g.name,
                "channels": g.channels,
                "divisor": g.divisor,
                "flops_share": g.flops_share,
                "params_share": g.params_share,
                "modules": list(g.modules),
            }
            for g in self.groups
        ]

    def __repr__(self) -> str:
        c = self.cost()
        return (
            f"ChannelGraph({len(self.nodes)} nodes, {len(self.groups)} groups, flops={c.flops}, "
            f"params={c.params}, hash_layer={self.hash_layer!r})"
        )
