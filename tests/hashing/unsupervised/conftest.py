"""Shared fixtures: the digits protocol splits as flat numpy features (train / query / database)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits_feats() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from acpsearch.hashing import load_dataset, make_splits
    from acpsearch.hashing.unsupervised.table import split_features

    return split_features(make_splits(load_dataset("digits"), seed=0))
