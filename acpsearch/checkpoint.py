"""Checkpoint format shared by train / prune / export.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(weights_only=True)`` and never unpickles code:

    {"format": "acpsearch", "version": 1,
     "model": {"zoo": "resnet20", "kwargs": {...}}            # or {"factory": "pkg.mod:fn", "kwargs": {...}}
     "input_shape": [1, C, H, W],                              # example input used for tracing/pruning
     "pruning": None | <pruning record, see acpsearch.pruning>,
     "state_dict": {...},
     "meta": {...}}                                           # free-form: dataset, bits, loss, metrics ...

`load_model` rebuilds the architecture from "model", replays "pruning" (if any) on it, then loads
the state dict, so pruned models reload without pickled modules.
"""
from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch.errors import CheckpointError, SpecError

FORMAT = "acpsearch"
VERSION = 1


def build_from_config(cfg: dict[str, Any]) -> nn.Module:
    """Build an (unpruned) architecture from a checkpoint's "model" entry."""
    kwargs = dict(cfg.get("kwargs") or {})
    if "zoo" in cfg:
        from acpsearch.hashing import create_model

        return create_model(cfg["zoo"], **kwargs)
    if "factory" in cfg:
        fn = import_factory(cfg["factory"])
        try:
            model = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's factory failing is bad input naming it
            first = (str(exc).splitlines() or [""])[0]
            raise SpecError(f"model.factory: {cfg['factory']!r} raised {type(exc).__name__}: {first[:160]}") from None
        if not isinstance(model, nn.Module):
            raise SpecError(f"model.factory: {cfg['factory']!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise CheckpointError("checkpoint: 'model' entry names neither 'zoo' nor 'factory'")


def import_factory(path: str):
    """Resolve "package.module:function" to a callable; a failing import is a user error."""
    if ":" not in path:
        raise SpecError(f"model.factory: {path!r} is not of the form 'package.module:function'")
    mod_name, fn_name = path.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's factory path
        raise SpecError(f"model.factory: cannot import module {mod_name!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise SpecError(f"model.factory: module {mod_name!r} has no callable {fn_name!r}")
    return fn


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_cfg: dict[str, Any],
    input_shape: list[int] | tuple[int, ...],
    pruning: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a weights-only checkpoint (state dict + config + optional pruning record)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_cfg,
        "input_shape": [int(v) for v in input_shape],
        "pruning": pruning,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a Python file: a failed write's OSError (ENOSPC, EFBIG) stays attached
            torch.save(ckpt, f)
        tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, EFBIG, Ctrl-C) leaves no partial file
        raise
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with weights_only=True; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol warnings on foreign files are noise here
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes fail the unpickler in arbitrary ways
        raise CheckpointError(_why_unloadable(path, exc)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: not an acpsearch checkpoint (foreign format)")
    for key in ("model", "input_shape", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r}: missing entry {key!r}")
    return ckpt


# Globals a weights-only torch file may name (tensor rebuilders, OrderedDict); anything else called
# while unpickling would be code from the file.
_DATA_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")
_CALL_OPS = {"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"}


def _pickle_code_globals(path: Path, limit: int = 64 << 20) -> list[str]:
    """Callables a plain pickle file would import and call (read with pickletools, never run)."""
    import pickletools

    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return []
    names: list[str] = []
    strings: list[str] = []
    called: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and op.name.endswith(("UNICODE", "STRING")):
                strings.append(arg)
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            if op.name in _CALL_OPS and names:
                called.extend(n for n in names if not n.startswith(_DATA_GLOBALS) and n not in called)
    except Exception:  # noqa: BLE001 - truncated / not a pickle: report what was seen so far
        pass
    return called


def _torch_detail(text: str) -> str:
    """The one informative line of torch.load's multi-paragraph weights-only error."""
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error:")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(skip):
            return line
    return ""


def _why_unloadable(path: Path, exc: Exception) -> str:
    """One line: refused (the file would run code) or corrupt / not a torch checkpoint."""
    where = f"checkpoint {str(path)!r}"
    text = str(exc)
    code = re.findall(r"GLOBAL ([\w.]+)", text)
    if not code and isinstance(exc, pickle.UnpicklingError) and not zipfile.is_zipfile(path):
        code = _pickle_code_globals(path)
    if code:
        return (f"{where}: refused, loading it would run code ({', '.join(code[:3])}); "
                "only weights-only checkpoints written by acpsearch are loaded")
    detail = _torch_detail(text) or ("empty or truncated file" if isinstance(exc, EOFError) else "")
    return f"{where}: corrupt or not a torch checkpoint ({type(exc).__name__}{': ' + detail[:160] if detail else ''})"


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the module a checkpoint dict describes (architecture, pruning replay, weights)."""
    model = build_from_config(ckpt["model"])
    if ckpt.get("pruning"):
        from acpsearch.pruning import apply_record

        example = torch.zeros(*ckpt["input_shape"])
        model = apply_record(model, ckpt["pruning"], example)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{source}: weights do not match the architecture ({first[:200]})") from None
    model.eval()
    return model


def load_model(path: str | Path) -> nn.Module:
    """Load any checkpoint written by train / prune / export as a ready module (eval mode)."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, source=f"checkpoint {str(path)!r}")
