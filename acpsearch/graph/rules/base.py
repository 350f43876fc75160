"""Layer rules and their registry.

A rule says, for one kind of layer, everything the converter needs in one place:

* its channel analysis (``analyse``): how the input / output channels of a call bind to channel
  variables and which parameter axes follow them;
* its resize (``resize``): the size attributes to update once its tensors are sliced;
* its cost (``mac_term``): the MAC formula of one call (`acpsearch.graph.cost.MacTerm`);
* its latency rebuild (``timed_channels`` / ``rebuild``): a fresh layer of given widths to time.

Module rules are keyed by module type (subclasses included, most specific first); function rules
by the function (``call_function`` nodes) or the method name (``call_method`` nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.fx as fx
from torch import nn

from acpsearch.graph.channels import Desc, LayerInfo, ModuleInfo, SizeAttr
from acpsearch.graph.cost import MacTerm
from acpsearch.graph.state import Analyzer

FunctionRule = Callable[[Analyzer, fx.Node, Any], None]
F = TypeVar("F", bound=FunctionRule)


class LayerRule:
    """How one module type prunes. The defaults describe a layer mapping the channel axis
    `in_axis` of its first input to a new channel axis `out_axis` of its output (or passing its
    input channels through when `same_channels`), with the parameter axes `in_params` /
    `out_params` following the input / output channels. Override `analyse` for anything else."""

    kind: str = "other"  # node type in the graph: conv | linear | norm | act | other
    in_axis: int = 1
    out_axis: int = 1
    in_params: Mapping[str, int] = {}
    out_params: Mapping[str, int] = {}
    same_channels: bool = False
    leaf: bool = True  # traced as one node (its forward is not traced through)

    def is_leaf(self, m: nn.Module) -> bool:
        return self.leaf

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        """Bind the channels of one call; False = not understood (the analysis then freezes it)."""
        x = node.args[0] if node.args else None
        xv = an.val(x)
        if not isinstance(xv, torch.Tensor) or not isinstance(value, torch.Tensor):
            return False
        segs_in = an.in_segs(node, x, self.in_axis, name)
        out_ax = self.out_axis + value.dim() if self.out_axis < 0 else self.out_axis
        segs_out = segs_in if self.same_channels else ((an.V.new(value.shape[out_ax], name), 1),)
        for t, ax in self.in_params.items():
            an.bind(f"{name}.{t}", ax, segs_in)
        for t, ax in self.out_params.items():
            an.bind(f"{name}.{t}", ax, segs_out)
        an.modules.setdefault(name, ModuleInfo(self.kind, segs_in, segs_out))
        info = LayerInfo(name, self.kind, type(m).__name__, name, segs_in, segs_out)
        info.in_shape, info.out_shape, info.params = tuple(xv.shape), tuple(value.shape), an.own_tensors(name, m)
        idx = an.add_layer(node, info)
        term = self.mac_term(m, tuple(xv.shape), tuple(value.shape))
        if term is not None:
            an.add_flops(idx, term, segs_out, segs_in)
        an.desc[node] = Desc(out_ax, segs_out)
        return True

    def resize(self, m: nn.Module, info: ModuleInfo, n_in: int | None, n_out: int | None) -> None:
        """Update `m`'s size attributes after its tensors were sliced to n_in / n_out channels."""

    def mac_term(self, m: nn.Module, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> MacTerm | None:
        """MACs of one call (None: not counted)."""
        return None

    def timed_channels(
        self, m: nn.Module, fin: float, fout: float, in_pruned: bool, out_pruned: bool, c_in: int, c_out: int
    ) -> tuple[int, int]:
        """Input / output widths of a latency probe at kept fractions fin / fout."""
        return (max(1, round(c_in * fin)) if in_pruned else c_in), (
            max(1, round(c_out * fout)) if out_pruned else c_out
        )

    def rebuild(self, m: nn.Module, c_in: int, c_out: int) -> nn.Module | None:
        """A fresh layer like `m` with c_in / c_out channels, for latency timing (None: cannot)."""
        return None


_MODULE_RULES: dict[type, LayerRule] = {}
_FUNCTION_RULES: dict[Any, FunctionRule] = {}
_METHOD_RULES: dict[str, FunctionRule] = {}


def module_rule(m: nn.Module) -> LayerRule | None:
    """The rule of `m`'s type (the most specific registered base class), or None."""
    for cls in type(m).__mro__:
        rule = _MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def function_rule(node: fx.Node) -> FunctionRule | None:
    if node.op == "call_method":
        return _METHOD_RULES.get(str(node.target))
    try:
        return _FUNCTION_RULES.get(node.target)
    except TypeError:  # an unhashable target
        return None


def is_leaf(m: nn.Module) -> bool:
    rule = module_rule(m)
    return rule is not None and rule.is_leaf(m)


def add_module_rule(types: type | tuple[type, ...], rule: LayerRule) -> LayerRule:
    for t in types if isinstance(types, tuple) else (types,):
        _MODULE_RULES[t] = rule
    return rule


def functions(*targets: Any) -> Callable[[F], F]:
    """Decorator: register a function rule for call_function targets."""

    def deco(fn: F) -> F:
        for t in targets:
            _FUNCTION_RULES[t] = fn
        return fn

    return deco


def methods(*names: str) -> Callable[[F], F]:
    """Decorator: register a function rule for call_method names."""

    def deco(fn: F) -> F:
        for n in names:
            _METHOD_RULES[n] = fn
        return fn

    return deco


def register_rule(target: type[nn.Module] | Callable[..., Any] | str, rule: LayerRule | FunctionRule) -> None:
    """Register how a layer prunes: a `LayerRule` for a module type (its subclasses too), or a
    function rule ``rule(analyzer, node, value)`` for a function (call_function) or a tensor
    method name (call_method). A later registration replaces an earlier one."""
    if isinstance(target, type):
        if not issubclass(target, nn.Module) or not isinstance(rule, LayerRule):
            raise TypeError("register_rule: a module type takes a LayerRule instance")
        _MODULE_RULES[target] = rule
    elif isinstance(rule, LayerRule) or not callable(rule):
        raise TypeError("register_rule: a function or method name takes a function rule (analyzer, node, value)")
    elif isinstance(target, str):
        _METHOD_RULES[target] = rule
    else:
        _FUNCTION_RULES[target] = rule


def counts_macs(m: nn.Module) -> bool:
    """Whether calls of `m` are counted (its rule has a MAC formula: conv, linear, registered layers)."""
    rule = module_rule(m)
    return rule is not None and type(rule).mac_term is not LayerRule.mac_term


def layer_macs(m: nn.Module, x: Any, y: Any) -> int:
    """MACs of one measured call of `m` (whole batch): its rule's term over the real channel counts."""
    rule = module_rule(m)
    if rule is None or not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        return 0
    term = rule.mac_term(m, tuple(x.shape), tuple(y.shape))
    if term is None:
        return 0
    c_in = x.shape[rule.in_axis] if x.dim() else 1
    c_out = y.shape[rule.out_axis] if y.dim() else 1
    return term.value(int(c_out), int(c_in))


def set_size_attr(m: nn.Module, sa: SizeAttr, counts: list[int]) -> None:
    """Write the kept channel counts back into the attribute a forward reads (split sizes, ...)."""
    value: Any = counts[0] if sa.kind == "int" else (tuple(counts) if sa.kind == "tuple" else list(counts))
    setattr(m, sa.attr, value)
