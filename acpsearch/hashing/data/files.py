"""User files: an image folder (one sub-folder per class, Pillow-decoded images or .npy arrays)
and an .npz archive (arrays X and y). Files are checked where they are read: an .npy header is
checked before np.load (numeric dtype, an image's shape, as many bytes as that shape needs),
Pillow's decompression-bomb warning and error are errors here, and no image may have a side above
MAX_SIDE."""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from acpsearch.errors import DataError
from acpsearch.hashing.data.gate import (
    MAX_CHANNELS,
    MAX_SIDE,
    MAX_VALUES,
    Dataset,
    dtype_problem,
    finish_dataset,
    first_line,
)
from acpsearch.hashing.data.stream import IMAGE_ERRORS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _read_npy(file: Path) -> np.ndarray:
    """An .npy image. Its header is read and checked first (a numeric dtype, an image's shape, as
    many bytes as the shape needs), so neither pickled objects nor a header claiming a huge shape
    get as far as np.load."""
    try:
        with open(file, "rb") as f:
            if f.read(6) != np.lib.format.MAGIC_PREFIX:  # else np.load would try it as a pickle (or a zip archive)
                raise DataError(
                    f"dataset folder: {str(file)!r} is not an .npy file (no NumPy header); write images with numpy.save"
                )
            f.seek(0)
            shape, dtype = _npy_array_header(f)
            have = _remaining(f)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise DataError(f"dataset folder: cannot read {str(file)!r} as an .npy array ({first_line(exc)})") from None
    problem = dtype_problem(dtype)
    if problem:
        raise DataError(f"dataset folder: {str(file)!r} {problem}")
    if len(shape) not in (2, 3):
        raise DataError(
            f"dataset folder: {str(file)!r} is a {len(shape)}-D array of shape {shape}; an .npy "
            "image must be (H, W), (C, H, W) or (H, W, C)"
        )
    chw = (1, *shape) if len(shape) == 2 else shape
    if len(shape) == 3 and shape[-1] in (1, 3) and shape[0] not in (1, 3):
        chw = (shape[2], shape[0], shape[1])
    c, h, w = chw
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and 1 <= c <= MAX_CHANNELS):
        raise DataError(
            f"dataset folder: {str(file)!r} has shape {shape}; an image needs 1 to {MAX_CHANNELS} "
            f"channels and sides of 1 to {MAX_SIDE} pixels"
        )
    need = math.prod(shape) * dtype.itemsize
    if have < need:
        raise DataError(f"dataset folder: {str(file)!r} is truncated ({have} of {need} bytes of data)")
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"dataset folder: cannot read {str(file)!r} as an .npy array ({first_line(exc)})") from None
    image: np.ndarray = arr[None] if arr.ndim == 2 else arr
    if arr.ndim == 3 and tuple(chw) != tuple(shape):  # (H, W, C) -> (C, H, W)
        image = arr.transpose(2, 0, 1)
    return image


def _remaining(f: Any) -> int:
    """Bytes after the current position of a seekable file (which stays where it was)."""
    here = f.tell()
    end = f.seek(0, 2)
    f.seek(here)
    return int(end - here)


def _read_image(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as (C, H, W) uint8/float array. .npy always works; other formats need Pillow."""
    if file.suffix.lower() == ".npy":
        return _read_npy(file)
    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that: both are errors here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                w, h = im.size
                if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                    raise DataError(
                        f"dataset folder: image {str(file)!r} is {w}x{h} pixels, each side must be "
                        f"1 to {MAX_SIDE} (resize it first)"
                    )
                pixels = im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB")
                if size is not None and pixels.size != size[::-1]:
                    pixels = pixels.resize(size[::-1])
                arr = np.asarray(pixels)
    except DataError:
        raise
    except IMAGE_ERRORS as exc:
        raise DataError(f"dataset folder: cannot read image {str(file)!r} ({first_line(exc)})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_folder(path: str | None, image_size: int | None = None) -> Dataset:
    if not path:
        raise DataError("dataset folder: no path given; pass --data-dir DIR with one sub-folder per class")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"dataset folder: {str(root)!r} is not a directory (one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"dataset folder: {str(root)!r} has no class sub-folders")
    images, labels, paths = [], [], []
    size: tuple[int, int] | None = (int(image_size), int(image_size)) if image_size else None
    for ci, cname in enumerate(classes):
        files = sorted(
            f for f in (root / cname).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + (".npy",)
        )
        for f in files:
            arr = _read_image(f, size)
            if size is None:
                size = (int(arr.shape[1]), int(arr.shape[2]))
            elif arr.shape[1:] != size:
                raise DataError(
                    f"dataset folder: {str(f)!r} is {arr.shape[1]}x{arr.shape[2]}, "
                    f"others are {size[0]}x{size[1]} (.npy images are not resized)"
                )
            images.append(arr)
            labels.append(ci)
            paths.append(f)
    if not images:
        raise DataError(f"dataset folder: no images ({', '.join(IMAGE_SUFFIXES)}, .npy) under {str(root)!r}")
    channels = max(a.shape[0] for a in images)
    if size is not None and len(images) * channels * size[0] * size[1] > MAX_VALUES:
        raise DataError(
            f"dataset folder: {str(root)!r} holds {len(images)} images of {channels}x{size[0]}x{size[1]}, "
            f"more than {MAX_VALUES} values; use fewer or smaller images"
        )
    if any(a.shape[0] not in (1, channels) for a in images):
        odd = next(i for i, a in enumerate(images) if a.shape[0] not in (1, channels))
        raise DataError(
            f"dataset folder: {str(paths[odd])!r} has {images[odd].shape[0]} channels, others have "
            f"{channels} (only 1-channel images are repeated to match)"
        )
    images = [np.repeat(a, channels, 0) if a.shape[0] != channels else a for a in images]
    x = np.stack(images).astype(np.float32)
    return finish_dataset(
        x,
        np.asarray(labels, dtype=np.int64),
        "folder",
        str(root),
        class_names=classes,
        where=lambda i: repr(str(paths[i])),
    )


def _npy_array_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an open .npy stream positioned at its magic string; the data is not read."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here")
    return shape, dtype


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npy member of an .npz archive, from its header alone."""
    if member not in archive.namelist():  # np.savez writes KEY.npy; NpzFile also reads a member named KEY
        member = member[: -len(".npy")]
    with archive.open(member) as f:
        try:
            shape, dtype = _npy_array_header(f)
        except ValueError as exc:
            raise ValueError(f"{member}: {exc}") from None
    return tuple(int(v) for v in shape), dtype


def load_npz(path: str | None) -> Dataset:
    if not path:
        raise DataError("dataset npz: no path given; pass --data-dir FILE.npz with arrays X and y")
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"dataset npz: {str(p)!r} not found (an .npz file with arrays X and y: "
            "write one with numpy.savez(FILE, X=images, y=labels))"
        )
    if not zipfile.is_zipfile(p):  # np.load would try it as a pickle and talk about allow_pickle
        raise DataError(
            f"dataset npz: cannot read {str(p)!r} (not an .npz archive; write one with "
            "numpy.savez(FILE, X=images, y=labels))"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            if "X" not in z or "y" not in z:
                raise DataError(f"dataset npz: {str(p)!r} must contain arrays 'X' and 'y', has {sorted(z.files)}")
            for key in ("X", "y"):  # the headers first: a compressed array of zeros can claim any size
                shape, dtype = _npy_header(z.zip, f"{key}.npy")
                if dtype.hasobject:
                    raise DataError(f"dataset npz: {str(p)!r}: {key} {dtype_problem(dtype)}")
                if math.prod(shape) > MAX_VALUES:
                    raise DataError(
                        f"dataset npz: {str(p)!r}: {key} has shape {shape}, more than {MAX_VALUES} "
                        "values; use fewer or smaller images"
                    )
            x, y = np.asarray(z["X"]), np.asarray(z["y"])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged archives fail in zipfile / zlib / numpy in many ways
        raise DataError(f"dataset npz: cannot read {str(p)!r} ({first_line(exc)})") from None
    return finish_dataset(x, y, "npz", str(p), layout="auto", arrays=("X", "y"))
