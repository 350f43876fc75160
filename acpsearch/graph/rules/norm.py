"""Normalisations and per-channel activations: channels pass through, per-channel tensors follow."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from acpsearch.graph.channels import Desc, LayerInfo, ModuleInfo, Seg
from acpsearch.graph.rules.base import LayerRule, add_module_rule, functions
from acpsearch.graph.state import Analyzer


def _norm_layer(an: Analyzer, node: fx.Node, name: str, m: nn.Module, segs: tuple[Seg, ...], op: str, xv: Any) -> None:
    value = an.values.get(node)
    lay = LayerInfo(name, "norm", op, name, segs, segs, params=an.own_tensors(name, m))
    lay.in_shape = tuple(xv.shape)
    lay.out_shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
    an.add_layer(node, lay)


class ChannelNormRule(LayerRule):
    """BatchNorm / InstanceNorm / GroupNorm over axis 1 (GroupNorm: a block divisor)."""

    kind = "norm"

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        x = node.args[0] if node.args else None
        xv = an.val(x)
        if not isinstance(xv, torch.Tensor) or xv.dim() < 2:
            return False
        segs = an.in_segs(node, x, 1, name)
        if isinstance(m, nn.GroupNorm):
            if len(segs) == 1:
                an.V.set_blocks(segs[0][0], m.num_groups)
            else:
                for v, _ in segs:
                    an.V.freeze(v)
        for t in ("weight", "bias", "running_mean", "running_var"):
            tv = getattr(m, t, None)
            if isinstance(tv, torch.Tensor) and tv.dim() == 1:
                an.bind(f"{name}.{t}", 0, segs)
        kind = "groupnorm" if isinstance(m, nn.GroupNorm) else "norm"
        an.modules.setdefault(name, ModuleInfo(kind, segs, segs, getattr(m, "num_groups", 1)))
        _norm_layer(an, node, name, m, segs, type(m).__name__, xv)
        an.desc[node] = Desc(1, segs)
        return True

    def resize(self, m: nn.Module, info: ModuleInfo, n_in: int | None, n_out: int | None) -> None:
        setattr(m, "num_channels" if info.kind == "groupnorm" else "num_features", n_out)


class LayerNormRule(LayerRule):
    """nn.LayerNorm over the channel axis when that axis is last (channels-last blocks); a
    subclass with its own forward (a channels-first LayerNorm2d permuting inside) is traced
    through and its ``F.layer_norm`` handled by `layer_norm` below."""

    kind = "norm"

    def is_leaf(self, m: nn.Module) -> bool:
        return type(m).forward is nn.LayerNorm.forward

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        assert isinstance(m, nn.LayerNorm)
        x = node.args[0] if node.args else None
        xv, dx = an.val(x), an.d(x)
        if not isinstance(xv, torch.Tensor):
            return False
        nd = len(m.normalized_shape)
        if nd == 1 and isinstance(dx, Desc) and dx.axis == xv.dim() - 1 and all(r == 1 for _, r in dx.segs):
            segs = dx.segs
            for t in ("weight", "bias"):
                if getattr(m, t, None) is not None:
                    an.bind(f"{name}.{t}", 0, segs)
            an.modules.setdefault(name, ModuleInfo("layernorm", segs, segs))
            an.desc[node] = dx
        else:
            if isinstance(dx, Desc) and dx.axis < xv.dim() - nd:
                an.desc[node] = dx  # normalises non-channel dims only: channels pass through
            else:
                an.freeze_desc(dx)
                an.desc[node] = dx if isinstance(dx, Desc) else None
            segs = dx.segs if isinstance(dx, Desc) else ()
            an.modules.setdefault(name, ModuleInfo("frozen"))
        _norm_layer(an, node, name, m, segs, "LayerNorm", xv)
        return True

    def resize(self, m: nn.Module, info: ModuleInfo, n_in: int | None, n_out: int | None) -> None:
        setattr(m, "normalized_shape", (n_out,))  # noqa: B010 - the module's attributes, not typed


@functions(F.layer_norm)
def layer_norm(an: Analyzer, node: fx.Node, value: Any) -> None:
    """F.layer_norm(x, (C,), weight, bias) over a channels-last channel axis: weight and bias
    follow the channels; the literal normalized_shape is rewritten by the pruner (nn.LayerNorm's
    attribute, or an attribute of the calling module that holds it), else the channels freeze."""
    x = node.args[0]
    xv, dx = an.val(x), an.d(x)
    shape = an.val(node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape"))
    shape = [shape] if isinstance(shape, int) else list(shape)
    an.desc[node] = dx if isinstance(dx, Desc) and isinstance(value, torch.Tensor) else None
    extra = [node.args[i] if len(node.args) > i else node.kwargs.get(k) for i, k in ((2, "weight"), (3, "bias"))]
    if not isinstance(dx, Desc) or dx.axis < xv.dim() - len(shape):
        for a in extra:  # channels not normalised: they pass through; the affine tensors stay whole
            an.freeze_desc(an.d(a))
        return
    ok = len(shape) == 1 and dx.axis == xv.dim() - 1 and all(r == 1 for _, r in dx.segs)
    for a in extra:
        da = an.d(a)
        if ok and isinstance(a, fx.Node) and not (isinstance(da, Desc) and an.unify(da.segs, dx.segs)):
            ok = False
    owner = an.calling_module(node)
    mod = an.model.get_submodule(owner) if owner else an.model
    if ok and isinstance(mod, nn.LayerNorm) and tuple(mod.normalized_shape) == tuple(shape):
        an.modules.setdefault(owner, ModuleInfo("layernorm", dx.segs, dx.segs))
        _norm_layer(an, node, owner, mod, dx.segs, "layer_norm", xv)
    elif not (ok and an.size_attr(node, an.val(node.args[1]), [dx.segs])):
        an.freeze_args(node)


class PReLURule(LayerRule):
    kind = "act"

    def analyse(self, an: Analyzer, node: fx.Node, name: str, m: nn.Module, value: Any) -> bool:
        assert isinstance(m, nn.PReLU)
        x = node.args[0] if node.args else None
        xv, dx = an.val(x), an.d(x)
        if not isinstance(xv, torch.Tensor):
            return False
        if m.num_parameters > 1:
            segs = an.in_segs(node, x, 1, name)
            an.bind(f"{name}.weight", 0, segs)
            an.modules.setdefault(name, ModuleInfo("prelu", segs, segs))
            an.desc[node] = Desc(1, segs)
        else:
            segs = dx.segs if isinstance(dx, Desc) else ()
            an.desc[node] = dx
        lay = LayerInfo(name, "act", "PReLU", name, segs, segs, params=an.own_tensors(name, m))
        lay.in_shape, lay.out_shape = tuple(xv.shape), tuple(value.shape)
        an.add_layer(node, lay)
        return True

    def resize(self, m: nn.Module, info: ModuleInfo, n_in: int | None, n_out: int | None) -> None:
        setattr(m, "num_parameters", n_out)  # noqa: B010 - the module's attributes, not typed


add_module_rule((_BatchNorm, _InstanceNorm, nn.GroupNorm), ChannelNormRule())
add_module_rule(nn.LayerNorm, LayerNormRule())
add_module_rule(nn.PReLU, PReLURule())
