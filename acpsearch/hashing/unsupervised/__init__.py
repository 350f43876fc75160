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
from acpsearch.hashing.unsupervised.baselines import BASELINE_NAMES, LinearHasher, fit_itq, fit_lsh, fit_pcah
from acpsearch.hashing.unsupervised.bihalf import BiHalfHasher, bihalf, fit_bihalf
from acpsearch.hashing.unsupervised.lagnh import LAGNH_VARIANTS, LAGNHConfig, LAGNHNet
from acpsearch.hashing.unsupervised.lagnh_train import ENCODE_MODES, LAGNHModel, fit_lagnh

__all__ = [
    "AUX_METHODS",
    "AuxSemantics",
    "check_tags",
    "fit_aux",
    "read_tag_file",
    "BASELINE_NAMES",
    "LinearHasher",
    "fit_itq",
    "fit_lsh",
    "fit_pcah",
    "BiHalfHasher",
    "bihalf",
    "fit_bihalf",
    "LAGNH_VARIANTS",
    "LAGNHConfig",
    "LAGNHNet",
    "ENCODE_MODES",
    "LAGNHModel",
    "fit_lagnh",
]
