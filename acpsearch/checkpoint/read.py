"""Reading checkpoint files: always ``torch.load(weights_only=True)``, never an unpickled module.
An acpsearch checkpoint is validated as it is read; a plain state dict (what
``torch.save(model.state_dict(), path)`` writes) is recognised too; a file that would run code or is
not a torch file is refused in one line that says which."""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from acpsearch.checkpoint.validate import FORMAT, validate_checkpoint, validate_state_dict
from acpsearch.errors import CheckpointError


def _load_weights_only(path: Path) -> Any:
    """torch.load(weights_only=True) of an existing file; refused / corrupt is one CheckpointError line."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol warnings on foreign files are noise here
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes fail the unpickler in arbitrary ways
        raise CheckpointError(_why_unloadable(path, exc)) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with weights_only=True; refuse anything else."""
    path = Path(path)
    ckpt = _load_weights_only(path)
    return _as_checkpoint(ckpt, path)


def _as_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: not an acpsearch checkpoint (foreign format)")
    for key in ("model", "input_shape", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r}: missing entry {key!r}")
    validate_checkpoint(ckpt, f"checkpoint {str(path)!r}")
    return ckpt


# --- plain state dicts (what `torch.save(model.state_dict(), path)` writes) -----------------------
STATE_DICT_WRAPPERS = ("state_dict", "model")  # {'state_dict': sd} (Lightning and co), {'model': sd}


def _tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def plain_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor] | None:
    """The state dict inside a loaded foreign file: the mapping itself, or its 'state_dict' / 'model'
    entry, with a DataParallel 'module.' prefix removed; None when it holds none. Checked like an
    acpsearch checkpoint's state dict (real tensors only)."""
    if not isinstance(obj, dict) or obj.get("format") == FORMAT:
        return None
    sd = (
        obj
        if _tensor_mapping(obj)
        else next((obj[k] for k in STATE_DICT_WRAPPERS if _tensor_mapping(obj.get(k))), None)
    )
    if sd is None:
        return None
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    validate_state_dict(sd, where)
    return dict(sd)


def read_weights(path: str | Path) -> tuple[str, dict[str, Any]]:
    """("acpsearch", checkpoint) for acpsearch's format, ("state_dict", {name: tensor}) for a plain
    state dict (or one wrapped in {'state_dict': ...} / {'model': ...}); anything else is refused
    as foreign, in one line. Loaded with weights_only=True either way."""
    path = Path(path)
    obj = _load_weights_only(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "acpsearch", _as_checkpoint(obj, path)
    sd = plain_state_dict(obj, f"checkpoint {str(path)!r}")
    if sd is None:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: not an acpsearch checkpoint (foreign format) nor a "
            "state dict (a mapping of parameter names to tensors, as "
            "torch.save(model.state_dict(), path) writes)"
        )
    return "state_dict", sd


# Globals a weights-only torch file may name (tensor rebuilders, OrderedDict); anything else called
# while unpickling would be code from the file.
_DATA_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")
_CALL_OPS = {"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"}


def _pickle_code_globals(path: Path, limit: int = 64 << 20) -> list[str]:
    """Callables a plain pickle file would import and call (read with pickletools, never run)."""
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
        return (
            f"{where}: refused, loading it would run code ({', '.join(code[:3])}); "
            "only weights-only checkpoints written by acpsearch are loaded"
        )
    detail = _torch_detail(text) or ("empty or truncated file" if isinstance(exc, EOFError) else "")
    return f"{where}: corrupt or not a torch checkpoint ({type(exc).__name__}{': ' + detail[:160] if detail else ''})"
