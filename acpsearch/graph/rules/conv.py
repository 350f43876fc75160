"""Convolutions and linear layers: new output channels, MACs, resize and latency rebuild."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.conv import _ConvNd

from acpsearch.graph.channels import Desc, LayerInfo, ModuleInfo, Seg
from acpsearch.graph.cost import MacTerm, conv_term, linear_term
from acpsearch.graph.rules.base import LayerRule, add_module_rule
from acpsearch.graph.state import Analyzer

_PLAIN_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


class ConvRule(LayerRule):
    """nn.Conv1d/2d/3d and subclasses (not transposed: those are frozen, their MACs counted)."""

    kind = "conv"

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        assert isinstance(m, _ConvNd)
        xv = an.val(node.args[0]) if node.args else None
        if m.transposed or not isinstance(xv, torch.Tensor) or len(node.args) != 1 or node.kwargs:
            return False
        segs_in = an.in_segs(node, node.args[0], 1, name)
        g = m.groups
        if g == 1:
            segs_out: tuple[Seg, ...] = ((an.V.new(m.out_channels, name), 1),)
            an.bind(f"{name}.weight", 0, segs_out)
            an.bind(f"{name}.weight", 1, segs_in)
            info, ltype = ModuleInfo("conv", segs_in, segs_out), "conv"
        elif g == m.in_channels == m.out_channels:
            segs_out = segs_in
            an.bind(f"{name}.weight", 0, segs_out)
            info, ltype = ModuleInfo("conv_dw", segs_in, segs_out, g), "conv_dw"
        else:
            segs_out = ((an.V.new(m.out_channels, name), 1),)
            if len(segs_in) == 1 and g < m.in_channels:
                an.V.set_blocks(segs_in[0][0], g)
            else:  # concat-fed grouped conv or depthwise multiplier: its input stays whole
                for v, _ in segs_in:
                    an.V.freeze(v)
            an.V.set_blocks(segs_out[0][0], g)  # outputs: the same count from every conv group
            an.bind(f"{name}.weight", 0, segs_out)
            an.grouped_in[f"{name}.weight"] = g
            an.bind(f"{name}.weight", -1, segs_in)  # axis -1: the per-group input axis 1
            info, ltype = ModuleInfo("conv_grouped", segs_in, segs_out, g), "conv"
        if m.bias is not None:
            an.bind(f"{name}.bias", 0, segs_out)
        if type(m).forward not in _PLAIN_FORWARDS:  # a custom forward (binary conv): its weight is derived
            an.derived[name] = f"{name}.weight"
        if getattr(m, "acp_binary", False):
            an.binary_params.add(f"{name}.weight")
        an.modules.setdefault(name, info)
        stride = int(m.stride[0]) if isinstance(m.stride, tuple) else int(m.stride)
        lay = LayerInfo(name, ltype, type(m).__name__, name, segs_in, segs_out, int(m.kernel_size[0]), stride, g)
        lay.in_shape, lay.out_shape, lay.params = tuple(xv.shape), tuple(value.shape), an.own_tensors(name, m)
        idx = an.add_layer(node, lay)
        an.add_flops(idx, conv_term(m, tuple(xv.shape), tuple(value.shape)), segs_out, segs_in)
        an.desc[node] = Desc(1, segs_out)
        return True

    def resize(self, m: nn.Module, info: ModuleInfo, n_in: int | None, n_out: int | None) -> None:
        if info.kind == "conv_dw":
            for attr in ("out_channels", "in_channels", "groups"):
                setattr(m, attr, n_out)
        else:
            setattr(m, "out_channels", n_out)  # noqa: B010 - the module's attributes, not typed
            setattr(m, "in_channels", n_in)  # noqa: B010

    def mac_term(self, m: nn.Module, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> MacTerm | None:
        assert isinstance(m, _ConvNd)
        return conv_term(m, x_shape, y_shape)

    def timed_channels(
        self, m: nn.Module, fin: float, fout: float, in_pruned: bool, out_pruned: bool, c_in: int, c_out: int
    ) -> tuple[int, int]:
        assert isinstance(m, _ConvNd)
        groups = m.groups
        if groups == m.in_channels == m.out_channels and groups > 1:  # depthwise: in = out = groups
            c = max(1, round(m.out_channels * fout)) if out_pruned else m.out_channels
            return c, c
        cin = max(groups, round(m.in_channels * fin / groups) * groups) if in_pruned else m.in_channels
        cout = max(groups, round(m.out_channels * fout / groups) * groups) if out_pruned else m.out_channels
        return cin, cout

    def rebuild(self, m: nn.Module, c_in: int, c_out: int) -> nn.Module | None:
        assert isinstance(m, _ConvNd)
        groups = c_in if m.groups == m.in_channels == m.out_channels and m.groups > 1 else m.groups
        kw: dict[str, Any] = dict(
            kernel_size=m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=groups,
            bias=m.bias is not None,
        )
        cls: Any = (
            type(m) if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) else {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
        )
        if isinstance(cls, dict):
            cls = cls[len(m.kernel_size)]
        layer: nn.Module = cls(c_in, c_out, **kw)
        return layer


class LinearRule(LayerRule):
    """nn.Linear and subclasses over the last axis (flattened inputs keep their repeats)."""

    kind = "linear"
    in_axis = -1
    out_axis = -1

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        assert isinstance(m, nn.Linear)
        xv = an.val(node.args[0]) if node.args else None
        if not isinstance(xv, torch.Tensor) or len(node.args) != 1:
            return False
        segs_in = an.in_segs(node, node.args[0], -1, name, allow_repeat=True)
        segs_out: tuple[Seg, ...] = ((an.V.new(m.out_features, name), 1),)
        an.bind(f"{name}.weight", 0, segs_out)
        an.bind(f"{name}.weight", 1, segs_in)
        if m.bias is not None:
            an.bind(f"{name}.bias", 0, segs_out)
        an.modules.setdefault(name, ModuleInfo("linear", segs_in, segs_out))
        lay = LayerInfo(name, "linear", "linear", name, segs_in, segs_out)
        lay.in_shape, lay.out_shape, lay.params = tuple(xv.shape), tuple(value.shape), an.own_tensors(name, m)
        idx = an.add_layer(node, lay)
        an.add_flops(idx, linear_term(m, tuple(xv.shape), tuple(value.shape)), segs_out, segs_in)
        an.desc[node] = Desc(value.dim() - 1, segs_out)
        return True

    def resize(self, m: nn.Module, info: ModuleInfo, n_in: int | None, n_out: int | None) -> None:
        setattr(m, "out_features", n_out)  # noqa: B010 - the module's attributes, not typed
        setattr(m, "in_features", n_in)  # noqa: B010

    def mac_term(self, m: nn.Module, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> MacTerm | None:
        assert isinstance(m, nn.Linear)
        return linear_term(m, x_shape, y_shape)

    def rebuild(self, m: nn.Module, c_in: int, c_out: int) -> nn.Module | None:
        assert isinstance(m, nn.Linear)
        return nn.Linear(c_in, c_out, bias=m.bias is not None)


add_module_rule(_ConvNd, ConvRule())
add_module_rule(nn.Linear, LinearRule())
