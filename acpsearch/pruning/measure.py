"""Cost measured on the real module (`measure_cost`) and the recorder of functional conv calls.

Measured like the closed form (`acpsearch.graph.core`): every call of a layer whose rule has a
MAC formula (forward hooks; binary convs declaring ``acp_binary`` count in ``bops``), plus every
``F.conv1d/2d/3d`` call made outside such a layer whose weight has the shape of a parameter of
the calling module (a binary conv written as a plain module); such a call is binary when its
input is sign-valued and its weight is ``+-alpha`` per output channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from acpsearch.graph.core import Cost
from acpsearch.graph.cost import count_params, functional_conv_term, is_binary_call
from acpsearch.graph.rules import counts_macs, layer_macs, module_rule
from acpsearch.graph.tracing import ExampleInput, one_thread

_CONVS = (F.conv1d, F.conv2d, F.conv3d)
_POS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


@dataclass
class ConvCall:
    """One functional conv call: the innermost module making it, its input, weight and output."""

    module: nn.Module | None
    x: torch.Tensor
    w: torch.Tensor
    y: torch.Tensor
    groups: int
    in_counted: bool  # made inside a layer whose rule counts its MACs (nn.Conv2d and subclasses)


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[nn.Module], depth: list[int]) -> None:
        super().__init__()
        self.stack, self.depth = stack, depth
        self.calls: list[ConvCall] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONVS:
            a = dict(zip(_POS, args, strict=False)) | kwargs
            x, w = a.get("input"), a.get("weight")
            if isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor) and isinstance(out, torch.Tensor):
                mod = self.stack[-1] if self.stack else None
                self.calls.append(ConvCall(mod, x, w.detach(), out, int(a.get("groups", 1)), self.depth[0] > 0))
        return out


@contextlib.contextmanager
def conv_calls(model: nn.Module) -> Iterator[list[ConvCall]]:
    """Record every functional conv call of the forwards run inside (module hooks keep the stack)."""
    stack: list[nn.Module] = []
    depth = [0]

    def pre(m: nn.Module, args: Any) -> None:
        stack.append(m)
        depth[0] += counts_macs(m)

    def post(m: nn.Module, args: Any, out: Any) -> None:
        stack.pop()
        depth[0] -= counts_macs(m)

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    rec = _Recorder(stack, depth)
    try:
        with rec:
            yield rec.calls
    finally:
        for h in handles:
            h.remove()


def _own_param(m: nn.Module | None, shape: torch.Size) -> nn.Parameter | None:
    if m is None:
        return None
    return next((p for p in m.parameters(recurse=False) if p.shape == shape), None)


def measure_cost(model: nn.Module, example_input: ExampleInput) -> Cost:
    """Cost measured on the real module: MACs per sample of every counted layer call (float in
    ``flops``, binary in ``bops``), the number of parameters and of binary weight entries."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    batch = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    total = [0, 0]  # float MACs, binary MACs
    binary: dict[int, int] = {}  # binary weights: id -> entries

    def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        is_bin = bool(getattr(m, "acp_binary", False))
        total[is_bin] += layer_macs(m, args[0], out)
        w = getattr(m, "weight", None)
        if is_bin and isinstance(w, torch.Tensor) and module_rule(m) is not None:
            binary[id(w)] = w.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if counts_macs(m)]
    was = model.training
    model.eval()
    try:
        with one_thread(), torch.no_grad(), conv_calls(model) as calls:
            model(*inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    for c in calls:
        p = _own_param(c.module, c.w.shape)
        if c.in_counted or c.groups != 1 or p is None:
            continue
        is_bin = is_binary_call(c.x, c.w)
        total[is_bin] += functional_conv_term(tuple(c.w.shape), tuple(c.y.shape), is_bin).value(
            int(c.y.shape[1]), int(c.x.shape[1])
        )
        if is_bin:
            binary[id(p)] = p.numel()
    return Cost(int(total[0] // batch), count_params(model), int(total[1] // batch), int(sum(binary.values())))
