"""The one per-layer MAC formula, shared by the closed-form cost (`ChannelGraph.cost`) and the
cost measured on a real module (`acpsearch.pruning.measure_cost`).

A layer call costs ``num * C_out * C_in // den`` multiply-accumulates for the whole batch, where
``C_out`` / ``C_in`` are its output / input channel counts (a factor is 1 when the term does not
scale with that side: a depthwise conv scales with its channels once). The closed form evaluates
the same term with ``C`` = the kept channels of the layer's segments; a measurement evaluates it
with the channel counts of the real input and output tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd


@dataclass(frozen=True)
class MacTerm:
    """MACs of one call = num * (C_out if out) * (C_in if inp) // den."""

    num: int
    den: int = 1
    out: bool = True
    inp: bool = True
    binary: bool = False  # a binary (sign x sign) multiply-accumulate: counted in bops, not flops

    def value(self, c_out: int, c_in: int) -> int:
        return self.num * (c_out if self.out else 1) * (c_in if self.inp else 1) // self.den


def _per_channel(shape: Sequence[int], axis: int) -> int:
    """Elements of a tensor of `shape` per entry of its axis `axis` (batch included)."""
    return math.prod(shape) // max(int(shape[axis]), 1)


def conv_term(m: _ConvNd, x_shape: Sequence[int], y_shape: Sequence[int]) -> MacTerm:
    """Convolution: output elements x in_channels/groups x kernel volume (transposed: input
    elements x out_channels/groups x kernel volume)."""
    kv = int(math.prod(m.kernel_size))
    binary = bool(getattr(m, "acp_binary", False))
    if m.transposed:
        return MacTerm(_per_channel(x_shape, 1) * kv, m.groups, binary=binary)
    if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise: one input channel each
        return MacTerm(_per_channel(y_shape, 1) * kv, 1, out=True, inp=False, binary=binary)
    return MacTerm(_per_channel(y_shape, 1) * kv, m.groups, binary=binary)


def functional_conv_term(w_shape: Sequence[int], y_shape: Sequence[int], binary: bool) -> MacTerm:
    """``F.conv1d/2d/3d`` (groups 1): output elements x in_channels x kernel volume."""
    return MacTerm(_per_channel(y_shape, 1) * int(math.prod(w_shape[2:])), binary=binary)


def _sign_valued(t: torch.Tensor, scale: torch.Tensor) -> bool:
    """Every entry is 0 or +-scale (relative tolerance 1e-4: straight-through estimators written
    as ``hard.detach() - soft.detach() + soft`` leave rounding errors)."""
    d = t.detach().abs()
    return bool((((d - scale).abs() <= 1e-4 * scale) | (d <= 1e-6 * scale)).all())


def is_binary_call(x: torch.Tensor, w: torch.Tensor) -> bool:
    """A functional conv is binary when its input is sign-valued (0 / +-1) and every output row
    of its weight is 0 / +-alpha (one scale per output channel)."""
    if x.numel() == 0 or w.numel() == 0 or not x.is_floating_point():
        return False
    if not _sign_valued(x, torch.ones((), dtype=x.dtype, device=x.device)):
        return False
    rows = w.detach().flatten(1)
    alpha = rows.abs().amax(1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    return _sign_valued(rows, alpha)


def linear_term(m: nn.Linear, x_shape: Sequence[int], y_shape: Sequence[int]) -> MacTerm:
    """Linear: output elements x in_features."""
    return MacTerm(_per_channel(y_shape, len(y_shape) - 1))


def count_params(model: nn.Module) -> int:
    """Every parameter of the model, shared ones once (buffers are not counted)."""
    return sum(p.numel() for p in model.parameters())
