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
import math
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch.errors import AcpError, CheckpointError, SpecError
from acpsearch.pruning import PruningStrategy, make_record

FORMAT = "acpsearch"
VERSION = 1


# Bounds checked BEFORE anything is built or allocated (a crafted checkpoint must not ask for 256 GB).
MAX_BITS = 4096
MAX_KWARG = 100_000  # |int| / |float| of a model kwarg
MAX_DIM = 4096  # channels / height / width of input_shape
MAX_INPUT_ELEMENTS = 1 << 24  # elements of the example input
MAX_MODEL_ELEMENTS = 1 << 28  # parameters + buffers of a zoo model (1 GiB of float32)
_FACTORY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def build_from_config(cfg: dict[str, Any], allow_factories: Any = None, source: str = "model") -> nn.Module:
    """Build an (unpruned) architecture from a checkpoint's "model" entry.

    A zoo name is always built; a factory only when its module is allowed (`allow_factories`: a
    FactoryPolicy or module names, plus $ACPSEARCH_ALLOW_FACTORIES; see acpsearch.trust). The check
    comes before the import: importing a module runs its code."""
    from acpsearch.trust import FactoryPolicy

    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: entry 'model' must be a mapping, got {type(cfg).__name__}")
    kwargs = dict(cfg.get("kwargs") or {})
    if "zoo" in cfg:
        from acpsearch.hashing import create_model

        _check_zoo_size(cfg["zoo"], kwargs, source)
        try:
            return create_model(cfg["zoo"], **kwargs)
        except AcpError:
            raise
        except Exception as exc:  # noqa: BLE001 - kwargs the zoo network rejects are bad input
            first = (str(exc).splitlines() or [""])[0]
            raise CheckpointError(
                f"{source}: model.kwargs: cannot build zoo model {cfg['zoo']!r} ({type(exc).__name__}: {first[:160]})"
            ) from None
    if "factory" in cfg:
        policy = FactoryPolicy.coerce(allow_factories)
        policy.check(cfg["factory"], source)
        fn = import_factory(cfg["factory"], search=policy.paths)
        try:
            model = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's factory failing is bad input naming it
            first = (str(exc).splitlines() or [""])[0]
            raise SpecError(f"model.factory: {cfg['factory']!r} raised {type(exc).__name__}: {first[:160]}") from None
        if not isinstance(model, nn.Module):
            raise SpecError(f"model.factory: {cfg['factory']!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise CheckpointError(f"{source}: 'model' entry names neither 'zoo' nor 'factory'")


def import_factory(path: str, search: Any = ()):
    """Resolve "package.module:function" to a callable; a failing import is a user error.
    The module is looked for in `search` (the spec's model.path, by default the spec file's
    directory), the current working directory, then sys.path (PYTHONPATH); afterwards those
    directories stay at the end of sys.path, so the module's later imports of its neighbours work.
    Importing runs the module's code: callers check the module against the FactoryPolicy first."""
    import os
    import sys

    if ":" not in path:
        raise SpecError(f"model.factory: {path!r} is not of the form 'package.module:function'")
    mod_name, fn_name = path.split(":", 1)
    dirs = list(dict.fromkeys(str(d) for d in (*(search or ()), os.getcwd()) if d))
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = dirs  # first while the factory's module is imported ...
    importlib.invalidate_caches()  # a module written after the interpreter started
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (mod_name == missing or mod_name.startswith(missing + ".")):
            looked = ", ".join(repr(d) for d in dict.fromkeys(dirs))
            raise SpecError(
                f"model.factory: cannot import module {mod_name!r} (ModuleNotFoundError: {exc}); looked in "
                f"{looked} and sys.path; set model.path to the directory that holds it (relative to the "
                "spec file) or add that directory to PYTHONPATH (on every worker too)"
            ) from None
        raise SpecError(
            f"model.factory: cannot import module {mod_name!r} (ModuleNotFoundError: {exc}; "
            f"the module imports {missing!r}, which is not installed here)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's factory path
        raise SpecError(f"model.factory: cannot import module {mod_name!r} ({type(exc).__name__}: {exc})") from None
    finally:  # ... then last, so they never shadow installed modules, yet later imports of its neighbours work
        for d in dirs:
            sys.path.remove(d)  # the first occurrence: the one inserted above
        sys.path.extend(added)
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise SpecError(f"model.factory: module {mod_name!r} has no callable {fn_name!r}")
    return fn


def _zoo_elements(zoo: Any, kwargs: dict[str, Any]) -> int | None:
    """Elements of the zoo model's state dict, counted on the meta device (nothing allocated);
    None when it cannot be built (the real build reports why)."""
    from acpsearch.hashing import create_model

    try:
        with torch.device("meta"):
            meta_model = create_model(zoo, **kwargs)
    except Exception:  # noqa: BLE001 - the real build reports bad kwargs in its own words
        return None
    return sum(t.numel() for t in meta_model.state_dict().values())


def _check_zoo_size(zoo: Any, kwargs: dict[str, Any], source: str) -> None:
    """Count the zoo model's elements on the meta device (nothing allocated) and refuse absurd sizes."""
    bits = kwargs.get("bits")
    if isinstance(bits, int) and not isinstance(bits, bool) and not 1 <= bits <= MAX_BITS:
        raise CheckpointError(f"{source}: model.kwargs.bits: must be in [1, {MAX_BITS}], got {bits}")
    for key, value in kwargs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= MAX_KWARG:
            raise CheckpointError(f"{source}: model.kwargs.{key}: {value!r} is out of range (|value| <= {MAX_KWARG})")
    n = _zoo_elements(zoo, kwargs)
    if n is not None and n > MAX_MODEL_ELEMENTS:
        raise CheckpointError(
            f"{source}: model {zoo!r} with kwargs {kwargs} would have {n:,} parameters "
            f"(more than {MAX_MODEL_ELEMENTS:,}); refused before allocating"
        )


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
    _validate_state_dict(sd, where)
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


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in t.shape)


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """model.load_state_dict(sd, strict=True), a mismatch as one line naming the first missing or
    unexpected key, or the first tensor whose shape differs."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    more = lambda n: f" (and {n - 1} more)" if n > 1 else ""  # noqa: E731
    if missing:
        raise CheckpointError(
            f"{where}: the state dict does not match the network: missing key {missing[0]!r}"
            f"{more(len(missing))}"
            + (f"; unexpected key {unexpected[0]!r}{more(len(unexpected))}" if unexpected else "")
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: the state dict does not match the network: unexpected key "
            f"{unexpected[0]!r}{more(len(unexpected))}"
        )
    for k, t in want.items():
        if _shape(sd[k]) != _shape(t):
            raise CheckpointError(
                f"{where}: the state dict does not match the network: {k!r} has shape "
                f"{list(_shape(sd[k]))} in the file, the network expects {list(_shape(t))}"
            )
    try:
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{where}: the state dict does not match the network ({first[:200]})") from None


def spec_contradictions(cfg: dict[str, Any], model_spec: Any, where: str) -> None:
    """A spec's `model` checked against an acpsearch checkpoint's model config: a zoo / factory /
    kwargs / bits the spec gives that differs from the checkpoint's is one line naming the field
    and both values. Equal values are fine; kwargs the spec leaves out are the checkpoint's."""
    ck_kwargs = dict(cfg.get("kwargs") or {})
    zoo, factory = getattr(model_spec, "zoo", None), getattr(model_spec, "factory", None)
    if zoo is not None and str(cfg.get("zoo") or "").lower() != str(zoo).lower():
        have = f"zoo {cfg['zoo']!r}" if cfg.get("zoo") else f"factory {cfg.get('factory')!r}"
        raise SpecError(f"model.zoo: {zoo!r} contradicts {where}, whose network is {have}")
    if factory is not None and cfg.get("factory") != factory:
        have = f"factory {cfg['factory']!r}" if cfg.get("factory") else f"zoo {cfg.get('zoo')!r}"
        raise SpecError(f"model.factory: {factory!r} contradicts {where}, whose network is {have}")
    for key, value in dict(getattr(model_spec, "kwargs", None) or {}).items():
        if key not in ck_kwargs:
            raise SpecError(
                f"model.kwargs.{key}: {value!r} contradicts {where}, whose network was built without "
                f"it (its kwargs: {sorted(ck_kwargs)})"[:400]
            )
        if ck_kwargs[key] != value:
            raise SpecError(
                f"model.kwargs.{key}: {value!r} contradicts {where}, whose network has {key}={ck_kwargs[key]!r}"
            )
    bits = getattr(model_spec, "bits", None)
    ck_bits = ck_kwargs.get("bits")
    if bits is not None and _is_int(ck_bits) and ck_bits != bits:
        given = "" if "bits" in getattr(model_spec, "model_fields_set", {"bits"}) else " (the default)"
        raise SpecError(
            f"model.bits: {bits}{given} contradicts {where}, whose network has bits={ck_bits}; "
            f"set model.bits: {ck_bits}"
        )


# --- structure -----------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain(value: Any, where: str, depth: int = 0) -> None:
    """Model kwargs are plain data: None, bool, int, float, str and lists / mappings of them, with
    numbers bounded (a kwarg of 10**9 asks the model for absurd sizes)."""
    if depth > 4:
        raise CheckpointError(f"{where}: nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > 1000:
            raise CheckpointError(f"{where}: string longer than 1000 characters")
        return
    if isinstance(value, (int, float)):
        if not abs(value) <= MAX_KWARG:  # NaN fails this too
            raise CheckpointError(f"{where}: {value!r} is out of range (|value| <= {MAX_KWARG})")
        return
    if isinstance(value, (list, tuple)):
        if len(value) > 1000:
            raise CheckpointError(f"{where}: list of more than 1000 items")
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > 1000:
            raise CheckpointError(f"{where}: mapping of more than 1000 items")
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: keys must be strings, got {type(k).__name__}")
            _plain(v, f"{where}.{k}", depth + 1)
        return
    raise CheckpointError(f"{where}: must be plain data (number, string, list, mapping), got {type(value).__name__}")


def _validate_model_cfg(cfg: Any, where: str) -> None:
    if not isinstance(cfg, dict):
        raise CheckpointError(
            f"{where}: entry 'model' must be a mapping with 'zoo' or 'factory', got {type(cfg).__name__}"
        )
    has_zoo, has_factory = cfg.get("zoo") is not None, cfg.get("factory") is not None
    if has_zoo == has_factory:
        raise CheckpointError(f"{where}: entry 'model' must name exactly one of 'zoo' or 'factory'")
    if has_zoo:
        from acpsearch.hashing import MODEL_NAMES

        if not isinstance(cfg["zoo"], str) or cfg["zoo"].lower() not in MODEL_NAMES:
            raise CheckpointError(
                f"{where}: model.zoo: unknown zoo model {cfg['zoo']!r}; known: {', '.join(MODEL_NAMES)}"
            )
    elif not isinstance(cfg["factory"], str) or not _FACTORY_RE.fullmatch(cfg["factory"]):
        raise CheckpointError(f"{where}: model.factory: must be 'package.module:function', got {cfg['factory']!r}")
    kwargs = cfg.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: model.kwargs: must be a mapping, got {type(kwargs).__name__}")
    _plain(kwargs or {}, f"{where}: model.kwargs")
    bits = (kwargs or {}).get("bits")
    if has_zoo and bits is not None and not (_is_int(bits) and 1 <= bits <= MAX_BITS):
        raise CheckpointError(f"{where}: model.kwargs.bits: must be an integer in [1, {MAX_BITS}], got {bits!r}")


def _validate_input_shape(shape: Any, where: str) -> None:
    if not isinstance(shape, (list, tuple)) or not 2 <= len(shape) <= 4 or not all(_is_int(v) for v in shape):
        raise CheckpointError(f"{where}: input_shape: must be a list of 2 to 4 integers, got {shape!r}"[:300])
    if any(v < 1 for v in shape) or any(v > MAX_DIM for v in shape[-3:]) or shape[0] > MAX_DIM:
        raise CheckpointError(f"{where}: input_shape: every size must be in [1, {MAX_DIM}], got {list(shape)}")
    total = math.prod(shape)
    if total > MAX_INPUT_ELEMENTS:
        raise CheckpointError(
            f"{where}: input_shape: {list(shape)} has {total:,} elements (more than {MAX_INPUT_ELEMENTS:,})"
        )


def _validate_state_dict(sd: Any, where: str) -> None:
    if not isinstance(sd, dict):
        raise CheckpointError(f"{where}: state_dict: must be a mapping of names to tensors, got {type(sd).__name__}")
    for key, t in sd.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: state_dict: keys must be strings, got {type(key).__name__}")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict[{key!r}]: must be a tensor, got {type(t).__name__}")
        if (
            t.layout != torch.strided
            or t.is_quantized
            or t.is_complex()
            or not (t.is_floating_point() or t.dtype in _INT_DTYPES)
        ):
            kind = str(t.dtype).replace("torch.", "") + (
                "" if t.layout == torch.strided else " " + str(t.layout).replace("torch.", "")
            )
            raise CheckpointError(
                f"{where}: state_dict[{key!r}]: {kind} tensor; only real floating-point or integer weights are loaded"
            )


_INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _validate_meta(meta: Any, where: str) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: meta: must be a mapping, got {type(meta).__name__}")
    for key in ("dataset", "data_dir"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise CheckpointError(f"{where}: meta.{key}: must be a string, got {type(meta[key]).__name__}")
    proto = meta.get("protocol")
    if proto is None:
        return
    if not isinstance(proto, dict):
        raise CheckpointError(f"{where}: meta.protocol: must be a mapping, got {type(proto).__name__}")
    for key, v in proto.items():
        if not (_is_int(v) and 0 <= v < 2**32):
            raise CheckpointError(f"{where}: meta.protocol.{key}: must be an integer in [0, 2**32), got {v!r}"[:300])


def _validate_pruning(rec: Any, where: str) -> None:
    """The record `acpsearch.pruning.make_record` writes: groups = {name: {channels, kept}}."""
    if rec is None:
        return
    if not isinstance(rec, dict):
        raise CheckpointError(f"{where}: pruning: must be a mapping (a pruning record), got {type(rec).__name__}")
    if rec.get("hash_layer") is not None and not isinstance(rec["hash_layer"], str):
        raise CheckpointError(f"{where}: pruning.hash_layer: must be a module name, got {rec['hash_layer']!r}"[:300])
    groups = rec.get("groups", {})
    if not isinstance(groups, dict):
        raise CheckpointError(
            f"{where}: pruning.groups: must be a mapping of group names to kept channels, got {type(groups).__name__}"
        )
    for name, ent in groups.items():
        at = f"{where}: pruning.groups[{name!r}]"
        if not isinstance(name, str) or not isinstance(ent, dict):
            raise CheckpointError(f"{at}: must be a mapping with 'channels' and 'kept'")
        for key in ("channels", "kept"):
            if key not in ent:
                raise CheckpointError(f"{at}: missing {key!r}")
        channels, kept = ent["channels"], ent["kept"]
        if not (_is_int(channels) and 1 <= channels <= MAX_KWARG):
            raise CheckpointError(f"{at}.channels: must be an integer in [1, {MAX_KWARG}], got {channels!r}"[:300])
        if (
            not isinstance(kept, (list, tuple))
            or not kept
            or len(kept) > channels
            or not all(_is_int(i) and 0 <= i < channels for i in kept)
        ):
            raise CheckpointError(f"{at}.kept: must be a non-empty list of channel indices in [0, {channels})")
    cost = rec.get("cost")
    if cost is not None and not (isinstance(cost, dict) and all(_is_int(cost.get(k)) for k in ("flops", "params"))):
        raise CheckpointError(f"{where}: pruning.cost: must be a mapping with integer 'flops' and 'params'")


def validate_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> None:
    """Check the type and size of every entry BEFORE anything is built: one CheckpointError line
    naming the file (`where`) and the entry."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{where}: not an acpsearch checkpoint (foreign format)")
    for key in ("model", "input_shape", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{where}: missing entry {key!r}")
    _validate_model_cfg(ckpt["model"], where)
    _validate_input_shape(ckpt["input_shape"], where)
    _validate_state_dict(ckpt["state_dict"], where)
    _validate_meta(ckpt.get("meta"), where)
    _validate_pruning(ckpt.get("pruning"), where)


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
        return (
            f"{where}: refused, loading it would run code ({', '.join(code[:3])}); "
            "only weights-only checkpoints written by acpsearch are loaded"
        )
    detail = _torch_detail(text) or ("empty or truncated file" if isinstance(exc, EOFError) else "")
    return f"{where}: corrupt or not a torch checkpoint ({type(exc).__name__}{': ' + detail[:160] if detail else ''})"


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint", allow_factories: Any = None) -> nn.Module:
    """Rebuild the module a checkpoint dict describes (architecture, pruning replay, weights).

    The dict is validated first; a "factory" it names is imported only if `allow_factories` (module
    names or an acpsearch.trust.FactoryPolicy) or $ACPSEARCH_ALLOW_FACTORIES allows its module."""
    validate_checkpoint(ckpt, source)
    cfg = ckpt["model"]
    if cfg.get("zoo") is not None and not ckpt.get("pruning"):  # unpruned: the sizes must agree exactly
        _check_zoo_size(cfg["zoo"], dict(cfg.get("kwargs") or {}), source)
        want = _zoo_elements(cfg["zoo"], dict(cfg.get("kwargs") or {}))
        have = sum(t.numel() for t in ckpt["state_dict"].values())
        if want is not None and want != have:
            raise CheckpointError(
                f"{source}: weights do not match the architecture (its model kwargs imply "
                f"{want:,} weight elements, the state_dict holds {have:,})"
            )
    try:
        model = build_from_config(ckpt["model"], allow_factories=allow_factories, source=source)
    except CheckpointError:
        raise
    except AcpError as exc:  # zoo / factory errors: name the checkpoint they came from
        raise CheckpointError(f"{source}: {exc}") from None
    if ckpt.get("pruning"):
        from acpsearch.pruning import apply_record

        example = torch.zeros(*ckpt["input_shape"])
        model = apply_record(model, ckpt["pruning"], example)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{source}: weights do not match the architecture ({first[:200]})") from None
    model.eval()
    return model


def load_model(path: str | Path, allow_factories: Any = None) -> nn.Module:
    """Load any checkpoint written by train / prune / export as a ready module (eval mode).

    A checkpoint naming a model factory loads only if its module is allowed: `allow_factories`
    (e.g. ``["mypkg"]``) or $ACPSEARCH_ALLOW_FACTORIES; otherwise CheckpointError, nothing imported."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, source=f"checkpoint {str(path)!r}", allow_factories=allow_factories)


def save_pruned(
    path: str | Path,
    pruned_model: nn.Module,
    strategy: PruningStrategy | dict[str, Any] | None,
    model_cfg: dict[str, Any],
    input_shape: list[int] | tuple[int, ...],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a weights-only checkpoint of a pruned model that ``acpsearch.load_model`` reloads.

    `strategy` may be the PruningStrategy used, or a record; by default the record attached by
    ``prune`` is used (it holds the indices actually kept)."""
    record = getattr(pruned_model, "acp_pruning_record", None)
    if isinstance(strategy, dict):
        record = strategy
    elif record is None and strategy is not None:
        record = make_record(strategy)
    if record is None:
        raise CheckpointError("save_pruned: no pruning record (pass the strategy or a record)")
    return save_checkpoint(path, pruned_model, model_cfg, input_shape, pruning=record, meta=meta)
