"""Channel importance criteria over coupled groups.

A group's channels appear in several tensors (producer filters, consumer input columns, norm
scales, free parameters). Each criterion scores the channels in every relevant tensor, divides
the scores by their mean (so layers of different scale weigh the same) and sums them:

* ``l1`` / ``l2``: norm of each channel's slice of every conv / linear weight bound to the group
  (output filters and consumer input columns; Torch-Pruning's group-norm importance);
* ``bn_scale``: |gamma| of the norm layers on the group (network slimming), else l1;
* ``fpgm``: distance of each output filter to the other filters of its layer (filters near the
  geometric median are redundant), else l1;
* ``taylor``: |sum of w * dL/dw| over each channel's slices of every bound parameter, from
  batches passed to ``ChannelGraph.set_taylor_importance`` (Molchanov et al. 2019);
* ``random``: seeded uniform scores (the random baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from acpsearch.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from acpsearch.graph.core import ChannelGraph, ChannelGroup


def group_slices(graph: ChannelGraph, group: ChannelGroup) -> list[tuple[str, int, int, int, int]]:
    """(tensor name, axis, offset, channels, repeat) for every place the group's channels live."""
    an = graph.analysis
    V = an.vars
    root = next(r for r, gi in graph.group_of_root.items() if gi == group.index)
    out = []
    for tname, axes in an.bindings.items():
        for axis, segs in axes.items():
            if axis == -1:
                continue  # per-group input axis of grouped convs: scored through the output side
            off = 0
            for v, r in segs:
                if V.find(v) == root:
                    out.append((tname, axis, off, V.size[v], r))
                off += V.size[v] * r
    return out


def _channel_rows(t: torch.Tensor, axis: int, off: int, size: int, rep: int) -> torch.Tensor:
    s = t.detach().float().narrow(axis, off, size * rep).movedim(axis, 0)
    return s.reshape(size, -1)


def _norm(scores: torch.Tensor) -> np.ndarray:
    m = float(scores.mean())
    return (scores / m).numpy().astype(np.float64) if m > 0 else np.zeros(len(scores))


def group_importance(
    graph: ChannelGraph, group: ChannelGroup, criterion: str, seed: int, model: nn.Module
) -> np.ndarray:
    """Per-channel importance (higher = keep) of `group` under `criterion`."""
    C = group.channels
    if criterion == "random":
        return np.random.default_rng([int(seed), group.index]).random(C)
    tensors = dict(model.named_parameters())
    mods = graph.analysis.modules
    slices = [s for s in group_slices(graph, group) if s[0] in tensors]
    weights = [s for s in slices if tensors[s[0]].dim() >= 2]
    total = np.zeros(C)
    if criterion == "taylor":
        prods = graph._taylor
        if prods is None:
            raise SpecError(
                "criterion 'taylor': needs data, call ChannelGraph.set_taylor_importance(model, batches) first"
            )
        for tname, axis, off, size, rep in slices:
            if tname in prods:
                total += _norm(_channel_rows(prods[tname], axis, off, size, rep).sum(dim=1).abs())
        return total
    if criterion == "bn_scale":
        norms = [
            s
            for s in slices
            if s[0].endswith(".weight")
            and tensors[s[0]].dim() == 1
            and mods.get(s[0].rsplit(".", 1)[0]) is not None
            and mods[s[0].rsplit(".", 1)[0]].kind in ("norm", "groupnorm", "layernorm")
        ]
        if norms:
            for tname, axis, off, size, rep in norms:
                total += _norm(_channel_rows(tensors[tname], axis, off, size, rep).abs().sum(dim=1))
            return total
        criterion = "l1"
    if criterion == "fpgm":
        filters = [s for s in weights if s[1] == 0]
        if filters:
            for tname, axis, off, size, rep in filters:
                rows = _channel_rows(tensors[tname], axis, off, size, rep)
                total += _norm(torch.cdist(rows[None], rows[None])[0].sum(dim=1))
            return total
        criterion = "l1"
    use = weights or slices
    for tname, axis, off, size, rep in use:
        rows = _channel_rows(tensors[tname], axis, off, size, rep)
        sc = rows.abs().sum(dim=1) if criterion == "l1" else rows.pow(2).sum(dim=1).sqrt()
        total += _norm(sc)
    return total


def keep_order(imp: np.ndarray, blocks: int) -> list[np.ndarray]:
    """Channels of each block, most important first (ties: lower index first)."""
    C = len(imp)
    size = C // blocks
    return [b * size + np.argsort(-imp[b * size : (b + 1) * size], kind="stable") for b in range(blocks)]


def kept_indices(imp: np.ndarray, kept: int, blocks: int) -> np.ndarray:
    """Sorted indices of the `kept` most important channels, `kept // blocks` from each block."""
    per = kept // blocks
    return np.sort(np.concatenate([o[:per] for o in keep_order(imp, blocks)]))


def default_taylor_loss(output: Any, batch: Any) -> torch.Tensor:
    """Label-free loss for hash nets: quantisation error of tanh(code) to sign(code)."""
    code = output[-1] if isinstance(output, (tuple, list)) else output
    h = torch.tanh(code)
    return (h - torch.sign(h).detach()).pow(2).mean()


def taylor_products(
    model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Sum over batches of w * dL/dw for every parameter (eval mode, model unchanged)."""
    loss_fn = loss_fn or default_taylor_loss
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, p), g in zip(params.items(), grads):
                if g is not None:
                    acc[name] += (p.detach() * g.detach()).float()
            n += 1
    finally:
        model.train(was)
    if n == 0:
        raise SpecError("taylor: batches is empty; pass at least one batch of inputs")
    return acc
