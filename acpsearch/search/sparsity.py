"""Group sparsity before the cut: a short training of the unpruned network with an L2 group penalty
on exactly the channels a pruning strategy removes, so that the cut takes away little.

Every removed channel is one group: all parameters coupled to it (the producing convolution's
output rows, its normalisation's scale and shift, the consuming layers' input columns; the
dependency groups of the channel graph). The penalty is the sum of the groups' L2 norms (a group
lasso), added to the hash loss for a given number of optimiser steps. The network is then pruned by
the channel choice made BEFORE the penalty, so the channels that were pushed towards zero are the
ones cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from acpsearch.graph import ChannelGraph
from acpsearch.pruning.criteria import group_slices

# (parameter, axis, positions of the removed channels along it, removed channels, repeat)
_Slice = tuple[nn.Parameter, int, torch.Tensor, int, int]


def removed_slices(graph: ChannelGraph, model: nn.Module, kept: Mapping[str, NDArray[np.intp]]) -> list[list[_Slice]]:
    """Per group with removed channels: where its removed channels live among `model`'s parameters
    (`kept`: kept channel indices per group, e.g. PruningStrategy.kept_indices())."""
    params = dict(model.named_parameters())
    out: list[list[_Slice]] = []
    for grp in graph.groups:
        idx = kept.get(grp.name)
        if idx is None:
            continue
        removed = np.setdiff1d(np.arange(grp.channels), np.asarray(idx))
        if removed.size == 0:
            continue
        slices: list[_Slice] = []
        for tname, axis, off, size, rep in group_slices(graph, grp):
            p = params.get(tname)
            if p is None or size != grp.channels:  # buffers (running statistics) are not trained
                continue
            pos = torch.as_tensor(
                (off + removed[:, None] * rep + np.arange(rep)[None, :]).ravel(), dtype=torch.long, device=p.device
            )
            slices.append((p, axis, pos, int(removed.size), rep))
        if slices:
            out.append(slices)
    return out


def group_norms(slices: list[list[_Slice]]) -> torch.Tensor:
    """The L2 norm of every removed channel's coupled parameters (one value per channel)."""
    norms = []
    for group in slices:
        sq: torch.Tensor | None = None
        for p, axis, pos, n, _rep in group:
            rows = p.index_select(axis, pos).movedim(axis, 0).reshape(n, -1)
            s = rows.pow(2).sum(dim=1)
            sq = s if sq is None else sq + s
        assert sq is not None
        norms.append(torch.sqrt(sq + 1e-12))
    return torch.cat(norms) if norms else torch.zeros(0)


class GroupPenaltyLoss(nn.Module):
    """A loss plus `weight` times the summed group norms of the removed channels."""

    def __init__(self, base: nn.Module, slices: list[list[_Slice]], weight: float) -> None:
        super().__init__()
        self.base = base
        self.weight = float(weight)
        self._slices = slices  # a plain list: the model's parameters are not this module's

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.base(out, y)
        return loss + self.weight * group_norms(self._slices).sum()


def sparsify(
    model: nn.Module,
    graph: ChannelGraph,
    kept: Mapping[str, NDArray[np.intp]],
    splits: Any,
    *,
    loss: str = "csq",
    steps: int = 200,
    weight: float = 1e-3,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Train `model` (the unpruned network of `graph`'s architecture) in place for `steps` optimiser
    steps on the hash loss plus the group penalty of the channels `kept` leaves out. Returns the
    summed group norm before and after, and the steps run."""
    from acpsearch.hashing import get_loss, train_hash_net
    from acpsearch.hashing.encoding import raw_output

    slices = removed_slices(graph, model, kept)
    with torch.no_grad():
        before = float(group_norms(slices).sum())
        x0 = splits.train[0][:2].to(next(model.parameters()).device)
        bits = int(raw_output(model.eval()(x0)).shape[1])
    if not slices or steps <= 0:
        return {"norm_before": before, "norm_after": before, "steps": 0.0}
    criterion = GroupPenaltyLoss(get_loss(loss, bits, splits.num_classes), slices, weight)
    n = int(splits.train[0].shape[0])
    epochs = math.ceil(steps / max(1, math.ceil(n / batch_size)))
    # validated only after the last epoch: the best-by-validation state it returns is the last one
    train_hash_net(
        model,
        splits,
        loss=criterion,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=False,
        max_batches=steps,
        eval_every=epochs,
    )
    with torch.no_grad():
        after = float(group_norms(removed_slices(graph, model, kept)).sum())
    return {"norm_before": before, "norm_after": after, "steps": float(steps)}
