"""List-file data sets (DeepHash-pytorch style: `relative/path.jpg 0 1 0 ...` per line): one list
split by the protocol, or train / database / test (/ val) lists that are the splits themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from acpsearch.errors import DataError
from acpsearch.hashing.data.gate import MAX_SIDE, MAX_VALUES, Dataset, first_line
from acpsearch.hashing.data.normalize import STATS_BATCH
from acpsearch.hashing.data.stream import ImageSource


def _parse_list(file: Path, root: Path | None, what: str) -> tuple[list[str], list[str], np.ndarray]:
    """A DeepHash-pytorch list file: `relative/path.jpg 0 1 0 ...` per line. Returns the image
    paths, where each came from ("dataset listfile: 'FILE' line N") and the (n, C) multi-hot labels."""
    head = f"dataset listfile: {what} {str(file)!r}"
    if not file.is_file():
        raise DataError(f"{head} not found (a list file: one 'path 0 1 0 ...' line per image)")
    base = root if root is not None else file.parent
    files, where, rows = [], [], []
    width = None
    try:
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                at = f"{head} line {n}"
                rel, vec = parts[0], parts[1:]
                if not vec:
                    raise DataError(f"{at}: no label vector after {rel!r} (expected 'path 0 1 0 ...')")
                bad = next((v for v in vec if v not in ("0", "1")), None)
                if bad is not None:
                    raise DataError(f"{at}: label vector must be 0/1 values separated by spaces, got {bad[:40]!r}")
                if width is None:
                    width = len(vec)
                elif len(vec) != width:
                    raise DataError(f"{at}: label vector has {len(vec)} values, earlier lines have {width}")
                full = Path(rel) if Path(rel).is_absolute() else base / rel
                if not full.is_file():
                    raise DataError(f"{at}: image {rel!r} not found under {str(base)!r}")
                files.append(str(full))
                where.append(at)
                rows.append([v == "1" for v in vec])
    except UnicodeDecodeError:
        raise DataError(f"{head} is not a UTF-8 text file") from None
    except OSError as exc:
        raise DataError(f"{head}: cannot read ({first_line(exc)})") from None
    if not files:
        raise DataError(f"{head} lists no images")
    if width is not None and width < 2:
        raise DataError(f"{head}: label vectors have {width} value(s); retrieval needs at least 2 classes")
    return files, where, np.asarray(rows, dtype=np.int64)


def load_listfile(
    path: str | None,
    *,
    train_list: str | None,
    database_list: str | None,
    test_list: str | None,
    val_list: str | None,
    root: str | None,
    image_size: int | None,
    stream: bool,
    workers: int,
    seed: int = 0,
) -> Dataset:
    lists = {"train_list": train_list, "database_list": database_list, "test_list": test_list, "val_list": val_list}
    given = {k: v for k, v in lists.items() if v}
    base = _check_lists(path, given, image_size, root)
    files: list[str] = []
    where: list[str] = []
    labels: list[np.ndarray] = []
    ranges: dict[str, np.ndarray] = {}
    for key, file in [("list", path)] if path else [(k, v) for k, v in given.items()]:
        f, w, y = _parse_list(Path(str(file)), base, "list" if key == "list" else key)
        if labels and y.shape[1] != labels[0].shape[1]:
            raise DataError(
                f"dataset listfile: {key} {str(file)!r} has {y.shape[1]} label columns, "
                f"the other lists have {labels[0].shape[1]}"
            )
        ranges[key] = np.arange(len(files), len(files) + len(f))
        files += f
        where += w
        labels.append(y)
    y = np.concatenate(labels)
    # the first image fixes the channels (grey or RGB) and, without image_size, the size
    try:
        with Image.open(files[0]) as im:
            mode = "L" if im.mode in ("1", "L", "I;16", "I") else "RGB"
            w0, h0 = im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where[0]}: cannot read image {files[0]!r} ({first_line(exc)})") from None
    size = (image_size, image_size) if image_size else (h0, w0)
    if not (1 <= size[0] <= MAX_SIDE and 1 <= size[1] <= MAX_SIDE):
        raise DataError(
            f"{where[0]}: image {files[0]!r} is {w0}x{h0} pixels, each side must be 1 to {MAX_SIDE}; "
            "set data.image_size"
        )
    src = ImageSource(files, where, size, mode, image_size, workers)
    parts = _fixed_parts(ranges, seed) if given else None
    name_path = str(path) if path else str(train_list)
    if stream:
        images: Any = src
    else:
        images = _decode_all(src)
    if y.shape[1] < 2:
        raise DataError(f"dataset listfile: {name_path!r}: label vectors need at least 2 classes")
    return Dataset(
        images,
        torch.from_numpy(y).long(),
        "listfile",
        int(y.shape[1]),
        name_path,
        divide_by=255.0,
        parts=parts,
        image_size=image_size,
    )


def _check_lists(path: str | None, given: dict[str, str], image_size: int | None, root: str | None) -> Path | None:
    """Refuse a contradictory or incomplete choice of lists; return the root of the image paths."""
    if path and given:
        raise DataError(
            "dataset listfile: give either one list file (path, split by the protocol) or "
            "train_list + database_list + test_list, not both"
        )
    if not path and not given:
        raise DataError(
            "dataset listfile: no list file; set data.path (one list) or data.train_list, "
            "data.database_list and data.test_list"
        )
    if given:
        for k in ("train_list", "database_list", "test_list"):
            if k not in given:
                raise DataError(
                    f"dataset listfile: {k} missing; the lists are train_list, database_list, "
                    "test_list (and optional val_list)"
                )
    if image_size is not None and not (isinstance(image_size, int) and 1 <= image_size <= MAX_SIDE):
        raise DataError(f"data.image_size: must be an integer in [1, {MAX_SIDE}], got {image_size!r}")
    base = Path(root) if root else None
    if base is not None and not base.is_dir():
        raise DataError(f"dataset listfile: root {str(base)!r} is not a directory")
    return base


def _fixed_parts(ranges: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The rows of each part given by train / database / test (/ val) lists."""
    parts = {"train": ranges["train_list"], "database": ranges["database_list"], "query": ranges["test_list"]}
    if "val_list" in ranges:
        parts["val"] = ranges["val_list"]
    else:  # a seeded tenth of the training list validates (model selection never sees the test list)
        tr = np.random.default_rng(seed).permutation(ranges["train_list"])
        n_val = max(1, len(tr) // 10) if len(tr) >= 3 else 0
        parts["val"], parts["train"] = np.sort(tr[:n_val]), np.sort(tr[n_val:])
    return parts


def _decode_all(src: ImageSource) -> torch.Tensor:
    """Every image of a source decoded into one tensor (data.stream: false)."""
    c, (h, w) = src.channels, src.size
    if len(src) * c * h * w > MAX_VALUES:
        raise DataError(
            f"dataset listfile: {len(src)} images of {c}x{h}x{w} are more "
            f"than {MAX_VALUES} values; stream them (data.stream: true)"
        )
    images = torch.empty(tuple(src.shape))  # filled in place: no list of per-image tensors beside it
    chunks = [list(range(i, min(len(src), i + STATS_BATCH))) for i in range(0, len(src), STATS_BATCH)]
    for rows, xb in zip(chunks, src.loader(chunks)):
        images[rows[0] : rows[0] + len(rows)] = xb
    return images
