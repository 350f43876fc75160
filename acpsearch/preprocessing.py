"""Reproduce a checkpoint's input preprocessing: `acpsearch.preprocess(images, checkpoint_or_meta)`.

Every checkpoint written by `acpsearch train` and by a study (base, finalists, winner) stores
`meta.preprocess = {mean, std, input_shape, divide_by, normalize, image_size, resize}`: raw pixels
are divided by `divide_by` (255 for 8-bit images, 16 for scikit-learn digits, 1 for data already
in [0, 1]), then `(x - mean[c]) / std[c]` per channel, with the statistics of the training split
the network was trained on. `preprocess` applies exactly that, so a user of `load_model` feeds the
network what `encode` fed it:

    model = acpsearch.load_model("winner.pt")
    x = acpsearch.preprocess(raw_images, "winner.pt")   # or a checkpoint dict, or its meta
    codes = torch.sign(model(x))

`images` is an array / tensor of raw pixels ((N, C, H, W), (C, H, W), (N, H, W) for one channel,
or (N, H, W, C) with C of 1 or 3), or one or more PIL images: those are converted to the
network's channels and resized (with `image_size`: shorter side to it, centre crop) first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from acpsearch.checkpoint import read_checkpoint
from acpsearch.errors import CheckpointError, DataError
from acpsearch.hashing.data.stream import decode_pil


def preprocess_of(checkpoint_or_meta: Any) -> dict[str, Any]:
    """The `meta.preprocess` dict of a checkpoint path, checkpoint dict, meta dict or the dict itself."""
    src = checkpoint_or_meta
    if isinstance(src, (str, Path)):
        src = read_checkpoint(src)
    if not isinstance(src, dict):
        raise CheckpointError(f"preprocess: expected a checkpoint path or dict, got {type(src).__name__}")
    pre: Any
    if "mean" in src and "std" in src:
        pre = src
    else:
        meta = src.get("meta", src) if isinstance(src.get("meta", src), dict) else {}
        pre = meta.get("preprocess")
    if not isinstance(pre, dict) or "mean" not in pre or "std" not in pre:
        raise CheckpointError(
            "preprocess: the checkpoint stores no meta.preprocess (written before it was "
            "stored); normalise as its training did"
        )
    return pre


def _from_pil(images: list[Any], pre: dict[str, Any]) -> np.ndarray:
    c, h, w = (int(v) for v in pre["input_shape"])
    return np.stack([decode_pil(im, (h, w), "L" if c == 1 else "RGB", pre.get("image_size")) for im in images])


def preprocess(images: Any, checkpoint_or_meta: Any) -> torch.Tensor:
    """Raw images -> the float32 (N, C, H, W) network input of the checkpoint (see the module doc)."""
    pre = preprocess_of(checkpoint_or_meta)
    c = int(pre["input_shape"][0])
    pil = isinstance(images, Image.Image) or (
        isinstance(images, (list, tuple)) and images and all(isinstance(i, Image.Image) for i in images)
    )
    if pil:
        x = torch.from_numpy(_from_pil([images] if not isinstance(images, (list, tuple)) else list(images), pre))
    else:
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
        if x.ndim == 3:
            x = x[:, None] if c == 1 and x.shape[0] != 1 else x[None]  # (N, H, W) grey, else one (C, H, W)
        if x.ndim == 4 and x.shape[1] != c and x.shape[-1] == c:
            x = x.permute(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != c:
            raise DataError(
                f"preprocess: images of shape {tuple(x.shape)} do not fit the checkpoint's input "
                f"{tuple(pre['input_shape'])}"
            )
    x = x.float() / float(pre.get("divide_by", 1.0))
    mean = torch.tensor([float(v) for v in pre["mean"]], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor([float(v) for v in pre["std"]], dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()
