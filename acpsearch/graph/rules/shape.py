"""Ops that move, reshape, join or cut the channel axis: reshape / flatten, permute, reductions,
expand, cat, split and indexing."""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from acpsearch.graph.channels import Desc, LayerInfo, Seg
from acpsearch.graph.rules.base import LayerRule, add_module_rule, functions, methods
from acpsearch.graph.state import Analyzer, flatten_nodes

_RESHAPE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "unflatten",
    "view_as",
    "reshape_as",
    "squeeze_",
    "unsqueeze_",
}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten}
_PERMUTE_METHODS = {"permute", "transpose", "movedim", "swapaxes", "swapdims", "t", "transpose_"}
_PERMUTE_FUNCS = {torch.permute, torch.transpose, torch.movedim, torch.swapaxes, torch.swapdims, torch.t}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp", "norm"}
_REDUCE_FUNCS = {
    torch.mean,
    torch.sum,
    torch.amax,
    torch.amin,
    torch.max,
    torch.min,
    torch.std,
    torch.var,
    torch.prod,
    torch.logsumexp,
}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_SPLIT_FUNCS = {torch.split, torch.chunk, torch.tensor_split, torch.unbind}
_SPLIT_METHODS = {"split", "chunk", "tensor_split", "unbind"}


def _axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def reshape_rule(an: Analyzer, dx: Any, ishape: tuple[int, ...], oshape: tuple[int, ...]) -> Desc | None:
    """The channel axis after a reshape, when it survives whole (merged with trailing dims: repeat)."""
    if not isinstance(dx, Desc):
        return None
    ax = dx.axis
    C = ishape[ax]
    P = math.prod(ishape[:ax])
    prefix = 1
    for j, s in enumerate(oshape):
        if prefix == P and s % C == 0 and C > 1:
            m = s // C
            acc, t, ok = 1, 0, m == 1
            while not ok and ax + 1 + t < len(ishape) and acc < m:
                acc *= ishape[ax + 1 + t]
                t += 1
                ok = acc == m
            if ok:
                return Desc(j, tuple((v, r * m) for v, r in dx.segs))
        prefix *= s
        if prefix > P:
            break
    an.freeze_desc(dx)
    return None


class FlattenRule(LayerRule):
    leaf = False

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        x = node.args[0] if node.args else None
        xv = an.val(x)
        if not isinstance(xv, torch.Tensor) or not isinstance(value, torch.Tensor):
            return False
        an.desc[node] = reshape_rule(an, an.d(x), tuple(xv.shape), tuple(value.shape))
        return True


@functions(*_RESHAPE_FUNCS)
@methods(*_RESHAPE_METHODS)
def reshape(an: Analyzer, node: fx.Node, value: Any) -> None:
    x, tgt = node.args[0], node.target
    dx, xv = an.d(x), an.val(x)
    if not isinstance(dx, Desc) or not isinstance(value, torch.Tensor):
        an.desc[node] = an.none_like(value)
        return
    out = reshape_rule(an, dx, tuple(xv.shape), tuple(value.shape))
    an.desc[node] = out
    if out is None:
        return
    if tgt in ("view", "reshape", torch.reshape):
        shape_args = list(node.args[1:]) if tgt != torch.reshape else [node.args[1]]
        if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list, torch.Size)):
            shape_args = list(shape_args[0])
        if len(shape_args) == value.dim():
            a = shape_args[out.axis]
            if isinstance(a, int) and a != -1:  # literal channel size: breaks after pruning
                an.freeze_desc(dx)
    elif tgt in ("unflatten", torch.unflatten) and _axis(int(an.val(node.args[1])), xv.dim()) == dx.axis:
        an.freeze_desc(dx)
        an.desc[node] = None


@methods("expand", "expand_as")
def expand(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0]
    dx, xv = an.d(x), an.val(x)
    if not isinstance(dx, Desc):
        an.freeze_args(node)
        an.desc[node] = an.none_like(value)
        return
    nax = dx.axis + value.dim() - xv.dim()
    an.desc[node] = Desc(nax, dx.segs) if value.shape[nax] == xv.shape[dx.axis] else None


def _probe(an: Analyzer, node: fx.Node, dx: Desc, xv: torch.Tensor) -> Any:
    """Run the op on a probe tensor with 2 entries on the channel axis, 1 elsewhere."""
    shape = [1] * xv.dim()
    shape[dx.axis] = 2
    probe = torch.zeros(shape)
    args = [an.val(a) for a in node.args[1:]]
    kwargs = {k: an.val(v) for k, v in node.kwargs.items()}
    with warnings.catch_warnings():  # e.g. std() over one element: only the output shape matters
        warnings.simplefilter("ignore")
        if node.op == "call_method":
            return getattr(probe, str(node.target))(*args, **kwargs)
        return node.target(probe, *args, **kwargs)  # type: ignore[operator]


@functions(*_PERMUTE_FUNCS)
@methods(*_PERMUTE_METHODS)
def permute(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0]
    dx, xv = an.d(x), an.val(x)
    an.desc[node] = Desc(list(_probe(an, node, dx, xv).shape).index(2), dx.segs) if isinstance(dx, Desc) else None


@functions(*_REDUCE_FUNCS)
@methods(*_REDUCE_METHODS)
def reduce(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0]
    dx, xv = an.d(x), an.val(x)
    if not isinstance(dx, Desc):
        an.desc[node] = an.none_like(value)
        return
    try:
        out = _probe(an, node, dx, xv)
    except Exception:  # noqa: BLE001 - an unexpected signature: be conservative
        an.freeze_desc(dx)
        an.desc[node] = an.none_like(value)
        return
    outs = out if isinstance(out, (tuple, list)) else (out,)
    descs = [  # reduced over the channel axis: no channel axis left (structurally safe)
        Desc(list(o.shape).index(2), dx.segs) if isinstance(o, torch.Tensor) and 2 in list(o.shape) else None
        for o in outs
    ]
    an.desc[node] = tuple(descs) if isinstance(out, (tuple, list)) else descs[0]


@functions(*_CAT_FUNCS)
def cat(an: Analyzer, node: fx.Node, value: Any) -> None:
    """Along the channel axis: segments concatenate; along another axis: operands unify."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim = _axis(int(an.val(dim)), value.dim())
    items = [(a, an.values[a], an.desc.get(a)) for a in flatten_nodes(tensors)]
    tracked = [d for _, _, d in items if isinstance(d, Desc)]
    if all(t.dim() == value.dim() for _, t, _ in items) and tracked:
        if all(d.axis == dim for d in tracked):
            segs: list[Seg] = []
            for _, t, d in items:
                segs.extend(d.segs if isinstance(d, Desc) else ((an.V.new(t.shape[dim], node.name + ":in", True), 1),))
            lay = LayerInfo(node.name, "cat", "cat", None, tuple(segs), tuple(segs), out_shape=tuple(value.shape))
            an.add_layer(node, lay)
            an.desc[node] = Desc(dim, tuple(segs))
            return
        ref = tracked[0]
        if len(tracked) == len(items) and len({d.axis for d in tracked}) == 1:
            ex = [an.V.expand(d.segs) for d in tracked]
            if all(an.same_layout(e, ex[0]) for e in ex):
                for d in tracked[1:]:
                    an.unify(d.segs, ref.segs)
                lay = LayerInfo(node.name, "cat", "cat", None, ref.segs, ref.segs, out_shape=tuple(value.shape))
                an.add_layer(node, lay)
                an.desc[node] = Desc(ref.axis, ref.segs)
                return
    an.freeze_args(node)
    an.desc[node] = None


@functions(*_SPLIT_FUNCS)
@methods(*_SPLIT_METHODS)
def split(an: Analyzer, node: fx.Node, value: Any) -> None:
    """Along another axis: every chunk keeps the channels. Along the channel axis into chunks
    whose sizes a module attribute holds (``torch.split(x, self.splits, 1)``, MixConv): the
    variables split at the chunk boundaries, each chunk prunes with its slice of the producer
    and the pruner rewrites the attribute. Other channel splits freeze."""
    x, tgt = node.args[0], node.target
    dx, xv = an.d(x), an.val(x)
    unbind = tgt in ("unbind", torch.unbind)
    dim = node.kwargs.get("dim", node.args[1 if unbind else 2] if len(node.args) > (1 if unbind else 2) else 0)
    dim = _axis(int(an.val(dim)), xv.dim())
    if not isinstance(dx, Desc) or not isinstance(value, (tuple, list)):
        an.freeze_args(node)
        an.desc[node] = an.none_like(value)
    elif dim != dx.axis:
        nax = dx.axis - (1 if unbind and dim < dx.axis else 0)
        an.desc[node] = tuple(Desc(nax, dx.segs) for _ in value)
    else:
        an.desc[node] = _channel_split(an, node, tgt, dx, value)


def _channel_split(an: Analyzer, node: fx.Node, tgt: Any, dx: Desc, value: Any) -> Any:
    literal = an.val(node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections"))
    sizes = [int(t.shape[dx.axis]) for t in value]
    if tgt not in ("split", torch.split) or not isinstance(literal, (list, tuple)) or len(sizes) < 2:
        an.freeze_desc(dx)  # equal-size / index split points cannot follow pruning: freeze
        return tuple(None for _ in value)
    cuts = {sum(sizes[:i]) for i in range(1, len(sizes))}
    pieces = an.V.refine(dx.segs, cuts)
    chunks: list[list[Seg]] = [[] for _ in sizes]
    off, k = 0, 0
    for v, rep in pieces:
        while k < len(sizes) - 1 and off >= sum(sizes[: k + 1]):
            k += 1
        chunks[k].append((v, rep))
        off += an.V.size[an.V.find(v)] * rep
    out = [tuple(c) for c in chunks]
    if any(sum(an.V.size[an.V.find(v)] * r for v, r in c) != s for c, s in zip(out, sizes)):
        an.freeze_desc(dx)
        return tuple(None for _ in value)
    if any(r != 1 for c in out for _, r in c) or not an.size_attr(node, literal, list(out)):
        an.freeze_desc(dx)
    return tuple(Desc(dx.axis, c) for c in out)


@functions(operator.getitem)
def getitem(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0]
    dx, xv = an.d(x), an.val(x)
    idx = an.val(node.args[1])
    if isinstance(xv, (tuple, list)):
        d = an.desc.get(x)  # type: ignore[arg-type]
        if isinstance(d, (tuple, list)) and isinstance(idx, (int, slice)):
            an.desc[node] = d[idx] if isinstance(idx, int) else tuple(d[idx])
        else:
            an.desc[node] = an.none_like(value)
    elif not isinstance(xv, torch.Tensor) or not isinstance(dx, Desc):
        an.desc[node] = an.none_like(value) if not isinstance(xv, torch.Tensor) else None
    else:
        an.desc[node] = _index(an, dx, xv, idx, value)


def _index(an: Analyzer, dx: Desc, xv: torch.Tensor, idx: Any, value: Any) -> Desc | None:
    """Basic indexing: the channel axis must be kept whole (full slice), else it freezes."""
    items = idx if isinstance(idx, tuple) else (idx,)
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    in_d, out_d, new_ax = 0, 0, None
    for it in items:
        if it is Ellipsis:
            skip = xv.dim() - n_real
            if in_d <= dx.axis < in_d + skip:
                new_ax = out_d + dx.axis - in_d
            in_d, out_d = in_d + skip, out_d + skip
        elif it is None:
            out_d += 1
        elif isinstance(it, slice) and (in_d != dx.axis or _full(it, xv.shape[in_d])):
            new_ax = out_d if in_d == dx.axis else new_ax
            in_d, out_d = in_d + 1, out_d + 1
        elif isinstance(it, int) and in_d != dx.axis:
            in_d += 1
        else:  # a partial slice or an int on the channel axis, tensor / list indexing
            an.freeze_desc(dx)
            return None
    if new_ax is None:
        new_ax = out_d + (dx.axis - in_d)
    if not isinstance(value, torch.Tensor) or value.shape[new_ax] != xv.shape[dx.axis]:
        an.freeze_desc(dx)
        return None
    return Desc(new_ax, dx.segs)


def _full(it: slice, n: int) -> bool:
    return it.step in (None, 1) and it.start in (None, 0) and (it.stop is None or it.stop >= n)


add_module_rule(nn.Flatten, FlattenRule())
