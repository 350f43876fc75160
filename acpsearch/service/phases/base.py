"""Phase base: load the user's checkpoint or train the base network; store it (base.pt) as an
artifact with its cost and test metrics. `attach` gives the later phases its checkpoint, graph
and dynamic space (also when the phase was done by an earlier run)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from acpsearch.service import keys
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.inputs import build_model, make_space, read_base_checkpoint
from acpsearch.service.progress import clean

NAME = "base"
_METRICS = {
    "retrieval": ("val_map", "test_map", "test_map_topk", "topk", "latency_ms", "pr_curve"),
    "classification": ("val_acc", "test_acc", "latency_ms"),
}
_TOP5 = (keys.T_VAL_ACC_TOP5, keys.T_TEST_ACC_TOP5)  # a classifier's, with 20 or more classes


def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
    """Load or train the base network; store it as an artifact with its metrics."""
    import torch

    from acpsearch.checkpoint import read_checkpoint
    from acpsearch.graph import ChannelGraph
    from acpsearch.service.tasks import evaluate_checkpoint

    path = ctx.dir() / "base.pt"
    if ctx.spec.model.checkpoint:
        model, trained = _from_checkpoint(ctx, path), None
    elif ctx.spec.task == "classification":
        model, trained = _train_classifier(ctx, path)
    else:
        model, trained = _train(ctx, path)
    ckpt = read_checkpoint(path)
    if ctx.spec.task == "retrieval":  # a loss that needs stored state (odh: the centres) must find it now
        from acpsearch.hashing.odh import loss_kwargs_from_meta

        loss_kwargs_from_meta(ctx.spec.train.loss, ckpt.get("meta"))
    g = ChannelGraph.from_model(model, torch.zeros(*ckpt["input_shape"]), hash_layer=ctx.spec.model.hash_layer)
    cost = g.cost()
    art = ctx.upload(path)
    ctx.reporter.phase("base: test evaluation")
    ev = evaluate_checkpoint(str(path), ctx.spec, threads=None, allow_factories=ctx.allow)
    return Record(
        dict(
            path=str(path),
            artifact_id=art,
            flops=int(cost.flops),
            params=int(cost.params),
            groups=len(g.groups),
            source="checkpoint" if ctx.spec.model.checkpoint else "trained",
            training=trained,
            **clean({k: ev.get(k) for k in _METRICS[ctx.spec.task]}),
            **clean({k: ev[k] for k in _TOP5 if k in ev}),
        )
    )


def _from_checkpoint(ctx: StudyRun, path: Path) -> Any:
    """The user's checkpoint, saved as base.pt with this run's preprocessing."""
    from acpsearch.checkpoint import model_from_checkpoint, save_checkpoint

    ctx.reporter.phase("base: loading checkpoint")
    shape, classes = ctx.splits.input_shape, ctx.splits.num_classes
    ckpt = read_base_checkpoint(ctx.spec, shape, allow_factories=ctx.allow, classes=classes)
    model = model_from_checkpoint(ckpt, allow_factories=ctx.allow)
    # meta.preprocess: the normalisation this run feeds the network (data.normalize)
    save_checkpoint(
        path,
        model,
        ckpt["model"],
        ckpt["input_shape"],
        pruning=ckpt.get("pruning"),
        meta={**(ckpt.get("meta") or {}), "preprocess": dict(ctx.splits.preprocess)},
    )
    return model


def _train(ctx: StudyRun, path: Path) -> tuple[Any, dict[str, Any]]:
    """The spec's network trained on the train split, saved as base.pt; (model, training record)."""
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.devices import resolve_device, seed_everything
    from acpsearch.hashing import train_hash_net

    shape = ctx.splits.input_shape
    tr = ctx.spec.train
    device = resolve_device(tr.device, "train.device")
    ctx.reporter.phase("base: training", total=tr.epochs)
    # all seeds BEFORE the model is built: the protocol seed fixes the initial weights too
    seed_everything(ctx.spec.data.protocol.seed)
    model, cfg = build_model(ctx.spec, shape, allow_factories=ctx.allow)
    model.to(device)

    def on_epoch(epoch: int, val: float) -> bool:
        ctx.reporter.advance(1, val_map=val)
        ctx.check()
        return False

    from acpsearch.service.labelfree import base_setup

    lf = base_setup(ctx.spec, ctx.splits)  # a label-free study: tags in place of labels, no labels at all
    extra: dict[str, Any] = dict(lf.meta) if lf is not None else {}  # the aux state: fine-tuning derives the tags
    if tr.loss == "odh":  # learned centres and two stages; meta.odh keeps the frozen centres
        from acpsearch.service.odh import OdhRun, train_odh_base

        seed = ctx.spec.data.protocol.seed
        run = OdhRun(ctx.spec.model.zoo, tr.teacher, tr.epochs, tr.lr, tr.batch_size, seed, tr.hflip, device)
        run.field, run.allow_factories = "train.teacher", ctx.allow
        res, extra["odh"] = train_odh_base(model, ctx.splits, run, say=ctx.reporter.log, callback=on_epoch)
    else:
        res = train_hash_net(
            model,
            lf.splits if lf is not None else ctx.splits,
            loss=tr.loss,
            epochs=tr.epochs,
            lr=tr.lr,
            batch_size=tr.batch_size,
            seed=ctx.spec.data.protocol.seed,
            progress=False,
            augment=tr.augment,
            hflip=tr.hflip,
            callback=on_epoch,
            **({"loss_kwargs": lf.loss_kwargs, "val_score": lf.val_score} if lf is not None else {}),
        )
    model = res.model.to("cpu")  # the graph, the checkpoint and the search work on the CPU copy
    trained = {
        "epochs": res.epochs_run,
        "best_epoch": res.best_epoch,
        "seconds": round(res.seconds, 2),
        "device": str(device),
        "history": [round(h["val_map"], 4) if math.isfinite(h["val_map"]) else None for h in res.history],
    }
    save_checkpoint(
        path,
        model,
        cfg,
        [1, *shape],
        meta={
            "dataset": ctx.spec.data.dataset,
            "bits": ctx.spec.model.bits,
            "loss": tr.loss,
            "trained_by": ctx.name,
            "preprocess": dict(ctx.splits.preprocess),
            **extra,
        },
    )
    return model, trained


def _train_classifier(ctx: StudyRun, path: Path) -> tuple[Any, dict[str, Any]]:
    """A classification study's zoo classifier trained with cross-entropy on the train split (best
    epoch by validation top-1), saved as base.pt; (model, training record)."""
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.devices import resolve_device, seed_everything
    from acpsearch.service import classify

    shape = ctx.splits.input_shape
    tr = ctx.spec.train
    device = resolve_device(tr.device, "train.device")
    ctx.reporter.phase("base: training a classifier", total=tr.epochs)
    seed_everything(ctx.spec.data.protocol.seed)
    model, cfg = build_model(ctx.spec, shape, allow_factories=ctx.allow, classes=ctx.splits.num_classes)

    def on_epoch(epoch: int, val: float) -> bool:
        ctx.reporter.advance(1, val_acc=val)
        ctx.check()
        return False

    res = classify.train(model, ctx.splits, ctx.spec, finetune=False, callback=on_epoch, device=device)
    model = res.model.to("cpu")
    trained = {
        "epochs": res.epochs_run,
        "best_epoch": res.best_epoch,
        "seconds": round(res.seconds, 2),
        "device": str(device),
        "history": classify.history(res),
    }
    meta = {
        "dataset": ctx.spec.data.dataset,
        "task": "classification",
        "classes": ctx.splits.num_classes,
        "loss": tr.loss,
        "label_smoothing": tr.label_smoothing,
        "trained_by": ctx.name,
        "preprocess": dict(ctx.splits.preprocess),
    }
    save_checkpoint(path, model, cfg, [1, *shape], meta=meta)
    return model, trained


def attach(ctx: StudyRun, rec: dict[str, Any]) -> StudyRun:
    """The run with the base network's checkpoint (read from the record's path), graph and space."""
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.graph import ChannelGraph
    from acpsearch.service.tasks import example_input

    ckpt = read_checkpoint(rec["path"])
    base_model = model_from_checkpoint(ckpt, allow_factories=ctx.allow)
    ex = example_input(ckpt)
    graph = ChannelGraph.from_model(
        base_model, ex, hash_layer=ctx.spec.model.hash_layer, prune_code=ctx.spec.budget.bits is not None
    )
    space = make_space(ctx.spec, graph, base_model, ex)
    return dataclasses.replace(ctx, base_ckpt=ckpt, graph=graph, space=space)
