"""Export a (pruned) hash network for deployment, where acpsearch is not installed.

Formats (`FORMATS`):

* ``acpsearch``   - acpsearch's own checkpoint (weights-only state dict + pruning record); loading it
  needs acpsearch (``acpsearch.load_model``).
* ``torchscript`` - ``torch.jit.script`` (``torch.jit.trace`` on the example input when scripting
  fails; the report says which). Loads with ``torch.jit.load`` alone.
* ``onnx``        - ``torch.onnx.export`` with a dynamic batch axis (the dynamo exporter, opset 18;
  the legacy TorchScript-based exporter, opset 17, when dynamo cannot capture the model). Runs in
  onnxruntime.
* ``pt2``         - ``torch.export.export`` + ``torch.export.save`` (dynamic batch axis); loads with
  ``torch.export.load(...).module()``.

Every non-acpsearch file carries the same JSON document (`export_metadata`): code length, input
shape, preprocessing, source study / trial / checkpoint, acpsearch and torch versions. It is the
extra file ``acpsearch.json`` of a TorchScript or pt2 archive and the ``metadata_props`` entry
``acpsearch.json`` of an ONNX model.

After writing, the file is loaded back in its own runtime and run on two batches (the example input
and a seeded N(0, 1) batch of 8); the outputs must agree with the eager PyTorch model within `atol`
(max abs diff, default 1e-4) and give identical codes (signs). A failure is one SpecError line
naming --format, and nothing is left at the target: the file is written through
acpsearch.outputs.atomic_out (temporary file + rename).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch.errors import AcpError, SpecError

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
    try:
        from acpsearch import __version__

        return __version__
    except ImportError:  # pragma: no cover - acpsearch is importable here by definition
        return "unknown"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "The above exception")):
            # the dynamo exporter colours its messages
            return "".join(ch for ch in line if ch.isprintable()).replace("[96m", "").replace("[0m", "")[:limit]
    return type(exc).__name__


def _write_error(exc: BaseException) -> OSError | None:
    """The OSError (EFBIG, ENOSPC, ...) behind an exporter's failure, if the failure was a write."""
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
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
    for key, value in (meta or {}).items():
        if key not in ("format", "code_length", "input_shape"):  # computed fields are the truth
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
    for key in ("dataset", "cost", "base_cost"):
        if cmeta.get(key) is not None:
            doc[key] = cmeta[key]
    doc["pruned"] = bool(ckpt.get("pruning"))
    doc["checkpoint_input_shape"] = list(ckpt.get("input_shape") or [])
    return json.loads(json.dumps(doc, default=str))


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
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


# --- writers -------------------------------------------------------------------------------------
def _write_bytes(tmp: Path, buf: io.BytesIO) -> None:
    """torch's archive writer aborts the process (std::terminate) when a write to the file fails
    (EFBIG, ENOSPC): archives are built in memory and written here, where a failure is an OSError."""
    with open(tmp, "wb") as f:
        f.write(buf.getbuffer())


def _write_torchscript(model: nn.Module, tmp: Path, example: torch.Tensor, doc: dict[str, Any]) -> str:
    errors = []
    scripted = None
    with _quiet():
        try:
            scripted, how = torch.jit.script(model), "torch.jit.script"
        except Exception as exc:  # noqa: BLE001 - scripting fails on unscriptable Python: trace instead
            errors.append(f"script: {_first_line(exc, 120)}")
        if scripted is None:
            try:
                scripted, how = torch.jit.trace(model, (_batch_of(example, 2),), check_trace=False), "torch.jit.trace"
            except Exception as exc:  # noqa: BLE001
                errors.append(f"trace: {_first_line(exc, 120)}")
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


def _write_onnx(model: nn.Module, tmp: Path, example: torch.Tensor, doc: dict[str, Any], exporter: str = "auto") -> str:
    try:
        import onnx
    except ImportError:
        raise SpecError(
            "--format onnx: needs the packages onnx and onnxruntime (pip install 'acpsearch[export]')"
        ) from None
    ex = (_batch_of(example, 2),)
    errors = []
    how = None
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet():
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
            if _write_error(exc) is not None:
                raise _write_error(exc) from None  # a full disk is not a reason to try another exporter
            errors.append(f"dynamo: {_first_line(exc, 120)}")
    if how is None and exporter in ("auto", "legacy"):
        try:
            with _quiet():
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
            if _write_error(exc) is not None:
                raise _write_error(exc) from None
            errors.append(f"legacy: {_first_line(exc, 120)}")
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


def _write_pt2(model: nn.Module, tmp: Path, example: torch.Tensor, doc: dict[str, Any]) -> str:
    try:
        with _quiet():
            ep = torch.export.export(model, (_batch_of(example, 2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow etc.
        raise SpecError(f"--format pt2: torch.export cannot capture the model ({_first_line(exc)})") from None
    doc["exporter"] = "torch.export.export"
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={META_KEY: json.dumps(doc)})
    _write_bytes(tmp, buf)
    return "torch.export.export"


# --- readers (the runtimes that will run the file) -----------------------------------------------
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
            f"file {str(path)!r}: cannot load it as {fmt} ({type(exc).__name__}: {_first_line(exc, 160)})"
        ) from None


def _load_exported(
    path: Path, fmt: str, threads: int | None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], str]:
    if fmt == "torchscript":
        extra = {META_KEY: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        m.eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return m(x)

        return run, json.loads(extra[META_KEY] or "{}"), fmt
    if fmt == "pt2":
        extra = {META_KEY: ""}
        with _quiet():
            ep = torch.export.load(str(path), extra_files=extra)
        mod = ep.module()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return mod(x)

        return run, json.loads(extra[META_KEY] or "{}"), fmt
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise SpecError("--format onnx: needs the package onnxruntime (pip install 'acpsearch[export]')") from None
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        meta = sess.get_modelmeta().custom_metadata_map.get(META_KEY, "{}")

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])

        return run, json.loads(meta), fmt
    if fmt == "acpsearch":
        from acpsearch.checkpoint import load_model, read_checkpoint

        model = load_model(path)
        ckpt = read_checkpoint(path)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x)

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
                f"{x.shape[0]} ({_first_line(exc, 160)})"
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
    from acpsearch.outputs import atomic_out

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
        from acpsearch.checkpoint import save_checkpoint

        with atomic_out(path, flag) as tmp:
            save_checkpoint(tmp, model, model_cfg, [1, *example.shape[1:]], pruning=pruning, meta=meta)
            from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint

            reloaded = model_from_checkpoint(read_checkpoint(tmp), source=f"--format acpsearch: {str(path)!r}")

            def run(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return reloaded(x)

            check = verify(run, model, example, fmt, atol)
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
                how = _write_torchscript(model, tmp, example, doc)
            elif fmt == "onnx":
                how = _write_onnx(model, tmp, example, doc, onnx_exporter)
            else:
                how = _write_pt2(model, tmp, example, doc)
            run, stored, _ = load_exported(tmp, fmt)
        except AcpError:
            raise
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter's own failure: name the format, not --out
            if _write_error(exc) is not None:  # a failed write (EFBIG, ENOSPC): atomic_out names --out
                raise _write_error(exc) from None
            raise SpecError(f"--format {fmt}: export failed ({type(exc).__name__}: {_first_line(exc, 160)})") from None
        if stored != json.loads(json.dumps(doc)):
            raise SpecError(f"--format {fmt}: the metadata read back differs from what was written")
        check = verify(run, model, example, fmt, atol)
    return {"format": fmt, "out": str(path), "exporter": how, "verification": check, "metadata": doc}


# --- latency -------------------------------------------------------------------------------------
def benchmark(
    runners: dict[str, Callable[[torch.Tensor], Any]],
    x: torch.Tensor,
    rounds: int = 50,
    warmup: int = 5,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    """Median latency (ms) of each runner on `x`, one intra-op thread, after `warmup` calls each.
    Rounds are interleaved and the order alternates every round (A B, B A, ...), so drift and noise
    on a shared machine hit every runner alike instead of deciding the order."""
    if rounds < 1:
        raise SpecError(f"--rounds: must be >= 1, got {rounds}")
    if warmup < 0:
        raise SpecError(f"--warmup: must be >= 0, got {warmup}")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        names = list(runners)
        with torch.no_grad():
            for name in names:
                for _ in range(warmup):
                    runners[name](x)
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    t0 = time.perf_counter()
                    runners[name](x)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(prev)
    return {
        n: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "rounds": len(t)}
        for n, t in times.items()
    }


def bench_file(
    path: str | os.PathLike[str],
    eager: nn.Module | None = None,
    batch: int = 1,
    rounds: int = 50,
    warmup: int = 5,
    input_shape: list[int] | None = None,
) -> dict[str, Any]:
    """Latency of an exported file in its own runtime (one thread), next to `eager` when given."""
    if batch < 1:
        raise SpecError(f"--batch: must be >= 1, got {batch}")
    run, meta, fmt = load_exported(path, threads=1)
    shape = input_shape or meta.get("input_shape") or meta.get("checkpoint_input_shape")
    if not shape:
        raise SpecError(f"file {str(path)!r}: no input_shape in its metadata; give --checkpoint")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *[int(v) for v in shape[1:]]), generator=gen)
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}
    if eager is not None:
        eager = eager.eval()
        runners["eager"] = eager
    runners[fmt] = run
    res = benchmark(runners, x, rounds=rounds, warmup=warmup)
    return {
        "file": str(path),
        "format": fmt,
        "batch": batch,
        "threads": 1,
        "rounds": rounds,
        "warmup": warmup,
        "runtime": {
            "torchscript": "torch.jit",
            "onnx": "onnxruntime (CPUExecutionProvider)",
            "pt2": "torch.export (ExportedProgram.module())",
            "acpsearch": "eager PyTorch",
        }[fmt],
        "latency": res,
    }
