"""Reading an exported file back in the runtime that will run it (torch.jit, onnxruntime,
torch.export, or acpsearch itself), and `verify`, which compares its outputs and codes with the
eager model's."""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch._imports import try_import
from acpsearch.checkpoint import load_model, read_checkpoint
from acpsearch.errors import AcpError, SpecError
from acpsearch.export.formats import (
    DEFAULT_ATOL,
    META_KEY,
    first_line,
    metadata_from_checkpoint,
    quiet,
    verification_inputs,
)


def detect_format(path: str | os.PathLike[str]) -> str:
    """acpsearch | torchscript | pt2 (zip archives, told apart by their members) | onnx."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("archive_format") for n in names):
            return "pt2"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "acpsearch"
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), varint: an ONNX ModelProto
        return "onnx"
    raise SpecError(f"file {str(path)!r}: not a TorchScript, pt2, ONNX or acpsearch file")


def load_exported(
    path: str | os.PathLike[str], fmt: str | None = None, threads: int | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], str]:
    """(run, metadata, format) for an exported file: `run` maps a float tensor batch to the output
    tensor in the file's own runtime (torch.jit / onnxruntime / torch.export)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    try:
        return _load_exported(path, fmt, threads)
    except AcpError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails its runtime's loader in its own way
        raise SpecError(
            f"file {str(path)!r}: cannot load it as {fmt} ({type(exc).__name__}: {first_line(exc, 160)})"
        ) from None


def _load_exported(
    path: Path, fmt: str, threads: int | None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], str]:
    if fmt == "torchscript":
        extra = {META_KEY: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)  # type: ignore[no-untyped-call]
        m.eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out: torch.Tensor = m(x)
            return out

        return run, json.loads(extra[META_KEY] or "{}"), fmt
    if fmt == "pt2":
        extra = {META_KEY: ""}
        with quiet():
            ep = torch.export.load(str(path), extra_files=extra)
        mod = ep.module()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out: torch.Tensor = mod(x)
            return out

        return run, json.loads(extra[META_KEY] or "{}"), fmt
    if fmt == "onnx":
        with try_import("export", "--format onnx"):
            import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        meta = sess.get_modelmeta().custom_metadata_map.get(META_KEY, "{}")

        def run(x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])
            return out

        return run, json.loads(meta), fmt
    if fmt == "acpsearch":
        model = load_model(path)
        ckpt = read_checkpoint(path)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out: torch.Tensor = model(x)
            return out

        return run, {"format": "acpsearch", **metadata_from_checkpoint(ckpt)}, fmt
    raise SpecError(f"file {str(path)!r}: unknown format {fmt!r}")


def compare(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, int]:
    """(max abs diff, number of code bits whose sign differs)."""
    ref, got = ref.detach().float(), got.detach().float()
    if ref.shape != got.shape:
        return float("inf"), int(ref.numel())
    diff = float((ref - got).abs().max()) if ref.numel() else 0.0
    return diff, int((torch.sign(ref) != torch.sign(got)).sum())


def verify(
    run: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    example_input: torch.Tensor,
    fmt: str,
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """Run the exported file and the eager model on the verification batches; SpecError naming
    --format unless max abs diff <= atol and every code bit (sign) is identical."""
    worst, flipped, bits = 0.0, 0, 0
    for x in verification_inputs(example_input):
        with torch.no_grad():
            ref = model(x)
        try:
            got = run(x)
        except Exception as exc:  # noqa: BLE001 - the runtime refusing the file is a failed verification
            raise SpecError(
                f"--format {fmt}: verification failed: the exported file does not run on a batch of "
                f"{x.shape[0]} ({first_line(exc, 160)})"
            ) from None
        d, f = compare(ref, got)
        worst, flipped, bits = max(worst, d), flipped + f, bits + ref.numel()
    res = {"max_abs_diff": worst, "atol": atol, "code_bits_compared": bits, "code_bits_differing": flipped}
    if not worst <= atol or flipped:
        raise SpecError(
            f"--format {fmt}: verification failed: outputs differ from PyTorch by up to {worst:.3g} "
            f"(allowed {atol:g}), {flipped} of {bits} code bits differ; nothing written"
        )
    return res
