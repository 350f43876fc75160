"""Physical pruning, measured cost, replayable pruning records.

``prune`` deep-copies the model, slices every parameter / buffer along the axes the channel
analysis bound to groups, updates the layers' size attributes, then VERIFIES the result
(forward on the example input, output shapes unchanged, measured cost == predicted cost) and
raises ``UnsupportedModelError`` instead of ever returning a wrong model.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from acpsearch.errors import CheckpointError, UnsupportedModelError
from acpsearch.graph.channels import Analysis, Seg
from acpsearch.graph.core import ChannelGraph, Cost
from acpsearch.graph.rules import module_rule, set_size_attr
from acpsearch.graph.tracing import ExampleInput, one_thread
from acpsearch.pruning.bake import bake_scales
from acpsearch.pruning.measure import measure_cost
from acpsearch.pruning.strategy import PruningStrategy

RECORD_FORMAT = "acpsearch-pruning"


def _out_shapes(out: Any) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _out_shapes(o)]
    if isinstance(out, dict):
        return [s for o in out.values() for s in _out_shapes(o)]
    return []


def _check_same_arch(model: nn.Module, g: ChannelGraph) -> None:
    if model is g.model:
        return
    mine = {n: tuple(p.shape) for n, p in model.named_parameters()}
    ref = {n: tuple(p.shape) for n, p in g.model.named_parameters()}
    if mine != ref:
        diff = sorted(set(mine.items()) ^ set(ref.items()))
        raise UnsupportedModelError(
            f"model does not match the graph's architecture (first difference: {diff[0][0] if diff else '?'})"
        )


def apply_indices(
    model: nn.Module,
    g: ChannelGraph,
    indices: dict[str, np.ndarray],
    example_input: Any,
    expected: Cost | None = None,
    verify: bool = True,
) -> nn.Module:
    """Return a pruned deep copy of `model` keeping `indices[group]` (sorted) of each group."""
    _check_same_arch(model, g)
    an = g.analysis
    kept = _Kept(g, indices)
    new = copy.deepcopy(model)
    _slice_tensors(new, an, kept)
    _resize(new, an, kept)
    bake_scales(model, new, an, kept, example_input)
    if verify:
        _verify(new, model, an, example_input, expected)
    return new


class _Kept:
    """Kept channel indices per variable root, and the kept positions of a segment list."""

    def __init__(self, g: ChannelGraph, indices: dict[str, np.ndarray]) -> None:
        self.V = g.analysis.vars
        self.keep_root: dict[int, torch.Tensor] = {}
        for r, gi in g.group_of_root.items():
            grp = g.groups[gi]
            idx = np.asarray(indices.get(grp.name, np.arange(grp.channels)), dtype=np.int64)
            if (
                idx.ndim != 1
                or len(idx) == 0
                or idx.min() < 0
                or idx.max() >= grp.channels
                or len(np.unique(idx)) != len(idx)
            ):
                raise UnsupportedModelError(f"group {grp.name!r}: invalid kept indices")
            if grp.divisor > 1:
                per = grp.channels // grp.divisor
                counts = np.bincount(idx // per, minlength=grp.divisor)
                if len(set(counts.tolist())) != 1:
                    raise UnsupportedModelError(
                        f"group {grp.name!r}: kept channels must be balanced over {grp.divisor} groups"
                    )
            self.keep_root[r] = torch.from_numpy(np.sort(idx))

    def __call__(self, segs: tuple[Seg, ...]) -> tuple[torch.Tensor, int, int]:
        """(kept positions, their count, the full length) of the channel axis made of `segs`."""
        parts, off = [], 0
        for v, rep in segs:
            r = self.V.find(v)
            size = self.V.size[r]
            k = self.keep_root.get(r)
            if k is None:
                k = torch.arange(size)
            parts.append((off + (k[:, None] * rep + torch.arange(rep)[None, :])).reshape(-1))
            off += size * rep
        idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return idx, len(idx), off


def _slice_tensors(new: nn.Module, an: Analysis, kept: _Kept) -> None:
    """Slice every bound parameter / buffer of `new` (shared tensors once, every owner updated)."""
    owners: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    for mod in new.modules():
        for leaf, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod, leaf, True))
        for leaf, b in mod._buffers.items():
            if b is not None:
                owners.setdefault(id(b), []).append((mod, leaf, False))
    tensors: dict[str, torch.Tensor] = dict(new.named_parameters(remove_duplicate=False))
    tensors.update(dict(new.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for tname, axes in an.bindings.items():
            t = tensors.get(tname)
            if t is None:
                continue
            t2 = _sliced(t.detach(), axes, an.grouped_in.get(tname, 1), kept)
            if t2 is t:
                continue
            for mod, leaf, is_param in owners.get(id(t), []):
                if is_param:
                    mod._parameters[leaf] = nn.Parameter(t2.clone().contiguous(), requires_grad=t.requires_grad)
                else:
                    mod._buffers[leaf] = t2.clone().contiguous()


def _sliced(t2: torch.Tensor, axes: dict[int, tuple[Seg, ...]], grp_n: int, kept: _Kept) -> torch.Tensor:
    for axis, segs in axes.items():
        if axis == -1:
            continue
        idx, n, full = kept(segs)
        if n != full:
            t2 = t2.index_select(axis, idx)
    if -1 in axes:  # grouped conv: the per-group input axis 1, block by block
        idx, n, full = kept(axes[-1])
        if n != full:
            per_in = full // grp_n
            out_per = t2.shape[0] // grp_n
            blocks = []
            for b in range(grp_n):
                local = idx[(idx >= b * per_in) & (idx < (b + 1) * per_in)] - b * per_in
                blocks.append(t2[b * out_per : (b + 1) * out_per].index_select(1, local))
            t2 = torch.cat(blocks, 0)
    return t2


def _verify(new: nn.Module, model: nn.Module, an: Analysis, example_input: Any, expected: Cost | None) -> None:
    """Forward on the example input (eval and training mode), same output shapes, cost as predicted."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    was = new.training
    new.eval()
    try:
        with one_thread(), torch.no_grad():
            out = new(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot prune this model safely
        first = (str(exc).splitlines() or [""])[0]
        raise UnsupportedModelError(
            f"pruned {type(model).__name__} fails on the example input ({type(exc).__name__}: {first[:160]}); "
            "an op in its forward hard-codes channel sizes"
        ) from None
    finally:
        new.train(was)
    _check_train_mode(new, model, tuple(inputs))
    shapes = _out_shapes(out)
    if shapes != an.output_shapes:
        raise UnsupportedModelError(
            f"pruned {type(model).__name__}: output shapes changed {an.output_shapes} -> {shapes}"
        )
    if expected is not None:
        measured = measure_cost(new, example_input)
        if measured != expected:
            raise UnsupportedModelError(
                f"pruned {type(model).__name__}: measured cost {measured} != predicted {expected}; refusing it"
            )


def _resize(new: nn.Module, an: Analysis, seg_index: _Kept) -> None:
    """Size attributes after slicing: each module's rule resizes it; attributes holding channel
    counts a forward reads (split sizes, ...) get the kept counts."""
    for name, info in an.modules.items():
        m = new.get_submodule(name)
        rule = module_rule(m)
        if rule is None or info.kind == "frozen":
            continue
        n_in = seg_index(info.in_segs)[1] if info.in_segs else None
        n_out = seg_index(info.out_segs)[1] if info.out_segs else None
        rule.resize(m, info, n_in, n_out)
    for sa in an.size_attrs:
        set_size_attr(new.get_submodule(sa.module), sa, [seg_index(p)[1] for p in sa.parts])


def _check_train_mode(new: nn.Module, model: nn.Module, inputs: tuple[Any, ...] | list[Any]) -> None:
    """The graph is traced in eval mode; a forward that differs in training mode (auxiliary
    heads, ...) could reach layers the analysis never saw. Run the pruned copy once in training
    mode (norm statistics restored afterwards) and refuse it if that fails."""
    xs = tuple(
        torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1 else t for t in inputs
    )  # batch norm in training mode needs more than one value per channel
    saved = {n: b.detach().clone() for n, b in new.named_buffers()}
    was = new.training
    new.train()
    try:
        with one_thread(), torch.no_grad():
            new(*xs)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).splitlines() or [""])[0]
        raise UnsupportedModelError(
            f"pruned {type(model).__name__} fails in training mode ({type(exc).__name__}: {first[:160]}); its "
            "training-mode forward uses layers the eval-mode trace does not (e.g. auxiliary heads)"
        ) from None
    finally:
        with torch.no_grad():
            for n, b in new.named_buffers():
                b.copy_(saved[n])
        new.train(was)


def prune(model: nn.Module, strategy: PruningStrategy, example_input: ExampleInput, verify: bool = True) -> nn.Module:
    """A new, physically smaller copy of `model` pruned by `strategy`; `model` is unchanged.

    Channels are chosen by the strategy's criterion on `model`'s own weights. The returned module
    carries its replay record as ``acp_pruning_record`` (used by ``save_pruned``)."""
    if not isinstance(strategy, PruningStrategy):
        raise UnsupportedModelError(f"strategy: expected a PruningStrategy, got {type(strategy).__name__}")
    g = strategy.graph
    _check_same_arch(model, g)
    indices = strategy.kept_indices(model)
    pruned = apply_indices(model, g, indices, example_input, expected=g.cost(strategy), verify=verify)
    object.__setattr__(pruned, "acp_pruning_record", _record(g, strategy, indices))
    return pruned


def _record(g: ChannelGraph, strategy: PruningStrategy | None, indices: dict[str, np.ndarray]) -> dict[str, Any]:
    kept = np.array([len(indices.get(gr.name, range(gr.channels))) for gr in g.groups], dtype=np.int64)
    cost = g.cost_kept_full(kept)
    return {
        "format": RECORD_FORMAT,
        "version": 1,
        "hash_layer": g.hash_layer,
        "strategy": strategy.to_dict() if strategy is not None else None,
        "groups": {
            gr.name: {
                "channels": int(gr.channels),
                "kept": [int(i) for i in indices.get(gr.name, np.arange(gr.channels))],
            }
            for gr in g.groups
        },
        "cost": cost.to_dict(),
        "base_cost": g.cost().to_dict(),
    }


def make_record(strategy: PruningStrategy, model: nn.Module | None = None) -> dict[str, Any]:
    """A JSON/weights-only-safe record (kept indices per group) that `apply_record` replays."""
    return _record(strategy.graph, strategy, strategy.kept_indices(model))


def apply_record(model: nn.Module, record: dict[str, Any], example_input: ExampleInput) -> nn.Module:
    """Replay a pruning record on a fresh (unpruned) `model` of the same architecture."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise CheckpointError("pruning record: not an acpsearch pruning record")
    g = ChannelGraph.from_model(model, example_input, hash_layer=record.get("hash_layer"))
    indices: dict[str, np.ndarray] = {}
    for name, ent in record.get("groups", {}).items():
        if name not in g.group_index or g.group(name).channels != int(ent["channels"]):
            raise CheckpointError(f"pruning record: group {name!r} does not match the architecture")
        indices[name] = np.asarray(ent["kept"], dtype=np.int64)
    kept = np.array([len(indices.get(gr.name, range(gr.channels))) for gr in g.groups], dtype=np.int64)
    expected = g.cost_kept_full(kept)
    stored = record.get("cost")
    if stored is not None and (int(stored["flops"]), int(stored["params"])) != (expected.flops, expected.params):
        raise CheckpointError("pruning record: its cost does not match the replayed architecture")
    pruned = apply_indices(model, g, indices, example_input, expected=expected)
    object.__setattr__(pruned, "acp_pruning_record", record)
    return pruned
