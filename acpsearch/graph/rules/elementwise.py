"""Elementwise ops and activations: ops that keep the channel axis.

Binary ops unify the channel variables of their operands (broadcasting and free parameters such
as layer-scale gammas included); unary ops and activations pass the descriptor through. Pooling,
padding and softmax-like ops are in `acpsearch.graph.rules.pool`.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from acpsearch.graph.channels import Desc, LayerInfo
from acpsearch.graph.rules.base import LayerRule, add_module_rule, functions, methods
from acpsearch.graph.state import Analyzer, flatten_nodes

PASS_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Threshold,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
)

_BINARY = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.true_divide,
    torch.maximum,
    torch.minimum,
    torch.subtract,
    torch.multiply,
}
# comparisons (masks of BNN sign estimators: `(x < 0).float()`) and torch.where are elementwise
_COMPARE: set[Any] = {operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne}
_COMPARE |= {torch.lt, torch.le, torch.gt, torch.ge, torch.eq, torch.ne, torch.less, torch.greater, torch.where}
_BINARY |= _COMPARE
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"}
_BINARY_METHODS |= {"lt", "le", "gt", "ge", "eq", "ne", "less", "greater"}
_MERGE_NAMES = {
    "add": "add",
    "iadd": "add",
    "add_": "add",
    "sub": "add",
    "isub": "add",
    "sub_": "add",
    "subtract": "add",
    "mul": "mul",
    "imul": "mul",
    "mul_": "mul",
    "multiply": "mul",
    "truediv": "mul",
    "itruediv": "mul",
    "div": "mul",
    "div_": "mul",
    "true_divide": "mul",
    "maximum": "add",
    "minimum": "add",
}
_UNARY_FUNCS = {
    F.relu,
    F.relu_,
    F.relu6,
    F.hardswish,
    F.hardsigmoid,
    F.silu,
    F.gelu,
    F.mish,
    F.elu,
    F.selu,
    F.celu,
    F.leaky_relu,
    F.hardtanh,
    F.softplus,
    F.sigmoid,
    F.tanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.logsigmoid,
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.sign,
    torch.abs,
    torch.exp,
    torch.neg,
    torch.clamp,
    torch.clip,
    torch.sqrt,
    torch.square,
    torch.erf,
    torch.sin,
    torch.cos,
    operator.neg,
    operator.pos,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.rand_like,
    torch.randn_like,
    torch.full_like,
    torch.nn.functional.hardshrink,
    torch.nn.functional.threshold,
}
_UNARY_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "sign",
    "sign_",
    "abs",
    "exp",
    "neg",
    "clamp",
    "clamp_",
    "clip",
    "clip_",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "to",
    "type_as",
    "detach",
    "sqrt",
    "square",
    "pow",
    "erf",
    "requires_grad_",
    "cpu",
    "cuda",
    "bfloat16",
    "bool",
    "int",
    "long",
    "hardswish",
    "zero_",
}
_META_METHODS = {
    "size",
    "dim",
    "numel",
    "ndimension",
    "new_zeros",
    "new_ones",
    "new_empty",
    "new_full",
    "new_tensor",
    "get_device",
    "is_contiguous",
    "element_size",
    "nelement",
    "stride",
}


class PassRule(LayerRule):
    """Parameter-free activations / dropout / identity: the descriptor passes through."""

    leaf = False  # standard torch.nn modules are fx leaves anyway; subclasses are traced through

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        if any(True for _ in m.parameters()):
            return False
        an.desc[node] = an.d(node.args[0] if node.args else None)
        return True


@functions(getattr, len)
@methods(*_META_METHODS)
def meta(an: Analyzer, node: fx.Node, value: Any) -> None:
    an.desc[node] = an.none_like(value)


@methods("type")
def type_cast(an: Analyzer, node: fx.Node, value: Any) -> None:
    """`.type(dtype)` is a cast (unary); `.type()` returns the type name (meta)."""
    if isinstance(value, torch.Tensor):
        unary(an, node, value)
    else:
        meta(an, node, value)


@functions(*_UNARY_FUNCS)
@methods(*_UNARY_METHODS)
def unary(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0] if node.args else None
    xv = an.val(x)
    if node.target == "pow" and len(node.args) > 1 and isinstance(an.val(node.args[1]), torch.Tensor):
        binary(an, node, value)
    elif not isinstance(value, torch.Tensor) or not isinstance(xv, torch.Tensor) or value.shape != xv.shape:
        an.freeze_args(node)
        an.desc[node] = an.none_like(value)
    else:
        an.desc[node] = an.d(x)


@functions(*_BINARY)
@methods(*_BINARY_METHODS)
def binary(an: Analyzer, node: fx.Node, value: Any) -> None:
    """Unify the channel variables of all operands that have a channel axis of size > 1."""
    if not isinstance(value, torch.Tensor):
        an.freeze_args(node)
        an.desc[node] = an.none_like(value)
        return
    nd = value.dim()
    args = flatten_nodes((node.args, node.kwargs))
    ops = [(a, an.values[a], an.desc.get(a)) for a in args if isinstance(an.values.get(a), torch.Tensor)]
    axes = {d.axis + nd - t.dim() for _, t, d in ops if isinstance(d, Desc)}
    if len(axes) != 1:
        if len(axes) > 1:
            for _, _, d in ops:
                an.freeze_desc(d)
        an.desc[node] = None
        return
    A = axes.pop()
    tracked, ok = [], True
    for _, t, d in ops:
        off = nd - t.dim()
        if (t.shape[A - off] if A - off >= 0 else 1) == 1:
            continue
        if not isinstance(d, Desc):
            ok = False
            continue
        tracked.append(d)
    if not tracked:
        an.desc[node] = None
        return
    ref = tracked[0]
    exp = [an.V.expand(d.segs) for d in tracked]
    ok = ok and all(an.same_layout(e, exp[0]) for e in exp)
    if not ok:
        for _, _, d in ops:
            an.freeze_desc(d)
    else:
        for d in tracked[1:]:
            an.unify(d.segs, ref.segs)
    an.desc[node] = Desc(A, ref.segs)
    _merge_layer(an, node, value, ops, ref)


def _merge_layer(an: Analyzer, node: fx.Node, value: torch.Tensor, ops: list[Any], ref: Desc) -> None:
    """A graph node for a merge of two activations (add / mul) or a free-parameter op (scale)."""
    real = [a for a, _, _ in ops if a not in an.param_src]
    pnames = sorted({p for a, _, _ in ops for p in an.param_src.get(a, ()) if p in an.param_names})
    tgt = node.target
    name = tgt if isinstance(tgt, str) else getattr(tgt, "__name__", str(tgt))
    if len(real) >= 2:
        lay = LayerInfo(node.name, _MERGE_NAMES.get(name, "add"), name, None, ref.segs, ref.segs)
        lay.in_shape, lay.out_shape = tuple(an.values[real[0]].shape), tuple(value.shape)
        an.add_layer(node, lay)
    elif pnames:
        lay = LayerInfo(node.name, "scale", name, None, ref.segs, ref.segs, params=pnames)
        lay.out_shape = tuple(value.shape)
        an.add_layer(node, lay)


add_module_rule(PASS_MODULES, PassRule())
