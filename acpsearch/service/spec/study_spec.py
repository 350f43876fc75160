"""The whole spec (StudySpec), its validation from a dict, and the one-line error of a refusal.

Why pydantic in strict mode: YAML already yields typed values, so a quoted number or a `true`
where an int belongs is a mistake we want to report, not coerce. Every problem becomes ONE line
that names the field, e.g. ``spec: budget.flops: must be in (0, 1], got 1.5`` (SpecError, exit 2).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from acpsearch.errors import SpecError
from acpsearch.errors import echo as _fmt
from acpsearch.service.spec.code import CodeSpec, check_code_options, drop_unset
from acpsearch.service.spec.fields import NAME_RE, _Section, valid_name
from acpsearch.service.spec.sections import (
    BudgetSpec,
    DataSpec,
    EncoderSpec,
    FinetuneSpec,
    ModelSpec,
    SearchSpec,
    SpaceSpec,
    TrainSpec,
)
from acpsearch.service.spec.supervision import check_supervision, supervision_free
from acpsearch.service.spec.task import TASKS, check_task_options, task_free


class StudySpec(_Section):
    """A whole study: what to prune, on which data, under which budget, and how to search."""

    name: str | None = None
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    budget: BudgetSpec
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    code: CodeSpec | None = None  # shorter codes for the winner (phase shorten)
    task: Literal[TASKS] = "retrieval"  # type: ignore[valid-type]  # what the network's output is for

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not valid_name(v):
            raise ValueError(f"must match {NAME_RE.pattern} (letters, digits, '_', '.', '-'), got {_fmt(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        check_task_options(self)
        check_code_options(self)
        check_supervision(self)
        if self.encoder.target == "ft_steps" and (
            self.task != "retrieval" or self.data.supervision == "none" or self.budget.bits is not None
        ):
            raise ValueError(
                "encoder.target: ft_steps needs a labelled retrieval study without a searched code length "
                "(its signal is the validation mAP after a short fine-tune with the study's hash loss)"
            )
        if self.search.rerank is not None and self.search.rerank_top < self.finetune.top:
            raise ValueError(
                f"search.rerank_top ({self.search.rerank_top}) must be >= finetune.top ({self.finetune.top})"
            )
        if self.finetune.top > self.search.candidates:
            raise ValueError(
                f"finetune.top ({self.finetune.top}) must be <= search.candidates ({self.search.candidates})"
            )
        return self

    # --- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what is stored in the study's user attributes)."""
        return drop_unset(supervision_free(task_free(self.model_dump(mode="json"))))

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _loc(loc: tuple[Any, ...]) -> str:
    """The dotted field name; a key the user made up is quoted (and capped) when it is long or holds
    characters that would break the one line."""
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(p if p.isprintable() and len(p) <= 64 else _fmt(p) for p in parts)


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The spec section (pydantic model) at `loc`, or None."""
    model: Any = StudySpec
    for part in loc:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        ann = field.annotation if field else None
        opts = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = opts[0] if opts else None  # a section, also an optional one (`code: CodeSpec | None`)
        if model is None:
            break
    return model


def _constraints(loc: tuple[Any, ...]) -> list[Any]:
    """The annotated_types constraints (Ge, Gt, Le, Lt, ...) of the field at `loc`, also when its type
    is `Annotated[...] | None`."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model is not None and loc else None
    if field is None:
        return []
    found = list(field.metadata)
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        for meta in getattr(arg, "__metadata__", ()):
            found.extend(getattr(meta, "metadata", [meta]))
    return found


_BOUND_KINDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")


def _range_text(loc: tuple[Any, ...]) -> tuple[str, bool]:
    """The allowed range of a numeric field as "in [lo, hi)" / ">= lo" / "<= hi", and whether it is
    bounded on both sides."""
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    for c in _constraints(loc):
        if isinstance(c, annotated_types.Ge):
            lo, lo_open = c.ge, False
        elif isinstance(c, annotated_types.Gt):
            lo, lo_open = c.gt, True
        elif isinstance(c, annotated_types.Le):
            hi, hi_open = c.le, False
        elif isinstance(c, annotated_types.Lt):
            hi, hi_open = c.lt, True
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}", True
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}", False
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}", False
    return "", False


def _one_line(exc: ValidationError, data: Any) -> str:
    """The first validation error as `spec: field.path: reason` (one line)."""
    err = exc.errors(include_url=False)[0]
    loc = _loc(err["loc"])
    kind = err["type"]
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "extra_forbidden":
        model = _model_at(err["loc"][:-1])
        allowed = ", ".join(model.model_fields) if model is not None else ""
        return f"spec: {loc}: unknown key" + (f" (allowed: {allowed})" if allowed else "")
    if kind == "missing":
        return f"spec: {loc}: required"
    if kind in ("model_type", "dict_type") and not loc:
        return f"spec: must be a mapping, got {type(err['input']).__name__}"
    if kind in ("model_type", "dict_type"):
        return f"spec: {loc}: must be a mapping, got {_fmt(err['input'])}"
    if kind in _BOUND_KINDS:
        # "must be in [lo, hi], got X" from the field's own bounds; a NaN or infinity outside a
        # one-sided range is named as not finite ("must be > 0, got inf" would read wrong)
        allowed, both = _range_text(err["loc"])
        if kind == "finite_number" and not both:
            allowed = "a finite number" + (f" {allowed}" if allowed else "")
        return f"spec: {loc}: must be {allowed or 'a finite number'}, got {_fmt(err['input'])}"
    if kind == "literal_error":
        return f"spec: {loc}: {msg[0].lower() + msg[1:]}, got {_fmt(err['input'])}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"spec: {loc}: {msg[0].lower() + msg[1:]}, got {_fmt(err['input'])}"
    return f"spec: {loc}: {msg}" if loc else f"spec: {msg}"


def parse_spec(data: Any, base_dir: str | Path | None = None) -> StudySpec:
    """Validate a spec given as a dict; relative paths are resolved against `base_dir`."""
    if not isinstance(data, dict):
        raise SpecError(f"spec: must be a mapping of sections, got {type(data).__name__}")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_one_line(exc, data)) from None
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if spec.model.checkpoint:
        spec.model.checkpoint = str((base / Path(spec.model.checkpoint).expanduser()).resolve())
    if spec.model.path:
        spec.model.path = str((base / Path(spec.model.path).expanduser()).resolve())
    elif spec.model.factory and base_dir is not None:  # a spec file: its directory (stored for the workers)
        spec.model.path = str(base.resolve())
    if spec.data.path:
        spec.data.path = str((base / Path(spec.data.path).expanduser()).resolve())
    if spec.train.tags:
        spec.train.tags = str((base / Path(spec.train.tags).expanduser()).resolve())
    return spec


def spec_from_json(text_or_dict: str | dict[str, Any]) -> StudySpec:
    """Rebuild a spec stored in a study (already validated once, paths already absolute)."""
    data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return parse_spec(data)
