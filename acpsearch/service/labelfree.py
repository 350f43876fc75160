"""The service side of label-free studies (`data.supervision: none`; spec/supervision.py).

- `base_setup`: base training of an unsupervised loss: the auxiliary tags fitted on the training
  images only (their state goes into base.pt), the splits without labels, the tag-neighbour score;
- `work_splits`: what ranker actors and fine-tuning trials receive: in a label-free study the splits
  without a single label (fine-tuning: the training images' tags in their place, derived from the
  state stored in the base checkpoint);
- `reference_score`: the neighbour mAP against the unpruned network, for validation, ASHA, the
  winner and the adaptive-BN ranker when the study selects by `neighbour_map`;
- `loss_options`: the keyword arguments an unsupervised loss needs (the tags' width).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from acpsearch.service.spec import StudySpec
from acpsearch.service.spec.supervision import select_of, supervision_of


def light_splits(splits: Any) -> Any:
    """The splits without query/database: what ranking and fine-tuning need (train + val)."""
    from acpsearch.hashing import Splits

    empty = (splits.train[0][:0], splits.train[1][:0])
    return Splits(
        query=empty,
        train=splits.train,
        val=splits.val,
        database=empty,
        num_classes=splits.num_classes,
        dataset=splits.dataset,
        protocol=dict(splits.protocol),
        preprocess=dict(splits.preprocess),
    )


def label_free(spec: StudySpec) -> bool:
    return supervision_of(spec) == "none"


def tag_rows(spec: StudySpec, splits: Any) -> np.ndarray | None:
    """The user's tag file (train.aux: file), one row per image of the data set; else None."""
    if spec.train.aux != "file" or not spec.train.tags:
        return None
    from acpsearch.hashing.unsupervised import read_tag_file

    n_rows = sum(int(v.numel()) for v in splits.indices.values())
    return read_tag_file(spec.train.tags, n_rows)


def base_setup(spec: StudySpec, splits: Any) -> Any:
    """The `hashing.lagnh_setup.LabelFree` of base training, or None in a labelled study."""
    if not label_free(spec):
        return None
    from acpsearch.hashing.lagnh_setup import label_free_setup

    method = spec.train.aux or "kmeans"
    return label_free_setup(splits, method, tag_rows(spec, splits), seed=int(spec.data.protocol.seed))


def work_splits(spec: StudySpec, splits: Any, ckpt: dict[str, Any] | None = None) -> Any:
    """The splits of ranker actors and fine-tuning trials: train + val only; in a label-free study
    without labels, the training targets being the tags (when `ckpt`, the base checkpoint, is given:
    from its stored aux state, else fitted on the training images as the base phase does)."""
    if not label_free(spec):
        return light_splits(splits)
    from acpsearch.hashing.labelfree import unlabelled

    if ckpt is None:
        return unlabelled(splits)
    from acpsearch.hashing.lagnh_setup import fit_train_aux, split_tags
    from acpsearch.hashing.unsupervised import AuxSemantics

    rows = tag_rows(spec, splits)
    state = (ckpt.get("meta") or {}).get("aux")
    aux = (
        AuxSemantics.from_state(state)
        if state is not None
        else fit_train_aux(splits, spec.train.aux or "kmeans", rows, seed=int(spec.data.protocol.seed))
    )
    return unlabelled(splits, split_tags(splits, aux, "train", rows))


def reference_score(spec: StudySpec, splits: Any, reference: Any) -> Any:
    """The neighbour-mAP score against `reference` (the unpruned network) when the study selects by
    it (a label-free study, or finetune.select: neighbour_map); None: the labelled val mAP."""
    if spec.task != "retrieval" or select_of(spec) != "neighbour_map":
        return None
    from acpsearch.hashing.labelfree import NeighbourScore

    return NeighbourScore(splits, reference=reference)


def loss_options(spec: StudySpec, splits: Any) -> dict[str, Any]:
    """train_hash_net's `loss_kwargs` for an unsupervised loss (the tags' width, the seed); {} else."""
    if not label_free(spec):
        return {}
    tags = splits.train[1]
    if tags.ndim != 2:
        raise RuntimeError("label-free fine-tuning: the training targets are not tags")
    return {"loss_kwargs": {"tag_dim": int(tags.shape[1]), "seed": int(spec.search.seed)}}
