"""Baking per-output-channel weight scales when input channels are pruned.

A binary conv uses ``alpha * sign(W)`` with ``alpha = mean |W|`` over its input channels (and
kernel): slicing input channels out of ``W`` changes ``alpha`` and the pruned network would no
longer be the original one with those channels removed. For every conv whose weight is derived
from its parameter (a custom ``forward`` or a functional conv, see
``acpsearch.graph.rules.functional``) and whose inputs were pruned, the pruner compares the
effective weight of the pruned copy with the kept slice of the original's and, when they differ
by one positive factor per output channel, multiplies the kept latent weights by that factor
(``alpha_old / alpha_new``; signs are unchanged). The pruned network then computes what the
original computes with the pruned channels at zero. A transform that is not scale-homogeneous
(weight standardisation) is left as it is: pruning such a conv is not equivalent to zeroing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acpsearch.graph.channels import Analysis, Seg
from acpsearch.graph.tracing import one_thread
from acpsearch.pruning.measure import conv_calls

Kept = Callable[[tuple[Seg, ...]], tuple[torch.Tensor, int, int]]


def effective_weights(model: nn.Module, modules: set[str], inputs: tuple[Any, ...]) -> dict[str, torch.Tensor]:
    """The weight the first conv call of each module in `modules` uses (eval mode, one forward)."""
    names = {id(m): n for n, m in model.named_modules()}
    was = model.training
    model.eval()
    out: dict[str, torch.Tensor] = {}
    try:
        with one_thread(), torch.no_grad(), conv_calls(model) as calls:
            model(*inputs)
    finally:
        model.train(was)
    for c in calls:
        name = names.get(id(c.module)) if c.module is not None else None
        if name in modules and name not in out:
            out[name] = c.w
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = a.abs().flatten(1).amax(1).clamp_min(1e-30).view(-1, *[1] * (a.dim() - 1))
    return a.shape == b.shape and bool(((a - b).abs() <= 1e-5 * scale).all())


def bake_scales(model: nn.Module, new: nn.Module, an: Analysis, kept: Kept, example_input: Any) -> list[str]:
    """Rescale the kept latent weights of `new` (pruned copy of `model`) per output channel so its
    derived-weight convs use the original effective weights; returns the modules rescaled."""
    cands: dict[str, tuple[str, torch.Tensor, torch.Tensor | None]] = {}
    for mod, pname in an.derived.items():
        axes = an.bindings.get(pname, {})
        if 1 not in axes:
            continue
        in_idx, n_in, full_in = kept(axes[1])
        if n_in == full_in:
            continue
        out_idx = kept(axes[0])[0] if 0 in axes else None
        cands[mod] = (pname, in_idx, out_idx)
    if not cands:
        return []
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    ref = effective_weights(model, set(cands), inputs)
    cur = effective_weights(new, set(cands), inputs)
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for mod, (pname, in_idx, out_idx) in cands.items():
        if mod not in ref or mod not in cur:
            continue
        target = ref[mod].index_select(1, in_idx)
        target = target.index_select(0, out_idx) if out_idx is not None else target
        now = cur[mod]
        if target.shape != now.shape or _close(target, now):
            continue
        num, den = target.abs().flatten(1).sum(1), now.abs().flatten(1).sum(1)
        factor = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))
        p = new.get_parameter(pname)
        saved[mod] = (p.detach().clone(), target)
        with torch.no_grad():
            p.mul_(factor.view(-1, *[1] * (p.dim() - 1)).to(p.dtype))
    if not saved:
        return []
    after = effective_weights(new, set(saved), inputs)
    done: list[str] = []
    for mod, (old, target) in saved.items():
        if mod in after and _close(target, after[mod]):
            done.append(mod)
        else:  # not a per-output scale (e.g. weight standardisation): leave the weights as sliced
            with torch.no_grad():
                new.get_parameter(cands[mod][0]).copy_(old)
    return done
