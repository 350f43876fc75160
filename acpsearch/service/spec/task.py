"""The study's downstream task (`task: retrieval | classification`) and the options that belong
to one task only: a retrieval-only option on a classification spec (a hash loss, `model.bits`)
is one line naming the field, and so is a classification-only one (`train.label_smoothing`,
the `cross-entropy` loss) on a retrieval spec."""

from __future__ import annotations

from typing import Any

from acpsearch.errors import echo as _fmt
from acpsearch.service.spec.fields import _field_error

TASKS = ("retrieval", "classification")
CLASSIFICATION_LOSSES = ("cross-entropy",)  # finetune.distill adds the distillation term
MAX_DISTILL_ALPHA = 1.0  # a classifier's finetune.distill is the weight alpha of the KL term


def check_task_options(spec: Any) -> None:
    """Raise a field error for an option of the other task; fill in the classification loss."""
    if spec.task == "classification":
        _check_classification(spec)
    else:
        _check_retrieval(spec)


def _check_classification(spec: Any) -> None:
    tr, model = spec.train, spec.model
    if "loss" not in tr.model_fields_set:
        tr.loss = CLASSIFICATION_LOSSES[0]
    elif tr.loss not in CLASSIFICATION_LOSSES:
        raise _field_error(
            ("train", "loss"),
            tr.loss,
            f"{_fmt(tr.loss)} is a hash loss (retrieval); a classification study trains with 'cross-entropy'",
        )
    if "bits" in model.model_fields_set or "bits" in model.kwargs:
        where = ("model", "bits") if "bits" in model.model_fields_set else ("model", "kwargs", "bits")
        raise _field_error(
            where, model.bits, "a code length is a retrieval option; a classifier outputs one logit per class"
        )
    if model.factory is not None:
        raise _field_error(
            ("model", "factory"), model.factory, "a classification study prunes a zoo network: give model.zoo"
        )
    if not isinstance(spec.data.normalize, str):
        raise _field_error(("data", "normalize"), "{mean, std}", "a classification study takes 'train' or 'none'")
    if spec.finetune.sparsity is not None:
        raise _field_error(
            ("finetune", "sparsity"), "{...}", "a retrieval option (the group penalty trains with the hash loss)"
        )
    if spec.finetune.distill > MAX_DISTILL_ALPHA:
        raise _field_error(
            ("finetune", "distill"),
            spec.finetune.distill,
            f"must be in [0, 1] for a classifier (the weight of the distillation term), got {spec.finetune.distill}",
        )


def _check_retrieval(spec: Any) -> None:
    tr = spec.train
    if tr.loss in CLASSIFICATION_LOSSES:
        raise _field_error(
            ("train", "loss"),
            tr.loss,
            f"{_fmt(tr.loss)} is a classification loss; a retrieval study trains a hash loss "
            "(or set task: classification)",
        )
    if "label_smoothing" in tr.model_fields_set:
        raise _field_error(
            ("train", "label_smoothing"),
            tr.label_smoothing,
            "a classification option; a retrieval study trains a hash loss (or set task: classification)",
        )


def task_free(data: dict[str, Any]) -> dict[str, Any]:
    """A spec's dict without the other task's keys: a retrieval spec without `task` and
    `train.label_smoothing` (what retrieval studies stored before, byte for byte), a classification
    spec without `model.bits` (which it refuses when it is read back)."""
    if (data.get("train") or {}).get("teacher", "") is None:  # train.teacher (loss odh) only when given
        data["train"].pop("teacher")
    if data.get("task", "retrieval") == "retrieval":
        data.pop("task", None)
        (data.get("train") or {}).pop("label_smoothing", None)
    else:
        (data.get("model") or {}).pop("bits", None)
    return data
