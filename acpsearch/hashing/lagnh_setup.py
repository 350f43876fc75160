"""Training without labels: what `train_hash_net` receives in a label-free run of ``loss: lagnh``.

`label_free_setup` fits the auxiliary semantics on the training images only (or restores them from
a stored state), puts the training images' tags where labels would go (`labelfree.unlabelled`:
no label is left in the splits), and picks the label-free validation score: neighbour mAP against
the unpruned network's codes when one is given (fine-tuning a pruned network), else against the
tags' own neighbourhoods (base training). `LabelFree.meta` is what a checkpoint stores so that a
later fine-tune derives exactly the same tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing.data import Splits, is_source
from acpsearch.hashing.labelfree import NeighbourScore, unlabelled
from acpsearch.hashing.unsupervised import AuxSemantics, fit_aux


@dataclass
class LabelFree:
    """Label-free training inputs: splits without labels (training targets = tags), the loss's
    keyword arguments, the validation score and the fitted auxiliary semantics."""

    splits: Splits
    loss_kwargs: dict[str, Any]
    val_score: NeighbourScore
    aux: AuxSemantics

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint `meta` entries of a label-free network (the aux state, no labels)."""
        return {"supervision": "none", "aux": self.aux.state_dict()}


def _images(X: Any, where: str) -> np.ndarray:
    if is_source(X):
        raise SpecError(f"{where}: label-free training needs the images in memory (data.stream: false)")
    return np.asarray(X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X)


def _features(aux_method: str, X: Any) -> np.ndarray:
    """What the aux semantics read: flat pixels (kmeans) or the images (bovw)."""
    x = _images(X, "aux")
    return x.reshape(x.shape[0], -1) if aux_method == "kmeans" else x


def split_tags(splits: Splits, aux: AuxSemantics, part: str, tag_rows: np.ndarray | None = None) -> torch.Tensor:
    """The tags of a split's images: `aux.transform` of them, or (method `file`) their rows of the
    user's tag file (one row per image of the data set)."""
    if aux.method == "file":
        if tag_rows is None:
            raise SpecError("aux: method 'file' needs the tag file (--tags FILE / train.tags)")
        rows = splits.indices.get(part)
        if rows is None:
            raise SpecError("aux: the splits do not say which data set rows they hold")
        return torch.from_numpy(aux.transform(None, tags=tag_rows[rows.numpy()]))
    X = splits.train[0] if part == "train" else splits.val[0]
    return torch.from_numpy(aux.transform(_features(aux.method, X)))


def fit_train_aux(
    splits: Splits, method: str = "kmeans", tag_rows: np.ndarray | None = None, seed: int = 0
) -> AuxSemantics:
    """Auxiliary semantics fitted on the training images only."""
    if method == "file":
        rows = None if tag_rows is None else tag_rows[splits.indices["train"].numpy()]
        return fit_aux(None, "file", tags=rows, seed=seed)
    return fit_aux(_features(method, splits.train[0]), method, seed=seed)


def label_free_setup(
    splits: Splits,
    method: str = "kmeans",
    tag_rows: np.ndarray | None = None,
    seed: int = 0,
    state: dict[str, Any] | None = None,
    reference: nn.Module | None = None,
) -> LabelFree:
    """Everything a label-free `train_hash_net` run needs (see the module docstring). `state`:
    a stored aux state to restore instead of fitting; `reference`: the unpruned network."""
    aux = AuxSemantics.from_state(state) if state is not None else fit_train_aux(splits, method, tag_rows, seed)
    train_tags = split_tags(splits, aux, "train", tag_rows)
    plain = unlabelled(splits, train_tags)
    if reference is not None:
        score = NeighbourScore(plain, reference=reference)
    else:
        score = NeighbourScore(plain, ref_val=split_tags(splits, aux, "val", tag_rows), ref_train=train_tags)
    return LabelFree(plain, {"tag_dim": int(aux.n_tags), "seed": int(seed)}, score, aux)
