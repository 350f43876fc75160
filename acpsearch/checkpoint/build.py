"""Building the module a checkpoint describes: a zoo network (sizes counted on the meta device
first) or a user's factory (imported only when the FactoryPolicy of acpsearch.trust allows its
module), the pruning record replayed on it, then its weights loaded strictly."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acpsearch.checkpoint.code import replay_record
from acpsearch.checkpoint.read import read_checkpoint
from acpsearch.checkpoint.validate import (
    MAX_BITS,
    MAX_KWARG,
    MAX_MODEL_ELEMENTS,
    is_int,
    model_task,
    validate_checkpoint,
)
from acpsearch.errors import AcpError, CheckpointError, SpecError
from acpsearch.trust import FactoryNotAllowed, FactoryPolicy, factory_module


def build_from_config(
    cfg: dict[str, Any], allow_factories: FactoryPolicy | Iterable[str] | str | None = None, source: str = "model"
) -> nn.Module:
    """Build an (unpruned) architecture from a checkpoint's "model" entry.

    A zoo name is always built; a factory only when its module is allowed (`allow_factories`: a
    FactoryPolicy or module names, plus $ACPSEARCH_ALLOW_FACTORIES; see acpsearch.trust). The check
    comes before the import: importing a module runs its code."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: entry 'model' must be a mapping, got {type(cfg).__name__}")
    kwargs = dict(cfg.get("kwargs") or {})
    if "zoo" in cfg:
        task = model_task(cfg)
        _check_zoo_size(cfg["zoo"], kwargs, source, task)
        try:
            return _zoo_builder(task)(cfg["zoo"], **kwargs)
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


def import_factory(path: str, search: Iterable[str] = ()) -> Callable[..., Any]:
    """Resolve "package.module:function" to a callable; a failing import is a user error.
    The module is looked for in `search` (the spec's model.path, by default the spec file's
    directory), the current working directory, then sys.path (PYTHONPATH); afterwards those
    directories stay at the end of sys.path, so the module's later imports of its neighbours work.
    Importing runs the module's code: callers check the module against the FactoryPolicy first."""
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
    fn: Callable[..., Any] | None = getattr(mod, fn_name, None)
    if not callable(fn):
        raise SpecError(f"model.factory: module {mod_name!r} has no callable {fn_name!r}")
    return fn


def _zoo_builder(task: str = "retrieval") -> Callable[..., nn.Module]:
    """The zoo's constructor for a task: a hash network (`acpsearch.hashing.create_model`) or a
    classifier on the same backbone (`acpsearch.classification.create_classifier`)."""
    if task == "classification":
        from acpsearch.classification import create_classifier

        return create_classifier
    from acpsearch.hashing import create_model

    return create_model


def _zoo_elements(zoo: Any, kwargs: dict[str, Any], task: str = "retrieval") -> int | None:
    """Elements of the zoo model's state dict, counted on the meta device (nothing allocated);
    None when it cannot be built (the real build reports why)."""
    try:
        with torch.device("meta"):
            meta_model = _zoo_builder(task)(zoo, **kwargs)
    except Exception:  # noqa: BLE001 - the real build reports bad kwargs in its own words
        return None
    return int(sum(t.numel() for t in meta_model.state_dict().values()))


def _check_zoo_size(zoo: Any, kwargs: dict[str, Any], source: str, task: str = "retrieval") -> None:
    """Count the zoo model's elements on the meta device (nothing allocated) and refuse absurd sizes."""
    bits = kwargs.get("bits")
    if isinstance(bits, int) and not isinstance(bits, bool) and not 1 <= bits <= MAX_BITS:
        raise CheckpointError(f"{source}: model.kwargs.bits: must be in [1, {MAX_BITS}], got {bits}")
    for key, value in kwargs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not abs(value) <= MAX_KWARG:
            raise CheckpointError(f"{source}: model.kwargs.{key}: {value!r} is out of range (|value| <= {MAX_KWARG})")
    n = _zoo_elements(zoo, kwargs, task)
    if n is not None and n > MAX_MODEL_ELEMENTS:
        raise CheckpointError(
            f"{source}: model {zoo!r} with kwargs {kwargs} would have {n:,} parameters "
            f"(more than {MAX_MODEL_ELEMENTS:,}); refused before allocating"
        )


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in t.shape)


def _more(n: int) -> str:
    return f" (and {n - 1} more)" if n > 1 else ""


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """model.load_state_dict(sd, strict=True), a mismatch as one line naming the first missing or
    unexpected key, or the first tensor whose shape differs."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing:
        raise CheckpointError(
            f"{where}: the state dict does not match the network: missing key {missing[0]!r}"
            f"{_more(len(missing))}"
            + (f"; unexpected key {unexpected[0]!r}{_more(len(unexpected))}" if unexpected else "")
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: the state dict does not match the network: unexpected key "
            f"{unexpected[0]!r}{_more(len(unexpected))}"
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
    if bits is not None and is_int(ck_bits) and ck_bits != bits:
        given = "" if "bits" in getattr(model_spec, "model_fields_set", {"bits"}) else " (the default)"
        raise SpecError(
            f"model.bits: {bits}{given} contradicts {where}, whose network has bits={ck_bits}; "
            f"set model.bits: {ck_bits}"
        )


def model_from_checkpoint(
    ckpt: dict[str, Any], source: str = "checkpoint", allow_factories: FactoryPolicy | Iterable[str] | str | None = None
) -> nn.Module:
    """Rebuild the module a checkpoint dict describes (architecture, pruning replay, weights).

    The dict is validated first; a "factory" it names is imported only if `allow_factories` (module
    names or an acpsearch.trust.FactoryPolicy) or $ACPSEARCH_ALLOW_FACTORIES allows its module."""
    validate_checkpoint(ckpt, source)
    cfg = ckpt["model"]
    if cfg.get("zoo") is not None and not ckpt.get("pruning"):  # unpruned: the sizes must agree exactly
        _check_zoo_size(cfg["zoo"], dict(cfg.get("kwargs") or {}), source, model_task(cfg))
        want = _zoo_elements(cfg["zoo"], dict(cfg.get("kwargs") or {}), model_task(cfg))
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
        example = torch.zeros(*ckpt["input_shape"])
        model = replay_record(model, ckpt["pruning"], example)  # channels, then a shortened code
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{source}: weights do not match the architecture ({first[:200]})") from None
    model.eval()
    return model


def load_model(path: str | Path, allow_factories: FactoryPolicy | Iterable[str] | str | None = None) -> nn.Module:
    """Load any checkpoint written by train / prune / export as a ready module (eval mode).

    A checkpoint naming a model factory loads only if its module is allowed: `allow_factories`
    (e.g. ``["mypkg"]``) or $ACPSEARCH_ALLOW_FACTORIES; otherwise CheckpointError, nothing imported."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, source=f"checkpoint {str(path)!r}", allow_factories=allow_factories)


def study_refusal(policy: FactoryPolicy, spec: Any) -> FactoryNotAllowed | None:
    """Why a study may not run under `policy`: its spec's factory, or the factory named by its
    model.checkpoint, is not allowed (None: it may run). Reading the checkpoint is weights-only;
    a checkpoint that cannot be read is left to the run, which reports it."""
    factory = spec.model.factory
    if factory and not policy.allows(factory):
        return FactoryNotAllowed("spec", factory, factory_module(factory))
    if spec.model.checkpoint:
        try:
            cfg = read_checkpoint(spec.model.checkpoint)["model"]
        except AcpError:
            return None
        if cfg.get("factory") and not policy.allows(cfg["factory"]):
            return FactoryNotAllowed(
                f"checkpoint {spec.model.checkpoint!r}", cfg["factory"], factory_module(cfg["factory"])
            )
    return None
