"""Normalisation: per-channel statistics of the training split (one streamed pass for a source),
`data.normalize` resolved to (mean, std), and its application to a part of the splits."""

from __future__ import annotations

import math
from typing import Any

import torch

from acpsearch.errors import DataError
from acpsearch.hashing.data.stream import is_source, iter_batches

STATS_BATCH = 256  # images per step of channel_stats: the same order of sums for a tensor and a source
STD_EPS = 1e-6


def channel_stats(X: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (+1e-6, the divisor) of images in [0, 1], over a tensor (N, C, H, W)
    or an ImageSource (one streamed pass), accumulated in float64 in fixed batches."""
    n = int(X.shape[0])
    if n == 0:
        raise DataError("data.normalize: the training split is empty, nothing to compute statistics on")
    c = int(X.shape[1])
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    chunks = [list(range(i, min(n, i + STATS_BATCH))) for i in range(0, n, STATS_BATCH)]
    for xb in iter_batches(X, chunks if is_source(X) else [slice(ch[0], ch[-1] + 1) for ch in chunks]):
        xd = xb.double()
        total += xd.sum(dim=(0, 2, 3))
        total_sq += xd.square().sum(dim=(0, 2, 3))
        count += xb.shape[0] * xb.shape[2] * xb.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    return [float(v) for v in mean], [float(v) + STD_EPS for v in var.sqrt()]


def resolve_normalize(
    normalize: Any, train_images: Any, channels: int
) -> tuple[list[float] | None, list[float] | None, str]:
    """(mean, std, kind) for `data.normalize`: "train" (statistics of the training split), "none"
    (images stay in [0, 1]) or {mean: [...], std: [...]} (one value per channel, or one for all)."""
    if normalize is None or normalize == "train":
        mean, std = channel_stats(train_images)
        return mean, std, "train"
    if normalize == "none":
        return None, None, "none"
    if isinstance(normalize, dict):
        extra = sorted(set(normalize) - {"mean", "std"})
        if extra or "mean" not in normalize or "std" not in normalize:
            raise DataError(
                f"data.normalize: a mapping needs exactly 'mean' and 'std' lists, got keys {sorted(normalize)}"
            )
        out = []
        for key in ("mean", "std"):
            v = normalize[key]
            v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            if not isinstance(v, (list, tuple)) or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in v
            ):
                raise DataError(f"data.normalize.{key}: must be a list of finite numbers, got {v!r}"[:200])
            if len(v) == 1:
                v = list(v) * channels
            if len(v) != channels:
                raise DataError(f"data.normalize.{key}: has {len(v)} values, the images have {channels} channels")
            if key == "std" and any(a <= 0 for a in v):
                raise DataError(f"data.normalize.std: every value must be > 0, got {list(v)}")
            out.append([float(a) for a in v])
        return out[0], out[1], "given"
    raise DataError(f"data.normalize: must be 'train', 'none' or {{mean: [...], std: [...]}}, got {normalize!r}"[:200])


def apply_normalize(X: Any, mean: list[float] | None, std: list[float] | None) -> Any:
    if is_source(X):
        return X.normalized(mean, std)
    if mean is None or std is None:
        return X
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return X.sub_(m).div_(sd)  # in place: X is make_splits' own copy (rows taken by an index tensor)
