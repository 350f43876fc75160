"""Pooling, resizing, padding and ops along one dim.

Pooling, resizing and padding of other axes pass the channel descriptor through when the channel
axis stays whole (else they freeze it); softmax-like ops over the channel axis freeze it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from acpsearch.graph.channels import Desc
from acpsearch.graph.rules.base import LayerRule, add_module_rule, functions, methods
from acpsearch.graph.state import Analyzer

POOL_MODULES: tuple[type, ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
    nn.ReflectionPad2d,
)

_POOL_FUNCS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.interpolate,
    F.upsample,
    F.lp_pool2d,
    torch.avg_pool1d,
    torch.nn.functional.upsample_nearest,
    torch.nn.functional.upsample_bilinear,
}
_DIM_FUNCS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.cumsum, F.normalize}
_DIM_METHODS = {"softmax", "log_softmax", "cumsum"}


def _axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class PoolRule(LayerRule):
    """Parameter-free pooling / resizing / padding modules: channels pass when axis 1 stays whole."""

    leaf = False

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        if any(True for _ in m.parameters()):
            return False
        x = node.args[0] if node.args else None
        an.desc[node] = spatial(an, an.d(x), an.val(x), value)
        return True


class SoftmaxRule(LayerRule):
    leaf = False

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        assert isinstance(m, (nn.Softmax, nn.LogSoftmax))
        x = node.args[0] if node.args else None
        dx, xv = an.d(x), an.val(x)
        if not isinstance(dx, Desc):
            return False
        if _axis(m.dim if m.dim is not None else 1, xv.dim()) == dx.axis:
            an.freeze_desc(dx)
        an.desc[node] = dx
        return True


def spatial(an: Analyzer, dx: Any, xv: Any, value: Any) -> Any:
    """Pooling / resizing: channels pass through when axis 1 is kept whole."""
    if not isinstance(dx, Desc):
        return None
    if isinstance(value, torch.Tensor) and dx.axis == 1 and value.dim() == xv.dim() and value.shape[1] == xv.shape[1]:
        return dx
    an.freeze_desc(dx)
    return an.none_like(value)


@functions(*_POOL_FUNCS)
def pool(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0] if node.args else None
    an.desc[node] = spatial(an, an.d(x), an.val(x), value)


@functions(F.pad)
def pad(an: Analyzer, node: fx.Node, value: Any) -> None:
    x = node.args[0]
    dx, xv = an.d(x), an.val(x)
    widths = an.val(node.args[1]) if len(node.args) > 1 else an.val(node.kwargs.get("pad"))
    padded = {xv.dim() - 1 - i // 2 for i, p in enumerate(widths) if p}
    if isinstance(dx, Desc) and dx.axis in padded:
        an.freeze_desc(dx)
        an.desc[node] = None
    else:
        an.desc[node] = dx


@functions(*_DIM_FUNCS)
@methods(*_DIM_METHODS)
def along_dim(an: Analyzer, node: fx.Node, value: Any) -> None:
    """softmax / cumsum / normalize: freeze when taken over the channel axis."""
    x = node.args[0]
    dx, xv = an.d(x), an.val(x)
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else (1 if node.target is F.normalize else None))
    dim = an.val(dim)
    if isinstance(dx, Desc) and (dim is None or _axis(int(dim), xv.dim()) == dx.axis):
        an.freeze_desc(dx)
    an.desc[node] = dx if isinstance(value, torch.Tensor) and value.shape == xv.shape else None


add_module_rule(POOL_MODULES, PoolRule())
add_module_rule((nn.Softmax, nn.LogSoftmax), SoftmaxRule())
