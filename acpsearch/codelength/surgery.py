"""Physical surgery on the hash layer: the returned network is smaller, no mask is left behind.

- `prune_bits(model, keep)`: the hash layer keeps the output rows (weights and bias) `keep`, in
  that order, so before any fine-tuning the new codes are exactly the kept bits of the old codes.
- `merge_bits(model, groups, signs)`: row g of the new hash layer is sum_i s_i W_i (bias likewise)
  over the members i of group g, so the new raw output is sum_i s_i h_i and the new code is
  sign(sum_i s_i h_i): anti-correlated members (sign -1) add instead of cancelling. Singleton
  groups with sign +1 are the identity (and equal `prune_bits`).
- `apply_code_map(model, code_map)`: replays a stored `CodeMap` on a base network.

Each returns a new module (a deep copy); the input model is left unchanged. With an example input
the output width is checked, so a hash layer whose outputs pass through further layers is refused."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from acpsearch.codelength.codemap import CodeMap
from acpsearch.codelength.layer import find_hash_layer, replace_module
from acpsearch.errors import SpecError
from acpsearch.hashing.encoding import probe, raw_output


def _new_layer(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    new = nn.Linear(old.in_features, int(weight.shape[0]), bias=bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias.copy_(bias)
    new.train(old.training)
    return new


def _check_width(model: nn.Module, bits: int, example: torch.Tensor | None, name: str) -> None:
    if example is None:
        return
    try:
        width = int(raw_output(probe(model, example[:2], channels_last=False)).shape[1])
    except (RuntimeError, SpecError):  # later layers expect the old width
        width = -1
    if width != bits:
        raise SpecError(
            f"hash_layer: {name!r} is not the last layer of the code (after cutting it to {bits} outputs the "
            f"model {'fails' if width < 0 else f'outputs {width} values'}); name the layer that emits the code"
        )


def apply_code_map(
    model: nn.Module, code_map: CodeMap, hash_layer: str | None = None, example: torch.Tensor | None = None
) -> nn.Module:
    """A copy of `model` whose hash layer emits the bits of `code_map` (its from_bits must be the
    layer's width)."""
    name, layer = find_hash_layer(model, hash_layer)
    if layer.out_features != code_map.from_bits:
        raise SpecError(
            f"code: the map is over {code_map.from_bits} hash neurons, {name!r} has {layer.out_features} outputs"
        )
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if code_map.is_pruning:
        idx = torch.tensor(code_map.kept, dtype=torch.long, device=w.device)
        new_w, new_b = w.index_select(0, idx), None if b is None else b.index_select(0, idx)
    else:
        rows, biases = [], []
        for grp, sg in zip(code_map.groups, code_map.signs):
            s = torch.tensor(sg, dtype=w.dtype, device=w.device)[:, None]
            idx = torch.tensor(grp, dtype=torch.long, device=w.device)
            rows.append((w.index_select(0, idx) * s).sum(0))
            if b is not None:
                biases.append((b.index_select(0, idx) * s[:, 0]).sum(0))
        new_w = torch.stack(rows)
        new_b = None if b is None else torch.stack(biases)
    out = copy.deepcopy(model)
    replace_module(out, name, _new_layer(layer, new_w, new_b))
    _check_width(out, code_map.bits, example, name)
    return out


def prune_bits(
    model: nn.Module, keep: Sequence[int], hash_layer: str | None = None, example: torch.Tensor | None = None
) -> nn.Module:
    """A copy of `model` whose hash layer keeps only the outputs `keep` (in that order)."""
    _, layer = find_hash_layer(model, hash_layer)
    return apply_code_map(model, CodeMap.pruned(layer.out_features, keep), hash_layer, example)


def merge_bits(
    model: nn.Module,
    groups: Sequence[Sequence[int]],
    signs: Sequence[Sequence[int]] | None = None,
    hash_layer: str | None = None,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """A copy of `model` whose hash layer emits one output per group: sum_i s_i h_i (signs default +1)."""
    _, layer = find_hash_layer(model, hash_layer)
    signs = [[1] * len(g) for g in groups] if signs is None else signs
    return apply_code_map(model, CodeMap.merged(layer.out_features, groups, signs), hash_layer, example)
