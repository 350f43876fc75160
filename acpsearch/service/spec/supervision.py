"""Label-free studies: `data.supervision` and the options that go with it.

`data.supervision: none` (implied by an unsupervised loss, `train.loss: lagnh`) is a promise: no
label reaches a training step, the structure encoder's signal or a selection. The splits are drawn
without labels, training gets the auxiliary tags where labels would go, validation / ASHA / the
winner use the label-free neighbour mAP (`finetune.select: neighbour_map`) and the adaptive-BN
ranker scores by it too. Only the test report reads labels (where the data set has them).

Refused, one line each: `none` with a supervised loss, `labels` with an unsupervised one,
`finetune.select: val_map` (a labelled score) in a label-free study, `train.aux` / `train.tags`
without an unsupervised loss, `aux: file` without `tags`, `tags` without `aux: file`, a streamed
data set (the tags need the images in memory).
"""

from __future__ import annotations

from typing import Any

from acpsearch.errors import echo as _fmt
from acpsearch.hashing.losses import UNSUPERVISED_LOSSES
from acpsearch.service.spec.fields import _field_error


def supervision_of(spec: Any) -> str:
    """ "none" (a label-free study) or "labels"."""
    return "none" if spec.data.supervision == "none" else "labels"


def select_of(spec: Any) -> str:
    """The validation score of base training, ASHA and the winner: val_map or neighbour_map."""
    if spec.finetune.select is not None:
        return str(spec.finetune.select)
    return "neighbour_map" if supervision_of(spec) == "none" else "val_map"


def check_supervision(spec: Any) -> None:
    """Fill in data.supervision from the loss; raise a field error for a combination that would
    let labels in (or that has no meaning)."""
    tr, data = spec.train, spec.data
    unsupervised = tr.loss in UNSUPERVISED_LOSSES
    if data.supervision is None and unsupervised:
        data.supervision = "none"
    if data.supervision == "labels" and unsupervised:
        raise _field_error(
            ("data", "supervision"),
            "labels",
            f"train.loss {_fmt(tr.loss)} learns without labels: its study is label-free (supervision: none)",
        )
    if data.supervision == "none" and not unsupervised:
        raise _field_error(
            ("data", "supervision"),
            "none",
            f"a label-free study trains without labels, but train.loss {_fmt(tr.loss)} needs them "
            f"(unsupervised: {', '.join(UNSUPERVISED_LOSSES)})",
        )
    if data.supervision == "none" and spec.finetune.select == "val_map":
        raise _field_error(
            ("finetune", "select"),
            "val_map",
            "needs labels; a label-free study (data.supervision: none) selects by 'neighbour_map'",
        )
    if spec.task == "classification" and spec.finetune.select is not None:
        raise _field_error(
            ("finetune", "select"), spec.finetune.select, "a retrieval option; a classifier selects by val_acc"
        )
    if data.supervision == "none" and data.dataset == "listfile" and data.stream:
        raise _field_error(("data", "stream"), True, "a label-free study needs the images in memory: stream: false")
    _check_aux(tr, unsupervised)


def _check_aux(tr: Any, unsupervised: bool) -> None:
    if not unsupervised and (tr.aux is not None or tr.tags is not None):
        key = "aux" if tr.aux is not None else "tags"
        raise _field_error(
            ("train", key),
            getattr(tr, key),
            f"auxiliary tags are for an unsupervised loss ({', '.join(UNSUPERVISED_LOSSES)}), not {_fmt(tr.loss)}",
        )
    if tr.aux == "file" and not tr.tags:
        raise _field_error(("train", "tags"), None, "aux 'file' needs the tag file: set train.tags")
    if tr.tags is not None and tr.aux != "file":
        raise _field_error(("train", "tags"), tr.tags, "a tag file is read with train.aux: file")
    if tr.tags is not None and not tr.tags.strip():
        raise _field_error(("train", "tags"), tr.tags, "empty: give the tag file's path")


def supervision_free(data: dict[str, Any]) -> dict[str, Any]:
    """A spec's dict without the label-free keys left at their defaults (what a study stored
    before they existed, byte for byte)."""
    for section, key in (("data", "supervision"), ("train", "aux"), ("train", "tags"), ("finetune", "select")):
        part = data.get(section) or {}
        if part.get(key) is None:
            part.pop(key, None)
    return data
