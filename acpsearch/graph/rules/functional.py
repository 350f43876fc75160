"""Functional convolutions (``F.conv1d/2d/3d``) on a weight derived from one parameter.

BNN code writes binary convs as plain modules that call ``F.conv2d(sign(x), f(self.weight))``
with ``f`` = ``alpha * sign(W)`` and a straight-through trick. When the weight argument is computed
from exactly one parameter of the same shape (elementwise ops and per-output-channel reductions),
the call is a conv over that parameter: its axis 0 binds the output channels, axis 1 the input
channels, and a bias parameter of the output size follows the output. The calling module is
recorded as a conv whose weight is *derived* (the pruner re-checks its effective weight, see
``acpsearch.pruning.bake``). Its MACs are counted like a conv's; they are binary operations when
the input is sign-valued and the weight is ``+-alpha`` per output channel
(`acpsearch.graph.cost.is_binary_call`). Grouped functional convs and weights of any other origin
freeze the channels they touch and are not counted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from acpsearch.graph.channels import Desc, LayerInfo, ModuleInfo, Seg
from acpsearch.graph.cost import functional_conv_term, is_binary_call
from acpsearch.graph.rules.base import functions
from acpsearch.graph.state import Analyzer

_POS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _arg(node: fx.Node, i: int, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(_POS[i], default)


def _source_param(an: Analyzer, w: Any, shape: torch.Size) -> str | None:
    """The one parameter of `shape` that the node `w` is computed from (None: other origins)."""
    if not isinstance(w, fx.Node):
        return None
    names = set(an.param_src.get(w, ()))
    if len(names) != 1:
        return None
    pname = names.pop()
    tensors = dict(an.model.named_parameters())
    p = tensors.get(pname)
    return pname if p is not None and tuple(p.shape) == tuple(shape) else None


def _stride(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


@functions(F.conv1d, F.conv2d, F.conv3d)
def functional_conv(an: Analyzer, node: fx.Node, value: Any) -> None:
    x, w, b = _arg(node, 0), _arg(node, 1), _arg(node, 2)
    xv, wv, bv = an.val(x), an.val(w), an.val(b)
    pname = _source_param(an, w, wv.shape) if isinstance(wv, torch.Tensor) else None
    bias_name = _source_param(an, b, bv.shape) if isinstance(bv, torch.Tensor) else None
    ok = (
        pname is not None
        and isinstance(xv, torch.Tensor)
        and isinstance(value, torch.Tensor)
        and an.val(_arg(node, 6, 1)) == 1
        and (b is None or bias_name is not None)
    )
    if not ok:
        an.freeze_args(node)
        an.desc[node] = an.none_like(value)
        return
    assert pname is not None and isinstance(wv, torch.Tensor)
    module = an.calling_module(node) or node.name
    segs_in = an.in_segs(node, x, 1, module)
    segs_out: tuple[Seg, ...] = ((an.V.new(int(wv.shape[0]), module), 1),)
    an.bind(pname, 0, segs_out)
    an.bind(pname, 1, segs_in)
    if bias_name is not None:
        an.bind(bias_name, 0, segs_out)
    root = an.V.find(segs_out[0][0])
    if an.V.label[root] == pname:  # the group is named after the module, as for nn.Conv2d
        an.V.label[root] = module
    binary = is_binary_call(xv, wv)
    an.derived.setdefault(module, pname)
    if binary:
        an.binary_params.add(pname)
    an.modules.setdefault(module, ModuleInfo("conv", segs_in, segs_out))
    name = module if all(lay.name != module for lay in an.layers) else node.name
    kernel, stride = int(wv.shape[-1]) if wv.dim() > 2 else 1, _stride(an.val(_arg(node, 3, 1)))
    lay = LayerInfo(name, "conv", "conv", module, segs_in, segs_out, kernel, stride, 1)
    lay.in_shape, lay.out_shape = tuple(xv.shape), tuple(value.shape)
    lay.params = [p for p in (pname, bias_name) if p is not None]
    idx = an.add_layer(node, lay)
    an.add_flops(idx, functional_conv_term(tuple(wv.shape), tuple(value.shape), binary), segs_out, segs_in)
    an.desc[node] = Desc(1, segs_out)
