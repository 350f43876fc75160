"""Unsupervised hashing: label-free auxiliary semantics, the LAGNH model on frozen features, and the
standard unsupervised baselines (LSH, PCAH, ITQ, BiHalf)."""

from __future__ import annotations

from acpsearch.hashing.unsupervised.aux import (
    AUX_METHODS,
    AuxSemantics,
    check_tags,
    fit_aux,
    read_tag_file,
)

__all__ = ["AUX_METHODS", "AuxSemantics", "check_tags", "fit_aux", "read_tag_file"]
