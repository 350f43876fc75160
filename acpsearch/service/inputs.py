"""What a study needs before its phases run: its data splits, the base network (built from the spec
or read from the user's checkpoint), the budget's dynamic space, and `preflight`, which checks all
of them before a study is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acpsearch.errors import AcpError, CheckpointError, SpecError
from acpsearch.service.spec import StudySpec

if TYPE_CHECKING:
    from acpsearch.hashing import Splits
    from acpsearch.trust import FactoryPolicy


def load_data(spec: StudySpec) -> Splits:
    from acpsearch.service.tasks import load_splits

    return load_splits(spec)


def factory_policy(spec: StudySpec, allow_factories: Any = None, trust_spec: bool = True) -> FactoryPolicy:
    """The FactoryPolicy of a run: the user's allow-list (option / keyword + environment), plus the
    spec's own model.factory module, and its model.path as the place to look for factory modules,
    when the user gave that spec (submit, run; not a worker: whoever can write the storage could
    point model.path at a module of the same name)."""
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.coerce(allow_factories)
    return policy.with_spec(spec).searching(spec.model.path) if trust_spec else policy


def build_model(
    spec: StudySpec, input_shape: tuple[int, int, int], allow_factories: Any = None, classes: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """An untrained base network for the data's input shape, and its checkpoint model config
    (allow_factories None: the spec's own factory is trusted, the user wrote it); a classification
    study's is a zoo classifier with `classes` outputs."""
    from acpsearch.checkpoint import build_from_config, classifier_config

    c, h, w = input_shape
    cfg: dict[str, Any]
    if spec.task == "classification":
        assert spec.model.zoo is not None and classes is not None
        cfg = classifier_config(spec.model.zoo, classes, c, h)
    elif spec.model.zoo is not None:
        cfg = {
            "zoo": spec.model.zoo,
            "kwargs": {"bits": spec.model.bits, "in_channels": c, "image_size": h, **spec.model.kwargs},
        }
    else:
        cfg = {"factory": spec.model.factory, "kwargs": dict(spec.model.kwargs)}
    try:
        policy = allow_factories if allow_factories is not None else factory_policy(spec)
        return build_from_config(cfg, allow_factories=policy, source="spec"), cfg
    except AcpError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user factory failing is bad input
        raise SpecError(f"model: cannot build the network ({type(exc).__name__}: {str(exc)[:160]})") from None


def read_base_checkpoint(
    spec: StudySpec, input_shape: tuple[int, int, int], allow_factories: Any = None, classes: int | None = None
) -> dict[str, Any]:
    """The user's trained base network, checked against the data it will be pruned on (a factory the
    checkpoint names must be allowed: `allow_factories`, the environment, or the spec's own factory)."""
    from acpsearch.checkpoint import (
        FORMAT,
        VERSION,
        load_state_dict_strict,
        model_from_checkpoint,
        read_weights,
        spec_contradictions,
        validate_checkpoint,
    )

    assert spec.model.checkpoint
    kind, ckpt = read_weights(spec.model.checkpoint)
    policy = allow_factories if allow_factories is not None else factory_policy(spec)
    where = f"model.checkpoint {spec.model.checkpoint!r}"
    if kind == "state_dict":  # a plain state dict: the spec's model (zoo or factory) for the data's input
        net, cfg = build_model(spec, input_shape, allow_factories=policy, classes=classes)
        load_state_dict_strict(net, ckpt, where)
        ckpt = {
            "format": FORMAT,
            "version": VERSION,
            "model": cfg,
            "input_shape": [1, *input_shape],
            "pruning": None,
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "meta": {"dataset": spec.data.dataset, "bits": spec.model.bits},
        }
        validate_checkpoint(ckpt, where)
    shape = [int(v) for v in ckpt["input_shape"]]
    if tuple(shape[1:]) != tuple(input_shape):
        raise CheckpointError(
            f"model.checkpoint: {spec.model.checkpoint!r} expects input {tuple(shape[1:])}, "
            f"the data set {spec.data.dataset!r} has {tuple(input_shape)}"
        )
    model = model_from_checkpoint(ckpt, source=where, allow_factories=policy)
    if kind == "acpsearch":  # the spec's task / zoo / factory / kwargs / bits must not contradict the checkpoint's
        _task_contradiction(ckpt["model"], spec.task, where)
        spec_contradictions(ckpt["model"], spec.model, where)
    if spec.task == "classification":
        return ckpt
    import torch

    with torch.no_grad():
        out = model(torch.zeros(*shape))
    out = out[-1] if isinstance(out, (tuple, list)) else out
    if int(out.shape[-1]) != spec.model.bits:
        raise CheckpointError(
            f"model.checkpoint: the network outputs {int(out.shape[-1])} bits, model.bits is {spec.model.bits}"
        )
    return ckpt


def _task_contradiction(cfg: dict[str, Any], task: str, where: str) -> None:
    """A checkpoint whose stored `model.task` is not the spec's `task` is refused in one line."""
    stored = str(cfg.get("task") or "retrieval")
    if stored != task:
        raise SpecError(f"task: {task!r} contradicts {where}, whose network is a {stored} network (model.task)")


def make_space(spec: StudySpec, graph: Any, model: Any = None, example: Any = None) -> Any:
    """The budget's dynamic space (with the spec's space.exclude, bounds and round_to); a latency
    budget needs the ACP-core latency table."""
    from acpsearch.search.space import Budget, DynamicSpace, excluded_groups, group_bounds

    sp = spec.space
    fixed = excluded_groups(graph, sp.exclude) if sp.exclude else None
    bounds = group_bounds(graph, {k: tuple(v) for k, v in sp.bounds.items()}) if sp.bounds else None

    latency = None
    if spec.budget.latency_ms is not None and not graph.cost().bops:  # binary: refused by the space
        latency = _latency_table(graph, model, example)
    b = spec.budget
    budget = Budget(flops=b.flops, params=b.params, latency_ms=b.latency_ms, ops=b.ops, bits=b.bits)
    return DynamicSpace(
        graph,
        budget,
        step=sp.step,
        criterion=sp.criterion,
        min_keep=sp.min_keep,
        latency=latency,
        round_to=sp.round_to,
        bounds=bounds,
        fixed=fixed,
    )


def _latency_table(graph: Any, model: Any, example: Any) -> Any:
    """The ACP-core per-layer latency table (measured once per machine and network, cached), at
    the batch size and thread count acpsearch reports latencies with (LATENCY_BATCH, 1 thread)."""
    import torch

    from acpsearch.search.latency import LatencyTable
    from acpsearch.service.tasks import LATENCY_BATCH

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return LatencyTable.build(graph, batch_size=LATENCY_BATCH)
    finally:
        torch.set_num_threads(threads)


def preflight(spec: StudySpec, allow_factories: Any = None) -> dict[str, Any]:
    """Check the inputs a study needs BEFORE it is stored: data, model / checkpoint, graph, budget.
    Every problem is an AcpError (exit 2) and the storage stays untouched. The spec's own factory
    is trusted (the user submits it); a factory its checkpoint names needs `allow_factories`."""
    import torch

    from acpsearch.graph import ChannelGraph

    splits = load_data(spec)
    shape = splits.input_shape
    if spec.model.checkpoint:
        from acpsearch.checkpoint import model_from_checkpoint

        policy = factory_policy(spec, allow_factories)
        ckpt = read_base_checkpoint(spec, shape, allow_factories=policy, classes=splits.num_classes)
        model = model_from_checkpoint(ckpt, allow_factories=policy)
    else:
        policy = factory_policy(spec, allow_factories)
        model, _ = build_model(spec, shape, allow_factories=policy, classes=splits.num_classes)
    graph = ChannelGraph.from_model(
        model, torch.zeros(1, *shape), hash_layer=spec.model.hash_layer, prune_code=spec.budget.bits is not None
    )
    space = make_space(spec, graph, model, torch.zeros(1, *shape))
    cost = graph.cost()
    return {
        "input_shape": list(shape),
        "groups": len(graph.groups),
        "flops": int(cost.flops),
        "params": int(cost.params),
        "space": space.describe() if space is not None else None,
        "splits": splits.sizes(),
    }
