"""Writing an exported file: one writer per format (TorchScript, ONNX, pt2), and `export_model`,
which writes through acpsearch.outputs.atomic_out and verifies the file in its own runtime before
it is moved into place."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch._imports import try_import
from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from acpsearch.errors import AcpError, SpecError
from acpsearch.export.formats import (
    DEFAULT_ATOL,
    META_KEY,
    ONNX_INPUT,
    ONNX_OPSET,
    ONNX_OUTPUT,
    batch_of,
    check_format,
    export_metadata,
    first_line,
    quiet,
    write_error,
)
from acpsearch.export.runtime import load_exported, verify
from acpsearch.outputs import atomic_out


def _write_bytes(tmp: Path, buf: io.BytesIO) -> None:
    """torch's archive writer aborts the process (std::terminate) when a write to the file fails
    (EFBIG, ENOSPC): archives are built in memory and written here, where a failure is an OSError."""
    with open(tmp, "wb") as f:
        f.write(buf.getbuffer())


def write_torchscript(model: nn.Module, tmp: Path, example: torch.Tensor, doc: dict[str, Any]) -> str:
    errors = []
    scripted = None
    with quiet():
        try:
            scripted, how = torch.jit.script(model), "torch.jit.script"
        except Exception as exc:  # noqa: BLE001 - scripting fails on unscriptable Python: trace instead
            errors.append(f"script: {first_line(exc, 120)}")
        if scripted is None:
            try:
                scripted, how = torch.jit.trace(model, (batch_of(example, 2),), check_trace=False), "torch.jit.trace"  # type: ignore[no-untyped-call]
            except Exception as exc:  # noqa: BLE001
                errors.append(f"trace: {first_line(exc, 120)}")
    if scripted is None:
        raise SpecError(f"--format torchscript: cannot convert the model ({'; '.join(errors)})")
    doc["exporter"] = how
    if errors:
        doc["exporter_note"] = errors[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; it still works
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={META_KEY: json.dumps(doc)})
    _write_bytes(tmp, buf)
    return how


def write_onnx(model: nn.Module, tmp: Path, example: torch.Tensor, doc: dict[str, Any], exporter: str = "auto") -> str:
    with try_import("export", "--format onnx"):
        import onnx
    ex = (batch_of(example, 2),)
    errors = []
    how = None
    if exporter in ("auto", "dynamo"):
        try:
            with quiet():
                torch.onnx.export(
                    model,
                    ex,
                    str(tmp),
                    dynamo=True,
                    opset_version=ONNX_OPSET,
                    verbose=False,
                    input_names=[ONNX_INPUT],
                    output_names=[ONNX_OUTPUT],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    external_data=False,
                )
            how = f"torch.onnx.export(dynamo=True, opset {ONNX_OPSET})"
        except Exception as exc:  # noqa: BLE001 - dynamo cannot capture every model: try the legacy path
            err = write_error(exc)
            if err is not None:  # a failed write (EFBIG, ENOSPC, a full disk): not the exporter's failure
                raise err from None
            errors.append(f"dynamo: {first_line(exc, 120)}")
    if how is None and exporter in ("auto", "legacy"):
        try:
            with quiet():
                torch.onnx.export(
                    model,
                    ex,
                    str(tmp),
                    dynamo=False,
                    opset_version=17,
                    input_names=[ONNX_INPUT],
                    output_names=[ONNX_OUTPUT],
                    dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                )
            how = "torch.onnx.export(dynamo=False, opset 17)"
        except Exception as exc:  # noqa: BLE001
            err = write_error(exc)
            if err is not None:  # a failed write (EFBIG, ENOSPC, a full disk): not the exporter's failure
                raise err from None
            errors.append(f"legacy: {first_line(exc, 120)}")
    if how is None:
        raise SpecError(f"--format onnx: cannot export the model ({'; '.join(errors)})")
    doc["exporter"] = how
    if errors:
        doc["exporter_note"] = errors[0]
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(doc)
    proto.producer_name = "acpsearch"
    onnx.save(proto, str(tmp))
    return how


def write_pt2(model: nn.Module, tmp: Path, example: torch.Tensor, doc: dict[str, Any]) -> str:
    try:
        with quiet():
            ep = torch.export.export(model, (batch_of(example, 2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow etc.
        raise SpecError(f"--format pt2: torch.export cannot capture the model ({first_line(exc)})") from None
    doc["exporter"] = "torch.export.export"
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={META_KEY: json.dumps(doc)})
    _write_bytes(tmp, buf)
    return "torch.export.export"


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: str = "torchscript",
    example_input: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
    *,
    atol: float = DEFAULT_ATOL,
    onnx_exporter: str = "auto",
    model_cfg: dict[str, Any] | None = None,
    pruning: dict[str, Any] | None = None,
    flag: str = "--out",
) -> dict[str, Any]:
    """Write `model` to `path` in `format` (see FORMATS), verified in its own runtime.

    `example_input`: a float tensor (batch, C, H, W); the batch axis is exported dynamic. `meta`:
    extra JSON-able metadata stored in the file (see metadata_from_checkpoint). ``acpsearch`` needs
    `model_cfg` (and `pruning` for a pruned model), as acpsearch.save_checkpoint does.
    The model is put in eval mode on the CPU (exported files run on the CPU runtimes).
    Returns {"format", "out", "exporter", "verification": {max_abs_diff, ...}, "metadata"}.
    Bad input and failed verification are SpecError lines naming --format; nothing is left at `path`."""
    fmt = check_format(format)
    if example_input is None or not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise SpecError(
            f"--format {fmt}: example_input must be a tensor with a batch axis, e.g. torch.zeros(1, 3, 32, 32)"
        )
    if onnx_exporter not in ("auto", "dynamo", "legacy"):
        raise SpecError(f"onnx_exporter: must be auto, dynamo or legacy, got {onnx_exporter!r}")
    model = model.eval().cpu()
    example = example_input.detach().cpu().float()
    if fmt == "acpsearch":
        if model_cfg is None:
            raise SpecError(
                "--format acpsearch: needs model_cfg (the checkpoint's 'model' entry: zoo or factory "
                "and kwargs); use acpsearch.save_checkpoint / save_pruned"
            )
        with atomic_out(path, flag) as tmp:
            save_checkpoint(tmp, model, model_cfg, [1, *example.shape[1:]], pruning=pruning, meta=meta)
            reloaded = model_from_checkpoint(read_checkpoint(tmp), source=f"--format acpsearch: {str(path)!r}")

            def run_reloaded(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    out: torch.Tensor = reloaded(x)
                return out

            check = verify(run_reloaded, model, example, fmt, atol)
        return {
            "format": fmt,
            "out": str(path),
            "exporter": "acpsearch.save_checkpoint",
            "verification": check,
            "metadata": dict(meta or {}),
        }
    doc = export_metadata(model, example, fmt, meta)
    with atomic_out(path, flag) as tmp:
        try:
            if fmt == "torchscript":
                how = write_torchscript(model, tmp, example, doc)
            elif fmt == "onnx":
                how = write_onnx(model, tmp, example, doc, onnx_exporter)
            else:
                how = write_pt2(model, tmp, example, doc)
            run, stored, _ = load_exported(tmp, fmt)
        except AcpError:
            raise
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter's own failure: name the format, not --out
            err = write_error(exc)
            if err is not None:  # a failed write (EFBIG, ENOSPC, a full disk): not the exporter's failure
                raise err from None
            raise SpecError(f"--format {fmt}: export failed ({type(exc).__name__}: {first_line(exc, 160)})") from None
        if stored != json.loads(json.dumps(doc)):
            raise SpecError(f"--format {fmt}: the metadata read back differs from what was written")
        check = verify(run, model, example, fmt, atol)
    return {"format": fmt, "out": str(path), "exporter": how, "verification": check, "metadata": doc}
