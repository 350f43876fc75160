"""ODH base training for the CLI (`acpsearch train --loss odh`) and a study's base phase
(`train.loss: odh`): the teacher's class matrix (a classification checkpoint, or a classifier on
the same backbone trained first on the same training split), then `acpsearch.hashing.train_odh`;
returns the trained network and the checkpoint's ``meta.odh`` entry (the frozen centres)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from acpsearch.errors import CheckpointError, SpecError

TEACHER_EPOCH_SHARE = 4  # without a teacher, the classifier trains for max(1, epochs // 4) epochs


@dataclass
class OdhRun:
    """What an ODH base training run needs besides the network and the splits."""

    zoo: str | None  # the zoo name of the network (the teacher trained here uses the same backbone)
    teacher: str | None  # a classification checkpoint, or None: train the classifier first
    epochs: int
    lr: float
    batch_size: int
    seed: int
    hflip: bool = False
    device: Any = "cpu"
    progress: bool = False
    field: str = "--teacher"
    allow_factories: Any = None


def teacher_matrix(path: str, num_classes: int, field: str = "--teacher", allow_factories: Any = None) -> Any:
    """The class matrix W (classes x features) of the classifier checkpoint at `path`; a checkpoint
    that is not a classifier, or whose class count differs from the data's, is one SpecError line."""
    from acpsearch.checkpoint import model_from_checkpoint, model_task, read_checkpoint
    from acpsearch.classification import class_matrix

    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise SpecError(f"{field}: {exc}") from None
    if model_task(ckpt["model"]) != "classification":
        raise SpecError(
            f"{field}: {path!r} is not a classifier checkpoint (its network is a hash network); "
            "train one with `acpsearch train --task classification`"
        )
    model = model_from_checkpoint(ckpt, source=f"checkpoint {path!r}", allow_factories=allow_factories)
    w = class_matrix(model)
    if int(w.shape[0]) != int(num_classes):
        raise SpecError(f"{field}: the classifier {path!r} has {w.shape[0]} classes, the data set has {num_classes}")
    return w


def train_odh_base(
    model: Any, splits: Any, run: OdhRun, say: Callable[[str], None], callback: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Train `model` with ODH; (TrainResult, the checkpoint's meta.odh entry)."""
    from acpsearch.hashing import OdhConfig, train_odh
    from acpsearch.hashing.odh import odh_meta

    teacher_info: dict[str, Any]
    if run.teacher:
        w = teacher_matrix(run.teacher, splits.num_classes, run.field, run.allow_factories)
        teacher_info = {"teacher": str(run.teacher)}
    else:
        if not run.zoo:
            raise SpecError(f"{run.field}: ODH needs a teacher classifier for a network that is not a zoo network")
        from acpsearch.classification import class_matrix, train_teacher

        epochs = max(1, run.epochs // TEACHER_EPOCH_SHARE)
        say(f"odh: no teacher given: training a {run.zoo} classifier first ({epochs} epochs, selected on validation)")
        cls, res = train_teacher(
            run.zoo,
            splits,
            epochs=epochs,
            lr=run.lr,
            batch_size=run.batch_size,
            seed=run.seed,
            device=run.device,
            hflip=run.hflip,
            progress=run.progress,
        )
        w = class_matrix(cls)
        teacher_info = {"teacher": None, "teacher_epochs": epochs, "teacher_val_top1": round(res.best_val_top1, 4)}
    cfg = OdhConfig()
    out = train_odh(
        model,
        splits,
        w,
        cfg,
        epochs=run.epochs,
        lr=run.lr,
        batch_size=run.batch_size,
        seed=run.seed,
        progress=run.progress,
        hflip=run.hflip,
        callback=callback,
    )
    meta = odh_meta(
        out.centres,
        cfg.tau,
        stage2_from=cfg.stage2_from,
        stage1_epochs=out.stage1_epochs,
        n_positive=cfg.n_positive,
        min_centre_distance=out.centre_distance[out.train.best_epoch - 1] if out.centre_distance else None,
        **teacher_info,
    )
    return out.train, meta
