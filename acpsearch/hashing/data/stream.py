"""Images that stay on disk: `ImageSource` decodes, resizes and normalises them per batch (in
DataLoader workers), and `iter_batches` walks a tensor or a source batch by batch."""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from acpsearch.errors import DataError
from acpsearch.hashing.data.gate import MAX_SIDE, first_line

# what Pillow (and the zlib / parsers under it) raise on a damaged, truncated or oversized file
IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def decode_pil(im: Any, size: tuple[int, int], mode: str, image_size: int | None) -> np.ndarray:
    """A PIL image as uint8 (C, H, W) in `mode` ("L" or "RGB"): with `image_size`, the shorter
    side resized to it (bilinear) and the centre square cropped; else resized to `size` (H, W)."""
    im = im.convert(mode)
    w, h = im.size
    if image_size is not None:
        r = image_size / min(w, h)
        nw, nh = max(image_size, round(w * r)), max(image_size, round(h * r))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        if (nw, nh) != (image_size, image_size):
            im = im.crop((left, top, left + image_size, top + image_size))
    elif im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode(file: str, size: tuple[int, int], mode: str, image_size: int | None, where: str) -> np.ndarray:
    """One image file as uint8 (C, H, W) (see `decode_pil`); `where` (list file and line) starts
    every error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                w, h = im.size
                if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                    raise DataError(f"{where}: image {file!r} is {w}x{h} pixels, each side must be 1 to {MAX_SIDE}")
                return decode_pil(im, size, mode, image_size)
    except DataError:
        raise
    except IMAGE_ERRORS as exc:
        raise DataError(f"{where}: cannot read image {file!r} ({first_line(exc)})") from None


def _reraise_worker(exc: DataError) -> DataError:
    """A DataError raised in a DataLoader worker comes back with the worker's traceback in its
    message: keep the one line that says what is wrong."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "DataError: " in ln:
            return DataError(ln.split("DataError: ", 1)[1])
    return DataError(lines[-1] if lines else "data error")


class ImageSource(torch.utils.data.Dataset[torch.Tensor]):
    """Images that stay on disk: decoded, resized, scaled to [0, 1] and normalised per item.

    It answers the tensor questions the training code asks (`shape`, `ndim`, `len`, `X[i:j]`,
    `X[index_tensor]` -> a decoded batch) and `loader(chunks)` gives a torch DataLoader over lists
    of rows with `workers` worker processes: memory stays one batch per worker, whatever the number
    of images. `subset` and `normalized` return new sources (nothing decoded)."""

    ndim = 4

    def __init__(
        self,
        files: list[str],
        where: list[str],
        size: tuple[int, int],
        mode: str,
        image_size: int | None = None,
        workers: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        self.files, self.where = files, where
        self.size, self.mode, self.image_size, self.workers = size, mode, image_size, int(workers)
        self.mean, self.std = mean, std
        self.divide_by = 255.0

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, *self.size))

    def __len__(self) -> int:
        return len(self.files)

    def _one(self, i: int) -> torch.Tensor:
        arr = _decode(self.files[i], self.size, self.mode, self.image_size, self.where[i])
        x = torch.from_numpy(np.ascontiguousarray(arr)).float() / self.divide_by
        if self.mean is not None and self.std is not None:
            x = (x - torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)) / torch.tensor(
                self.std, dtype=torch.float32
            ).view(-1, 1, 1)
        return x

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self._one(int(key))
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return torch.zeros((0, *self.shape[1:]))
        batch: torch.Tensor = next(iter(self.loader([rows.tolist()])))
        return batch

    def subset(self, rows: Any) -> ImageSource:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return ImageSource(
            [self.files[i] for i in rows],
            [self.where[i] for i in rows],
            self.size,
            self.mode,
            self.image_size,
            self.workers,
            self.mean,
            self.std,
        )

    def normalized(self, mean: list[float] | None, std: list[float] | None) -> ImageSource:
        return ImageSource(self.files, self.where, self.size, self.mode, self.image_size, self.workers, mean, std)

    def loader(self, chunks: list[list[int]]) -> Any:
        """Decoded batches, one per chunk of rows, in order (a generator over a DataLoader)."""
        from torch.utils.data import DataLoader

        dl = DataLoader(
            self,
            batch_sampler=chunks,
            num_workers=self.workers,
            persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
        )
        try:
            yield from dl
        except DataError as exc:
            raise _reraise_worker(exc) from None


def is_source(x: Any) -> bool:
    return isinstance(x, ImageSource)


def iter_batches(X: Any, chunks: list[Any]) -> Any:
    """The batch X[rows] of each chunk of rows, in order: indexing for a tensor, a DataLoader
    (with the source's workers) for an ImageSource."""
    if is_source(X):
        yield from X.loader([[int(v) for v in (c.tolist() if hasattr(c, "tolist") else c)] for c in chunks])
    else:
        for c in chunks:
            yield X[c]
