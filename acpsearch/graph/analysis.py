"""Channel analysis: torch.fx trace -> channel variables, parameter bindings, cost terms.

Every tensor in the traced forward gets a *channel descriptor*: which axis is its channel axis and
how that axis is made of segments ``(variable, repeat)``. A variable is a set of channels that
must be pruned together (union-find); ``repeat`` > 1 appears after a flatten (each channel then
spans ``repeat`` consecutive features). Rules per op:

* conv / linear create a new output variable; depthwise convs pass their input variable through;
  grouped convs put a block divisor (``groups``) on their input and output variables;
* elementwise ops (add, mul, sub, div, with broadcasting, incl. free parameters such as layer-scale
  gammas) unify the variables of their operands;
* cat concatenates segments; permute/transpose move the channel axis; flatten/view/reshape keep
  it when the channel dim survives whole (flatten multiplies ``repeat``);
* anything not understood (channel shuffle, split / chunk / slices along channels, view with
  literal channel sizes, unknown functions or modules) FREEZES the variables involved, i.e.
  they are never pruned, which is always sound. The channel dims of every model output are frozen.

torch-pruning's DependencyGraph is not used: it crashes on grouped convs fed by cat and its
FLOPs counter ignores functional ops (FACTS.md); a descriptor analysis over torch.fx handles
those cases and gives the closed-form cost terms the search needs.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from acpsearch.errors import UnsupportedModelError

# Modules treated as leaves even when subclassed (e.g. binary convs whose forward applies sign()).
LEAF_TYPES: tuple[type, ...] = (_ConvNd, nn.Linear, _BatchNorm, _InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU)

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
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"}
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
    "type",
    "get_device",
    "is_contiguous",
    "element_size",
    "nelement",
    "stride",
}
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
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_SPLIT_FUNCS = {torch.split, torch.chunk, torch.tensor_split, torch.unbind}
_SPLIT_METHODS = {"split", "chunk", "tensor_split", "unbind"}


class Tracer(fx.Tracer):
    """Leaves: standard torch.nn modules plus any subclass of conv / linear / norm (custom binary
    convs stay single nodes); containers and custom modules are traced through, so their free
    parameters appear as get_attr nodes the analysis can bind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls: list[tuple[str, str]] = []  # (qualified name, class) of the modules being traced
        self.failed_in: tuple[str, str] | None = None  # the innermost module whose forward failed

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, LEAF_TYPES):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            name = self.path_of_module(m)
        except Exception:  # noqa: BLE001 - a module outside the hierarchy: fx reports it itself
            name = "?"
        self._calls.append((name, type(m).__name__))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost one: outer modules re-raise the same error
                self.failed_in = self._calls[-1]
            raise
        finally:
            self._calls.pop()
        self.failed_in = None  # a failure the forward caught itself is not where tracing stopped
        return out


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's concrete value (shapes, ints)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


# ------------------------------------------------------------------------------------------ variables
class Vars:
    """Union-find over channel variables with size, frozen flag and block divisor."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[bool] = []
        self.blocks: list[int] = []
        self.label: list[str] = []

    def new(self, size: int, label: str, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.frozen.append(bool(frozen) or int(size) <= 1)
        self.blocks.append(1)
        self.label.append(label)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def freeze(self, v: int) -> None:
        self.frozen[self.find(v)] = True

    def set_blocks(self, v: int, g: int) -> None:
        r = self.find(v)
        if self.blocks[r] not in (1, g) or self.size[r] % g:
            self.frozen[r] = True
        self.blocks[r] = max(self.blocks[r], g)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.frozen[ra] = self.frozen[rb] = True
            return
        lo, hi = (ra, rb) if ra < rb else (rb, ra)  # the earliest variable names the group
        self.parent[hi] = lo
        self.frozen[lo] = self.frozen[lo] or self.frozen[hi]
        bl, bh = self.blocks[lo], self.blocks[hi]
        if bl != 1 and bh != 1 and bl != bh:
            self.frozen[lo] = True
        self.blocks[lo] = max(bl, bh)


Seg = tuple[int, int]  # (variable, repeat)


@dataclass
class Desc:
    """Channel descriptor of one tensor: channel axis and its segments."""

    axis: int
    segs: tuple[Seg, ...]


@dataclass
class LayerInfo:
    """One graph node (a parameterised layer, a merge op, or a free-parameter op)."""

    name: str
    type: str
    op: str
    module: str | None
    in_segs: tuple[Seg, ...] = ()
    out_segs: tuple[Seg, ...] = ()
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    flops_terms: list[int] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    preds: set[int] = field(default_factory=set)
    depth: int = 0


@dataclass
class FlopTerm:
    """MACs = num * L(a) * L(b) // den, where L(x) = kept channels of a segment list (None = 1)."""

    num: int
    den: int
    a: tuple[Seg, ...] | None
    b: tuple[Seg, ...] | None
    node: int


@dataclass
class ModuleInfo:
    """What the pruner must update on a leaf module after slicing its tensors."""

    kind: str  # conv | conv_dw | conv_grouped | linear | norm | groupnorm | layernorm | prelu | frozen
    in_segs: tuple[Seg, ...] = ()
    out_segs: tuple[Seg, ...] = ()
    groups: int = 1


@dataclass
class Analysis:
    vars: Vars
    layers: list[LayerInfo]
    flop_terms: list[FlopTerm]
    bindings: dict[str, dict[int, tuple[Seg, ...]]]  # tensor qualname -> axis -> segments
    grouped_in: dict[str, int]  # conv weight qualname -> groups (axis 1 is per-group)
    modules: dict[str, ModuleInfo]
    hash_layer: str
    output_shapes: list[tuple[int, ...]]
    batch: int


# ------------------------------------------------------------------------------------------ analysis
def _flatten_nodes(a: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(a, lambda n: out.append(n) or n)
    return out


def _norm_axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _kvol(m: _ConvNd) -> int:
    return int(math.prod(m.kernel_size))


class _Analyzer:
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
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.param_src: dict[fx.Node, tuple[str, ...]] = {}
        self.param_names = {n for n, _ in model.named_parameters()}
        first: dict[int, str] = {}
        self.canonical: dict[str, str] = {}  # any alias of a (possibly shared) tensor -> its first name
        for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            self.canonical[n] = first.setdefault(id(t), n)

    # -- helpers ---------------------------------------------------------------------------------
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
        for a in _flatten_nodes((node.args, node.kwargs)):
            self.freeze_desc(self.desc.get(a))

    def none_like(self, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return tuple(self.none_like(v) for v in value)
        return None

    def bind(self, tname: str, axis: int, segs: tuple[Seg, ...]) -> None:
        """Tie axis `axis` of parameter/buffer `tname` to `segs`; re-binding unifies (shared modules)."""
        axes = self.bindings.setdefault(tname, {})
        old = axes.get(axis)
        if old is None:
            axes[axis] = segs
            return
        if len(old) == len(segs) and all(
            self.V.size[self.V.find(a)] == self.V.size[self.V.find(b)] and ra == rb
            for (a, ra), (b, rb) in zip(old, segs)
        ):
            for (a, _), (b, _) in zip(old, segs):
                self.V.union(a, b)
        else:
            for v, _ in (*old, *segs):
                self.V.freeze(v)

    def seg_total(self, segs: tuple[Seg, ...]) -> int:
        return sum(self.V.size[v] * r for v, r in segs)

    def in_segs(self, node: fx.Node, arg: Any, axis: int, label: str, allow_repeat: bool = False) -> tuple[Seg, ...]:
        """Segments of the channel axis `axis` of input `arg`; fresh frozen var when untracked."""
        t = self.val(arg)
        d = self.d(arg)
        ax = _norm_axis(axis, t.dim())
        if isinstance(d, Desc) and d.axis == ax and (allow_repeat or all(r == 1 for _, r in d.segs)):
            return d.segs
        self.freeze_desc(d)
        return ((self.V.new(t.shape[ax], label + ":in", frozen=True), 1),)

    def add_layer(self, node: fx.Node, info: LayerInfo) -> int:
        idx = len(self.layers)
        preds: set[int] = set()
        for a in _flatten_nodes((node.args, node.kwargs)):
            preds |= self.producers.get(a, set())
        info.preds = preds
        info.depth = 1 + max((self.layers[p].depth for p in preds), default=0)
        self.layers.append(info)
        self.layer_of[node] = idx
        self.producers[node] = {idx}
        return idx

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            value = self.values.get(node)
            n_vars = len(self.V.parent)
            try:
                if node.op == "placeholder":
                    self.desc[node] = self.none_like(value)
                elif node.op == "get_attr":
                    self.get_attr(node, value)
                elif node.op == "call_module":
                    self.call_module(node, value)
                elif node.op in ("call_function", "call_method"):
                    self.call_function(node, value)
                elif node.op == "output":
                    self.freeze_args(node)
            except UnsupportedModelError:
                raise
            except Exception:  # noqa: BLE001 - a pattern the rules did not foresee: freeze, never guess
                self.freeze_args(node)
                for v in range(n_vars, len(self.V.parent)):
                    self.V.freeze(v)
                self.desc[node] = self.none_like(value)
            ins = [a for a in _flatten_nodes((node.args, node.kwargs)) if isinstance(self.values.get(a), torch.Tensor)]
            if node not in self.producers:
                preds: set[int] = set()
                for a in ins:
                    preds |= self.producers.get(a, set())
                self.producers[node] = preds
            if node.op in ("call_function", "call_method") and ins and all(a in self.param_src for a in ins):
                self.param_src[node] = tuple(p for a in ins for p in self.param_src[a])

    def get_attr(self, node: fx.Node, value: Any) -> None:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            self.desc[node] = None
            return
        tname = self.canonical.get(str(node.target))
        if tname is None:  # a constant tensor built during tracing: never prunable
            self.desc[node] = None
            return
        big = [i for i, s in enumerate(value.shape) if s > 1]
        if not big:
            self.desc[node] = None
            return
        ax = big[0]
        v = self.V.new(value.shape[ax], tname)
        segs = ((v, 1),)
        self.bind(tname, ax, segs)
        self.desc[node] = Desc(ax, segs)
        self.param_src[node] = (tname,)

    # -- modules ---------------------------------------------------------------------------------
    def call_module(self, node: fx.Node, value: Any) -> None:
        name = str(node.target)
        m = self.gm.get_submodule(name)
        x = node.args[0] if node.args else None
        xv = self.val(x)
        dx = self.d(x)
        has_params = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.parameters())
        if (
            isinstance(m, _ConvNd)
            and not m.transposed
            and isinstance(xv, torch.Tensor)
            and len(node.args) == 1
            and not node.kwargs
        ):
            self.conv(node, name, m, xv, value)
        elif isinstance(m, nn.Linear) and isinstance(xv, torch.Tensor) and len(node.args) == 1:
            segs_in = self.in_segs(node, x, -1, name, allow_repeat=True)
            out_v = self.V.new(m.out_features, name)
            segs_out = ((out_v, 1),)
            self.bind(f"{name}.weight", 0, segs_out)
            self.bind(f"{name}.weight", 1, segs_in)
            if m.bias is not None:
                self.bind(f"{name}.bias", 0, segs_out)
            self.modules.setdefault(name, ModuleInfo("linear", segs_in, segs_out))
            tokens = xv.numel() // (self.batch * m.in_features)
            idx = self.add_layer(
                node,
                LayerInfo(
                    name,
                    "linear",
                    "linear",
                    name,
                    segs_in,
                    segs_out,
                    in_shape=tuple(xv.shape),
                    out_shape=tuple(value.shape),
                    params=self.own_tensors(name, m),
                ),
            )
            self.flop_terms.append(FlopTerm(tokens, 1, segs_out, segs_in, idx))
            self.layers[idx].flops_terms.append(len(self.flop_terms) - 1)
            self.desc[node] = Desc(value.dim() - 1, segs_out)
        elif (
            isinstance(m, (_BatchNorm, _InstanceNorm, nn.GroupNorm)) and isinstance(xv, torch.Tensor) and xv.dim() >= 2
        ):
            segs = self.in_segs(node, x, 1, name)
            if isinstance(m, nn.GroupNorm):
                if len(segs) == 1:
                    self.V.set_blocks(segs[0][0], m.num_groups)
                else:
                    for v, _ in segs:
                        self.V.freeze(v)
            for t in ("weight", "bias", "running_mean", "running_var"):
                if (
                    getattr(m, t, None) is not None
                    and isinstance(getattr(m, t), torch.Tensor)
                    and getattr(m, t).dim() == 1
                ):
                    self.bind(f"{name}.{t}", 0, segs)
            kind = "groupnorm" if isinstance(m, nn.GroupNorm) else "norm"
            self.modules.setdefault(name, ModuleInfo(kind, segs, segs, getattr(m, "num_groups", 1)))
            self.add_layer(
                node,
                LayerInfo(
                    name,
                    "norm",
                    type(m).__name__,
                    name,
                    segs,
                    segs,
                    in_shape=tuple(xv.shape),
                    out_shape=tuple(value.shape),
                    params=self.own_tensors(name, m),
                ),
            )
            self.desc[node] = Desc(1, segs) if isinstance(dx, Desc) and dx.axis == 1 else None
            if self.desc[node] is None:
                self.desc[node] = Desc(1, segs)
        elif isinstance(m, nn.LayerNorm) and isinstance(xv, torch.Tensor):
            nd = len(m.normalized_shape)
            ax_last = xv.dim() - 1
            if nd == 1 and isinstance(dx, Desc) and dx.axis == ax_last and all(r == 1 for _, r in dx.segs):
                segs = dx.segs
                for t in ("weight", "bias"):
                    if getattr(m, t, None) is not None:
                        self.bind(f"{name}.{t}", 0, segs)
                self.modules.setdefault(name, ModuleInfo("layernorm", segs, segs))
                self.desc[node] = dx
            else:
                if isinstance(dx, Desc) and dx.axis < xv.dim() - nd:
                    self.desc[node] = dx  # normalises non-channel dims only: channels pass through
                else:
                    self.freeze_desc(dx)
                    self.desc[node] = dx if isinstance(dx, Desc) else None
                segs = dx.segs if isinstance(dx, Desc) else ()
                self.modules.setdefault(name, ModuleInfo("frozen"))
            self.add_layer(
                node,
                LayerInfo(
                    name,
                    "norm",
                    "LayerNorm",
                    name,
                    segs,
                    segs,
                    in_shape=tuple(xv.shape),
                    out_shape=tuple(value.shape),
                    params=self.own_tensors(name, m),
                ),
            )
        elif isinstance(m, nn.PReLU) and isinstance(xv, torch.Tensor):
            if m.num_parameters > 1:
                segs = self.in_segs(node, x, 1, name)
                self.bind(f"{name}.weight", 0, segs)
                self.modules.setdefault(name, ModuleInfo("prelu", segs, segs))
                self.desc[node] = Desc(1, segs)
            else:
                segs = dx.segs if isinstance(dx, Desc) else ()
                self.desc[node] = dx
            self.add_layer(
                node,
                LayerInfo(
                    name,
                    "act",
                    "PReLU",
                    name,
                    segs,
                    segs,
                    in_shape=tuple(xv.shape),
                    out_shape=tuple(value.shape),
                    params=self.own_tensors(name, m),
                ),
            )
        elif isinstance(m, PASS_MODULES) and not has_params:
            self.desc[node] = dx
        elif isinstance(m, POOL_MODULES) and not has_params:
            self.desc[node] = self.spatial_rule(dx, xv, value)
        elif isinstance(m, nn.Flatten) and isinstance(xv, torch.Tensor):
            self.desc[node] = self.reshape_rule(dx, tuple(xv.shape), tuple(value.shape))
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)) and isinstance(dx, Desc):
            if _norm_axis(m.dim if m.dim is not None else 1, xv.dim()) == dx.axis:
                self.freeze_desc(dx)
            self.desc[node] = dx
        else:
            # Unknown module (ConvTranspose, attention, RNN, channel shuffle, ...): freeze what it touches.
            self.freeze_args(node)
            self.desc[node] = self.none_like(value)
            if has_params:
                self.modules.setdefault(name, ModuleInfo("frozen"))
                idx = self.add_layer(
                    node,
                    LayerInfo(
                        name,
                        "other",
                        type(m).__name__,
                        name,
                        in_shape=tuple(xv.shape) if isinstance(xv, torch.Tensor) else (),
                        out_shape=tuple(value.shape) if isinstance(value, torch.Tensor) else (),
                        params=self.own_tensors(name, m),
                    ),
                )
                if isinstance(m, _ConvNd) and isinstance(xv, torch.Tensor) and isinstance(value, torch.Tensor):
                    macs = conv_macs(m, xv, value) // self.batch
                    self.flop_terms.append(FlopTerm(macs, 1, None, None, idx))
                    self.layers[idx].flops_terms.append(len(self.flop_terms) - 1)
                elif isinstance(m, nn.Linear) and isinstance(value, torch.Tensor):
                    self.flop_terms.append(FlopTerm(linear_macs(m, value) // self.batch, 1, None, None, idx))
                    self.layers[idx].flops_terms.append(len(self.flop_terms) - 1)

    def own_tensors(self, name: str, m: nn.Module) -> list[str]:
        return [f"{name}.{n}" for n, _ in m.named_parameters()]

    def conv(self, node: fx.Node, name: str, m: _ConvNd, xv: torch.Tensor, value: torch.Tensor) -> None:
        x = node.args[0]
        segs_in = self.in_segs(node, x, 1, name)
        g = m.groups
        cin, cout = m.in_channels, m.out_channels
        hw = value.numel() // (self.batch * cout)
        kv = _kvol(m)
        stride = int(m.stride[0]) if isinstance(m.stride, tuple) else int(m.stride)
        common = dict(
            kernel=int(m.kernel_size[0]),
            stride=stride,
            groups=g,
            in_shape=tuple(xv.shape),
            out_shape=tuple(value.shape),
            params=self.own_tensors(name, m),
        )
        if g == 1:
            segs_out = ((self.V.new(cout, name), 1),)
            self.bind(f"{name}.weight", 0, segs_out)
            self.bind(f"{name}.weight", 1, segs_in)
            info = ModuleInfo("conv", segs_in, segs_out)
            term = (hw * kv, 1, segs_out, segs_in)
            ltype = "conv"
        elif g == cin == cout:
            segs_out = segs_in
            self.bind(f"{name}.weight", 0, segs_out)
            info = ModuleInfo("conv_dw", segs_in, segs_out, g)
            term = (hw * kv, 1, segs_in, None)
            ltype = "conv_dw"
        else:
            segs_out = ((self.V.new(cout, name), 1),)
            if len(segs_in) == 1 and g < cin:
                self.V.set_blocks(segs_in[0][0], g)
            else:  # concat-fed grouped conv or depthwise multiplier: its input stays whole
                for v, _ in segs_in:
                    self.V.freeze(v)
            self.V.set_blocks(segs_out[0][0], g)  # outputs: the same count from every conv group
            self.bind(f"{name}.weight", 0, segs_out)
            self.grouped_in[f"{name}.weight"] = g
            self.bind(f"{name}.weight", -1, segs_in)  # axis -1: the per-group input axis 1
            info = ModuleInfo("conv_grouped", segs_in, segs_out, g)
            term = (hw * kv, g, segs_out, segs_in)
            ltype = "conv"
        if m.bias is not None:
            self.bind(f"{name}.bias", 0, segs_out)
        self.modules.setdefault(name, info)
        idx = self.add_layer(node, LayerInfo(name, ltype, type(m).__name__, name, segs_in, segs_out, **common))
        self.flop_terms.append(FlopTerm(term[0], term[1], term[2], term[3], idx))
        self.layers[idx].flops_terms.append(len(self.flop_terms) - 1)
        self.desc[node] = Desc(1, segs_out)

    # -- functions -------------------------------------------------------------------------------
    def call_function(self, node: fx.Node, value: Any) -> None:
        tgt = node.target
        is_m = node.op == "call_method"
        args = node.args
        tensor_args = [a for a in _flatten_nodes((args, node.kwargs)) if isinstance(self.values.get(a), torch.Tensor)]
        if not tensor_args:
            self.desc[node] = self.none_like(value)
            return
        x = args[0] if args else None
        xv = self.val(x)
        dx = self.d(x)
        if (not is_m and tgt in _BINARY) or (is_m and tgt in _BINARY_METHODS):
            self.binary(node, value)
        elif (not is_m and tgt in _UNARY_FUNCS) or (is_m and tgt in _UNARY_METHODS):
            if is_m and tgt in ("pow",) and len(args) > 1 and isinstance(self.val(args[1]), torch.Tensor):
                self.binary(node, value)
                return
            if not isinstance(value, torch.Tensor) or not isinstance(xv, torch.Tensor) or value.shape != xv.shape:
                self.freeze_args(node)
                self.desc[node] = self.none_like(value)
            else:
                self.desc[node] = dx
        elif is_m and tgt in _META_METHODS or (not is_m and tgt in (getattr, len)):
            self.desc[node] = self.none_like(value)
        elif (is_m and tgt in _RESHAPE_METHODS) or (not is_m and tgt in _RESHAPE_FUNCS):
            self.desc[node] = self.reshape_op(node, tgt, dx, xv, value)
        elif (is_m and tgt in ("expand", "expand_as")) and isinstance(dx, Desc):
            nax = dx.axis + value.dim() - xv.dim()
            self.desc[node] = Desc(nax, dx.segs) if value.shape[nax] == xv.shape[dx.axis] else None
        elif (is_m and tgt in _PERMUTE_METHODS) or (not is_m and tgt in _PERMUTE_FUNCS):
            self.desc[node] = self.permute_op(node, dx, xv)
        elif (is_m and tgt in _REDUCE_METHODS) or (not is_m and tgt in _REDUCE_FUNCS):
            self.desc[node] = self.reduce_op(node, dx, xv, value)
        elif not is_m and tgt in _POOL_FUNCS:
            self.desc[node] = self.spatial_rule(dx, xv, value)
        elif not is_m and tgt is F.pad:
            pad = self.val(args[1]) if len(args) > 1 else self.val(node.kwargs.get("pad"))
            padded = {xv.dim() - 1 - i // 2 for i, p in enumerate(pad) if p}
            if isinstance(dx, Desc) and dx.axis in padded:
                self.freeze_desc(dx)
                self.desc[node] = None
            else:
                self.desc[node] = dx
        elif (not is_m and tgt in _DIM_FUNCS) or (is_m and tgt in _DIM_METHODS):
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else (1 if tgt is F.normalize else None))
            dim = self.val(dim)
            if isinstance(dx, Desc) and (dim is None or _norm_axis(int(dim), xv.dim()) == dx.axis):
                self.freeze_desc(dx)
            self.desc[node] = dx if isinstance(value, torch.Tensor) and value.shape == xv.shape else None
        elif not is_m and tgt in _CAT_FUNCS:
            self.cat(node, value)
        elif (not is_m and tgt in _SPLIT_FUNCS) or (is_m and tgt in _SPLIT_METHODS):
            self.split(node, tgt, dx, xv, value)
        elif not is_m and tgt is operator.getitem:
            self.getitem(node, dx, xv, value)
        else:
            self.freeze_args(node)
            self.desc[node] = self.none_like(value)

    def binary(self, node: fx.Node, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            self.freeze_args(node)
            self.desc[node] = self.none_like(value)
            return
        nd = value.dim()
        ops = [
            (a, self.values[a], self.desc.get(a))
            for a in _flatten_nodes((node.args, node.kwargs))
            if isinstance(self.values.get(a), torch.Tensor)
        ]
        axes = {d.axis + nd - t.dim() for _, t, d in ops if isinstance(d, Desc)}
        if len(axes) != 1:
            if len(axes) > 1:
                for _, _, d in ops:
                    self.freeze_desc(d)
            self.desc[node] = None
            if not axes:
                return
            return
        A = axes.pop()
        ref: Desc | None = None
        ok = True
        tracked = []
        for _, t, d in ops:
            off = nd - t.dim()
            size = t.shape[A - off] if A - off >= 0 else 1
            if size == 1:
                continue
            if not isinstance(d, Desc):
                ok = False
                continue
            tracked.append(d)
        for d in tracked:
            if ref is None:
                ref = d
                continue
            if len(d.segs) != len(ref.segs) or any(
                self.V.size[self.V.find(a)] != self.V.size[self.V.find(b)] or ra != rb
                for (a, ra), (b, rb) in zip(d.segs, ref.segs)
            ):
                ok = False
        if ref is None:
            self.desc[node] = None
            return
        if not ok:
            for _, _, d in ops:
                self.freeze_desc(d)
        else:
            for d in tracked:
                for (a, _), (b, _) in zip(d.segs, ref.segs):
                    self.V.union(a, b)
        self.desc[node] = Desc(A, ref.segs)
        real = [a for a, _, _ in ops if a not in self.param_src]
        pnames = sorted({p for a, _, _ in ops for p in self.param_src.get(a, ()) if p in self.param_names})
        name = str(node.target) if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        kind = _MERGE_NAMES.get(name, "add")
        if len(real) >= 2:
            self.add_layer(
                node,
                LayerInfo(
                    node.name,
                    kind,
                    name,
                    None,
                    ref.segs,
                    ref.segs,
                    in_shape=tuple(self.values[real[0]].shape),
                    out_shape=tuple(value.shape),
                ),
            )
        elif pnames:
            self.add_layer(
                node,
                LayerInfo(
                    node.name, "scale", name, None, ref.segs, ref.segs, out_shape=tuple(value.shape), params=pnames
                ),
            )

    def cat(self, node: fx.Node, value: Any) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = _norm_axis(int(self.val(dim)), value.dim())
        items = [(a, self.values[a], self.desc.get(a)) for a in tensors]
        if all(t.dim() == value.dim() for _, t, _ in items):
            tracked = [d for _, _, d in items if isinstance(d, Desc)]
            if tracked and all(d.axis == dim for d in tracked):
                segs: list[Seg] = []
                for a, t, d in items:
                    if isinstance(d, Desc):
                        segs.extend(d.segs)
                    else:
                        segs.append((self.V.new(t.shape[dim], node.name + ":in", frozen=True), 1))
                self.add_layer(
                    node,
                    LayerInfo(node.name, "cat", "cat", None, tuple(segs), tuple(segs), out_shape=tuple(value.shape)),
                )
                self.desc[node] = Desc(dim, tuple(segs))
                return
            if tracked and all(isinstance(d, Desc) for _, _, d in items) and len({d.axis for d in tracked}) == 1:
                ref = tracked[0]
                if all(
                    len(d.segs) == len(ref.segs)
                    and all(
                        self.V.size[self.V.find(a)] == self.V.size[self.V.find(b)] and ra == rb
                        for (a, ra), (b, rb) in zip(d.segs, ref.segs)
                    )
                    for d in tracked
                ):
                    for d in tracked:
                        for (a, _), (b, _) in zip(d.segs, ref.segs):
                            self.V.union(a, b)
                    self.add_layer(
                        node, LayerInfo(node.name, "cat", "cat", None, ref.segs, ref.segs, out_shape=tuple(value.shape))
                    )
                    self.desc[node] = Desc(ref.axis, ref.segs)
                    return
        self.freeze_args(node)
        self.desc[node] = None

    def split(self, node: fx.Node, tgt: Any, dx: Any, xv: Any, value: Any) -> None:
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if tgt in ("unbind", torch.unbind):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        dim = _norm_axis(int(self.val(dim)), xv.dim())
        if not isinstance(dx, Desc) or not isinstance(value, (tuple, list)):
            self.freeze_args(node)
            self.desc[node] = self.none_like(value)
            return
        if dim == dx.axis:  # literal / equal-size split points cannot follow pruning: freeze
            self.freeze_desc(dx)
            self.desc[node] = tuple(None for _ in value)
            return
        if tgt in ("unbind", torch.unbind):
            nax = dx.axis - (1 if dim < dx.axis else 0)
            self.desc[node] = tuple(Desc(nax, dx.segs) for _ in value)
        else:
            self.desc[node] = tuple(Desc(dx.axis, dx.segs) for _ in value)

    def getitem(self, node: fx.Node, dx: Any, xv: Any, value: Any) -> None:
        idx = self.val(node.args[1])
        if isinstance(xv, (tuple, list)):
            d = self.desc.get(node.args[0])
            if isinstance(d, (tuple, list)) and isinstance(idx, int):
                self.desc[node] = d[idx]
            elif isinstance(d, (tuple, list)) and isinstance(idx, slice):
                self.desc[node] = tuple(d[idx])
            else:
                self.desc[node] = self.none_like(value)
            return
        if not isinstance(xv, torch.Tensor):
            self.desc[node] = self.none_like(value)
            return
        if not isinstance(dx, Desc):
            self.desc[node] = None
            return
        items = idx if isinstance(idx, tuple) else (idx,)
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        in_d, out_d, new_ax = 0, 0, None
        for it in items:
            if it is Ellipsis:
                skip = xv.dim() - n_real
                if in_d <= dx.axis < in_d + skip:
                    new_ax = out_d + dx.axis - in_d
                in_d += skip
                out_d += skip
            elif it is None:
                out_d += 1
            elif isinstance(it, slice):
                if in_d == dx.axis:
                    full = (
                        it.step in (None, 1)
                        and it.start in (None, 0)
                        and (it.stop is None or it.stop >= xv.shape[in_d])
                    )
                    if not full:
                        self.freeze_desc(dx)
                        self.desc[node] = None
                        return
                    new_ax = out_d
                in_d += 1
                out_d += 1
            elif isinstance(it, int):
                if in_d == dx.axis:
                    self.freeze_desc(dx)
                    self.desc[node] = None
                    return
                in_d += 1
            else:  # tensor / list indexing
                self.freeze_desc(dx)
                self.desc[node] = None
                return
        if new_ax is None:
            new_ax = out_d + (dx.axis - in_d)
        if not isinstance(value, torch.Tensor) or value.shape[new_ax] != xv.shape[dx.axis]:
            self.freeze_desc(dx)
            self.desc[node] = None
            return
        self.desc[node] = Desc(new_ax, dx.segs)

    def spatial_rule(self, dx: Any, xv: Any, value: Any) -> Any:
        """Pooling / resizing: channels pass through when axis 1 is kept whole."""
        if not isinstance(dx, Desc):
            return None
        if (
            isinstance(value, torch.Tensor)
            and dx.axis == 1
            and value.dim() == xv.dim()
            and value.shape[1] == xv.shape[1]
        ):
            return dx
        self.freeze_desc(dx)
        return self.none_like(value)

    def reshape_op(self, node: fx.Node, tgt: Any, dx: Any, xv: Any, value: Any) -> Any:
        if not isinstance(dx, Desc) or not isinstance(value, torch.Tensor):
            return self.none_like(value)
        out = self.reshape_rule(dx, tuple(xv.shape), tuple(value.shape))
        if out is None:
            return None
        if tgt in ("view", "reshape", torch.reshape):
            shape_args = list(node.args[1:]) if tgt != torch.reshape else [node.args[1]]
            if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list, torch.Size)):
                shape_args = list(shape_args[0])
            if len(shape_args) == value.dim():
                a = shape_args[out.axis]
                if isinstance(a, int) and a != -1:  # literal channel size: breaks after pruning
                    self.freeze_desc(dx)
        elif tgt in ("unflatten", torch.unflatten):
            dim = _norm_axis(int(self.val(node.args[1])), xv.dim())
            if dim == dx.axis:
                self.freeze_desc(dx)
                return None
        return out

    def reshape_rule(self, dx: Any, ishape: tuple[int, ...], oshape: tuple[int, ...]) -> Desc | None:
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
        self.freeze_desc(dx)
        return None

    def permute_op(self, node: fx.Node, dx: Any, xv: Any) -> Any:
        if not isinstance(dx, Desc):
            return None
        probe_shape = [1] * xv.dim()
        probe_shape[dx.axis] = 2
        probe = torch.empty(probe_shape)
        args = [probe] + [self.val(a) for a in node.args[1:]]
        kwargs = {k: self.val(v) for k, v in node.kwargs.items()}
        out = (
            getattr(probe, node.target)(*args[1:], **kwargs)
            if node.op == "call_method"
            else node.target(*args, **kwargs)
        )
        return Desc(list(out.shape).index(2), dx.segs)

    def reduce_op(self, node: fx.Node, dx: Any, xv: Any, value: Any) -> Any:
        if not isinstance(dx, Desc):
            return self.none_like(value)
        probe_shape = [1] * xv.dim()
        probe_shape[dx.axis] = 2
        probe = torch.zeros(probe_shape)
        args = [self.val(a) for a in node.args[1:]]
        kwargs = {k: self.val(v) for k, v in node.kwargs.items()}
        try:
            out = (
                getattr(probe, node.target)(*args, **kwargs)
                if node.op == "call_method"
                else node.target(probe, *args, **kwargs)
            )
        except Exception:  # noqa: BLE001 - an unexpected signature: be conservative
            self.freeze_desc(dx)
            return self.none_like(value)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        descs = []
        for o in outs:
            if isinstance(o, torch.Tensor) and 2 in list(o.shape):
                descs.append(Desc(list(o.shape).index(2), dx.segs))
            else:  # reduced over the channel axis: no channel axis left (structurally safe)
                descs.append(None)
        return tuple(descs) if isinstance(out, (tuple, list)) else descs[0]


def conv_macs(m: _ConvNd, x: torch.Tensor, y: torch.Tensor) -> int:
    """MACs of one conv call for the whole batch (transposed convs scale with the input)."""
    kv = int(math.prod(m.kernel_size))
    if m.transposed:
        return x.numel() * (m.out_channels // m.groups) * kv
    return y.numel() * (m.in_channels // m.groups) * kv


def linear_macs(m: nn.Linear, y: torch.Tensor) -> int:
    return y.numel() * m.in_features


def _user_frame(tb: Any) -> str:
    """`file.py:line` of the innermost traceback frame outside torch and acpsearch (the user's code)."""
    import os
    import traceback

    skip = (
        os.path.dirname(torch.__file__),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        os.path.dirname(os.__file__),
    )
    found = ""
    for frame in traceback.extract_tb(tb):
        path = os.path.abspath(frame.filename)
        if not path.startswith(skip) and not frame.filename.startswith("<"):
            found = f"{os.path.basename(path)}:{frame.lineno}"
    return found


def analyse(model: nn.Module, example_input: Any, hash_layer: str | None = None) -> tuple[Analysis, fx.GraphModule]:
    """Trace `model` and run the channel analysis (model left in its original train/eval mode)."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        raise UnsupportedModelError("example_input: expected a tensor (or a tuple of tensors)")
    batch = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    was_training = model.training
    model.eval()
    try:
        tracer = Tracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - any fx failure means the model is not traceable
            first = (str(exc).splitlines() or [""])[0]
            where = _user_frame(exc.__traceback__)
            if tracer.failed_in is not None:
                sub, cls = tracer.failed_in
                what = f"torch.fx cannot trace the forward of module {sub!r} ({cls}{', ' + where if where else ''})"
            else:
                what = f"torch.fx cannot trace its forward{' (' + where + ')' if where else ''}"
            raise UnsupportedModelError(
                f"model {type(model).__name__}: {what}: {type(exc).__name__}: {first[:200]}"
            ) from None
        gm = fx.GraphModule(model, graph)
        rec = _Recorder(gm)
        try:
            out = _record_shapes(rec, inputs)
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).splitlines() or [""])[0]
            raise UnsupportedModelError(
                f"model {type(model).__name__}: forward on the example input failed ({type(exc).__name__}: {first[:200]})"
            ) from None
    finally:
        model.train(was_training)
    an = _Analyzer(model, gm, rec.values, batch)
    an.run()
    out_tensors = [t for t in _flat_values(out) if isinstance(t, torch.Tensor)]
    if not out_tensors:
        raise UnsupportedModelError(f"model {type(model).__name__}: forward returns no tensor")
    # Hash layer: named, or the last conv/linear on the path to the last output tensor.
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    if hash_layer is None:
        hash_layer = _find_hash_layer(gm, output_node)
        if hash_layer is None:
            raise UnsupportedModelError(
                f"model {type(model).__name__}: no Linear/Conv produces the output code; pass hash_layer='name'"
            )
    else:
        names = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        if hash_layer not in names:
            raise UnsupportedModelError(f"hash_layer {hash_layer!r}: no such module is called in forward")
    info = an.modules.get(hash_layer)
    if info is not None:
        for v, _ in info.out_segs:
            an.V.freeze(v)
    for lay in an.layers:
        if lay.module == hash_layer:
            lay.type = "hash" if lay.type in ("linear", "conv") else lay.type
    return Analysis(
        an.V,
        an.layers,
        an.flop_terms,
        an.bindings,
        an.grouped_in,
        an.modules,
        hash_layer,
        [tuple(t.shape) for t in out_tensors],
        batch,
    ), gm


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for single small forwards (shape recording, verification): on a
    shared 2-core box OpenMP spin-waiting made multi-threaded small convs up to 100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _record_shapes(rec: _Recorder, inputs: tuple) -> Any:
    """Run the traced graph once (no grad) to get every value's shape. (Meta tensors were tried:
    their Python decompositions import torch._dynamo on first use, ~4 s.)"""
    with one_thread(), torch.no_grad():
        return rec.run(*inputs)


def _flat_values(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in _flat_values(e)]
    if isinstance(v, dict):
        return [x for e in v.values() for x in _flat_values(e)]
    return [v]


def _find_hash_layer(gm: fx.GraphModule, output_node: fx.Node) -> str | None:
    outs = _flatten_nodes(output_node.args)
    if not outs:
        return None
    frontier = [outs[-1]]
    seen: set[fx.Node] = set()
    while frontier:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            if isinstance(m, (_ConvNd, nn.Linear)):
                return str(n.target)
        frontier.extend(_flatten_nodes((n.args, n.kwargs)))
    return None
