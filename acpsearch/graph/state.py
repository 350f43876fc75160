"""The channel analysis' state, and the helpers its layer rules use to read and write it."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from acpsearch.graph.channels import Desc, FlopTerm, LayerInfo, ModuleInfo, Seg, SizeAttr, Vars
from acpsearch.graph.cost import MacTerm


def flatten_nodes(a: Any) -> list[fx.Node]:
    """The fx nodes inside a (nested) argument."""
    out: list[fx.Node] = []

    def note(n: fx.Node) -> fx.Node:
        out.append(n)
        return n

    fx.node.map_arg(a, note)
    return out


def norm_axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class Analyzer:
    """The analysis state the rules read and write: descriptors, variables, bindings, layers
    (the walk over the traced graph is `acpsearch.graph.analysis.Engine`)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, values: dict[fx.Node, Any], batch: int) -> None:
        self.model = model
        self.gm = gm
        self.values = values
        self.batch = batch
        self.V = Vars()
        self.desc: dict[fx.Node, Any] = {}
        self.layers: list[LayerInfo] = []
        self.layer_of: dict[fx.Node, int] = {}
        self.producers: dict[fx.Node, set[int]] = {}
        self.flop_terms: list[FlopTerm] = []
        self.bindings: dict[str, dict[int, tuple[Seg, ...]]] = {}
        self.grouped_in: dict[str, int] = {}
        self.modules: dict[str, ModuleInfo] = {}
        self.size_attrs: list[SizeAttr] = []
        self.binary_params: set[str] = set()
        self.derived: dict[str, str] = {}
        self.param_src: dict[fx.Node, tuple[str, ...]] = {}
        self.param_names = {n for n, _ in model.named_parameters()}
        first: dict[int, str] = {}
        self.canonical: dict[str, str] = {}  # any alias of a (possibly shared) tensor -> its first name
        for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            self.canonical[n] = first.setdefault(id(t), n)

    # -- helpers for rules -----------------------------------------------------------------------
    def val(self, a: Any) -> Any:
        """Concrete value of an argument (nested tuples / lists / slices of nodes included)."""
        return fx.node.map_aggregate(a, lambda x: self.values.get(x, x) if isinstance(x, fx.Node) else x)

    def d(self, a: Any) -> Any:
        return self.desc.get(a) if isinstance(a, fx.Node) else None

    def freeze_desc(self, d: Any) -> None:
        if isinstance(d, Desc):
            for v, _ in d.segs:
                self.V.freeze(v)
        elif isinstance(d, (list, tuple)):
            for x in d:
                self.freeze_desc(x)

    def freeze_args(self, node: fx.Node) -> None:
        for a in flatten_nodes((node.args, node.kwargs)):
            self.freeze_desc(self.desc.get(a))

    def none_like(self, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return tuple(self.none_like(v) for v in value)
        return None

    def same_layout(self, a: tuple[Seg, ...], b: tuple[Seg, ...]) -> bool:
        """Segment lists of equal variable sizes and repeats, position by position."""
        return len(a) == len(b) and all(
            self.V.size[self.V.find(x)] == self.V.size[self.V.find(y)] and rx == ry for (x, rx), (y, ry) in zip(a, b)
        )

    def unify(self, a: tuple[Seg, ...], b: tuple[Seg, ...]) -> bool:
        """Unify two segment lists position by position (split variables expanded); False if they differ."""
        a, b = self.V.expand(a), self.V.expand(b)
        if not self.same_layout(a, b):
            return False
        for (x, _), (y, _) in zip(a, b):
            self.V.union(x, y)
        return True

    def bind(self, tname: str, axis: int, segs: tuple[Seg, ...]) -> None:
        """Tie axis `axis` of parameter/buffer `tname` to `segs`; re-binding unifies (shared modules)."""
        axes = self.bindings.setdefault(tname, {})
        old = axes.get(axis)
        if old is None:
            axes[axis] = segs
        elif not self.unify(old, segs):
            for v, _ in (*old, *segs):
                self.V.freeze(v)

    def in_segs(self, node: fx.Node, arg: Any, axis: int, label: str, allow_repeat: bool = False) -> tuple[Seg, ...]:
        """Segments of the channel axis `axis` of input `arg`; fresh frozen var when untracked."""
        t = self.val(arg)
        d = self.d(arg)
        ax = norm_axis(axis, t.dim())
        if isinstance(d, Desc) and d.axis == ax and (allow_repeat or all(r == 1 for _, r in d.segs)):
            return d.segs
        self.freeze_desc(d)
        return ((self.V.new(t.shape[ax], label + ":in", frozen=True), 1),)

    def add_layer(self, node: fx.Node, info: LayerInfo) -> int:
        idx = len(self.layers)
        preds: set[int] = set()
        for a in flatten_nodes((node.args, node.kwargs)):
            preds |= self.producers.get(a, set())
        info.preds = preds
        info.depth = 1 + max((self.layers[p].depth for p in preds), default=0)
        self.layers.append(info)
        self.layer_of[node] = idx
        self.producers[node] = {idx}
        return idx

    def add_flops(self, idx: int, term: MacTerm, out: tuple[Seg, ...] | None, inp: tuple[Seg, ...] | None) -> None:
        """Closed-form cost of layer `idx`: the rule's MacTerm per sample over the kept channels."""
        a = out if term.out else None
        b = inp if term.inp else None
        self.flop_terms.append(FlopTerm(term.num // self.batch, term.den, a, b, idx, term.binary))
        self.layers[idx].flops_terms.append(len(self.flop_terms) - 1)

    def own_tensors(self, name: str, m: nn.Module) -> list[str]:
        return [f"{name}.{n}" for n, _ in m.named_parameters()]

    def calling_module(self, node: fx.Node) -> str:
        """Qualified name of the innermost module whose forward made `node` ('' = the model)."""
        stack = node.meta.get("nn_module_stack") or {}
        return str(list(stack.values())[-1][0]) if stack else ""

    def size_attr(self, node: fx.Node, literal: Any, parts: list[tuple[Seg, ...]]) -> bool:
        """Record the attribute of the calling module that holds `literal` (channel counts the
        forward passes to an op) so the pruner can rewrite it; False when there is none."""
        name = self.calling_module(node)
        m = self.model.get_submodule(name) if name else self.model
        for attr, v in vars(m).items():
            if attr.startswith("_") or isinstance(v, bool):
                continue
            if isinstance(v, (list, tuple)) and isinstance(literal, (list, tuple)) and list(v) == list(literal):
                kind = "tuple" if isinstance(v, tuple) else "list"
            elif isinstance(v, int) and literal == v:
                kind = "int"
            else:
                continue
            self.size_attrs.append(SizeAttr(name, attr, parts, kind))
            return True
        return False
