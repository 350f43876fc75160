"""`acpsearch train --loss lagnh --aux kmeans|bovw|file [--tags FILE]`: a hash network trained
without labels (the LAGNH objective, `acpsearch.hashing.lagnh_loss`).

The splits are drawn without labels, the auxiliary tags are fitted on the training images only and
stored in the checkpoint (meta.aux), validation uses the tags' neighbourhoods (`hashing.labelfree`);
the labels are read only by the test report at the end."""

from __future__ import annotations

import sys
from typing import Any

from acpsearch.errors import SpecError

LABELS_UNUSED = (
    "labels unused for training: loss lagnh learns from auxiliary tags ({aux}); only the test report reads labels"
)


def check_flags(loss: str, aux: str | None, tags: str | None) -> bool:
    """Whether the run is label-free; a flag that does not fit the loss is one line (exit 2)."""
    from acpsearch.hashing.losses import UNSUPERVISED_LOSSES
    from acpsearch.hashing.unsupervised import AUX_METHODS

    unsupervised = loss.lower() in UNSUPERVISED_LOSSES
    if not unsupervised and (aux is not None or tags is not None):
        flag = "--aux" if aux is not None else "--tags"
        raise SpecError(f"{flag}: auxiliary tags are for an unsupervised loss (--loss lagnh), not {loss!r}")
    if aux is not None and aux not in AUX_METHODS:
        raise SpecError(f"--aux: must be one of {', '.join(AUX_METHODS)}, got {aux!r}")
    if aux == "file" and not tags:
        raise SpecError("--aux: file needs the tag file: --tags FILE")
    if tags is not None and aux != "file":
        raise SpecError("--tags: a tag file is read with --aux file")
    return unsupervised


def setup(ds: Any, splits: Any, aux: str | None, tags: str | None, seed: int, quiet: bool) -> Any:
    """The `LabelFree` training inputs (tags read / fitted on the training split); says on stderr
    (stdout with a table) that labels are unused."""
    from acpsearch.hashing.lagnh_setup import label_free_setup
    from acpsearch.hashing.unsupervised import read_tag_file

    method = aux or "kmeans"
    rows = read_tag_file(tags, len(ds)) if method == "file" and tags else None
    print(LABELS_UNUSED.format(aux=method), file=sys.stderr if quiet else sys.stdout)
    return label_free_setup(splits, method, rows, seed=seed)
