"""The export formats, the JSON metadata document every exported file carries, the batches an
export is verified on, and the helpers the writers and readers share (first line of an exporter's
error, the OSError behind a failed write, silencing the exporters)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from acpsearch.errors import SpecError

FORMATS = ("acpsearch", "torchscript", "onnx", "pt2")
META_KEY = "acpsearch.json"  # extra file (TorchScript, pt2) / metadata_props key (ONNX)
DEFAULT_ATOL = 1e-4
ONNX_OPSET = 18  # dynamo exporter; the legacy exporter uses 17
ONNX_INPUT, ONNX_OUTPUT = "input", "output"
VERIFY_BATCH = 8


def check_format(fmt: Any, flag: str = "--format") -> str:
    """`fmt` lower-cased if it is one of FORMATS, else one SpecError line naming `flag` and the choices."""
    if not isinstance(fmt, str) or fmt.strip().lower() not in FORMATS:
        shown = repr(fmt) if len(repr(fmt)) <= 60 else repr(fmt)[:57] + "..."
        raise SpecError(f"{flag}: must be one of {', '.join(FORMATS)}, got {shown}")
    return fmt.strip().lower()


def _version() -> str:
    from acpsearch import __version__

    return __version__


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "The above exception")):
            # the dynamo exporter colours its messages
            return "".join(ch for ch in line if ch.isprintable()).replace("[96m", "").replace("[0m", "")[:limit]
    return type(exc).__name__


def write_error(exc: BaseException) -> OSError | None:
    """The OSError (EFBIG, ENOSPC, ...) behind an exporter's failure, if the failure was a write."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
    """`example` with its batch axis set to n (the first item repeated): a batch of 1 would let
    torch.export / tracing specialise the batch size to 1."""
    return example[:1].expand(n, *example.shape[1:]).contiguous()


def verification_inputs(example_input: torch.Tensor) -> list[torch.Tensor]:
    """The batches an export is checked on: the example input and a seeded N(0, 1) batch of 8
    (inputs are normalised images, so N(0, 1) exercises the sign of every code bit)."""
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn((VERIFY_BATCH, *example_input.shape[1:]), generator=gen, dtype=example_input.dtype)
    return [example_input.detach().clone(), rand]


def export_metadata(
    model: nn.Module, example_input: torch.Tensor, fmt: str, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON document stored with an exported file: the computed fields (code length from a
    forward pass, input shape, versions) plus `meta` (e.g. ``source``, ``preprocess``, ``dataset``)."""
    with torch.no_grad():
        out = model(example_input)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else ""
        raise SpecError(
            f"--format {fmt}: the model must return one tensor of shape (batch, bits), got {type(out).__name__}{shape}"
        )
    doc: dict[str, Any] = {
        "format": fmt,
        "code_length": int(out.shape[1]),
        "code": "sign(output): output > 0 -> bit 1, output < 0 -> bit 0 "
        "(the network returns the raw hash-layer output)",
        "input_shape": [1, *[int(v) for v in example_input.shape[1:]]],
        "batch_axis": 0,
        "dynamic_batch": True,
        "dtype": str(example_input.dtype).replace("torch.", ""),
        "acpsearch_version": _version(),
        "torch_version": torch.__version__,
    }
    if fmt == "onnx":
        doc.update({"input_name": ONNX_INPUT, "output_name": ONNX_OUTPUT})
    if (meta or {}).get("task") == "classification":  # a classifier's output is class logits, not a code
        del doc["code_length"], doc["code"]
        doc.update({"classes": int(out.shape[1]), "output": "class logits (the largest is the prediction)"})
    for key, value in (meta or {}).items():
        if key not in ("format", "code_length", "classes", "input_shape"):  # computed fields are the truth
            doc[key] = value
    try:
        json.dumps(doc)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"--format {fmt}: metadata is not JSON ({exc})") from None
    return doc


def metadata_from_checkpoint(ckpt: dict[str, Any], source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `meta` argument of export_model for a model loaded from an acpsearch checkpoint: its
    ``meta.preprocess`` (mean / std / input_shape, when the checkpoint has it), dataset, pruning
    cost, and where it came from (`source`: study, trial, checkpoint)."""
    cmeta = ckpt.get("meta") or {}
    doc: dict[str, Any] = {"source": dict(source or {})}
    if cmeta.get("preprocess") is not None:
        doc["preprocess"] = cmeta["preprocess"]
    for key in ("dataset", "cost", "base_cost", "task"):
        if cmeta.get(key) is not None:
            doc[key] = cmeta[key]
    doc["pruned"] = bool(ckpt.get("pruning"))
    doc["checkpoint_input_shape"] = list(ckpt.get("input_shape") or [])
    plain: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return plain


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the exporters (progress lines, logging, warnings, C++ messages on fd 1/2) while they
    run; what they said is kept for an error message."""
    said = io.StringIO()
    saved_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    fds: list[tuple[int, int]] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                try:
                    if stream is not None:
                        stream.flush()
                except (OSError, ValueError):
                    pass
            for fd in (1, 2):
                try:
                    fds.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    pass
            with warnings.catch_warnings(), contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                warnings.simplefilter("ignore")
                yield said
        finally:
            for fd, saved in fds:
                try:
                    os.dup2(saved, fd)
                finally:
                    os.close(saved)
            logging.disable(saved_disable)
