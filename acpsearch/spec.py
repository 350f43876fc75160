"""Study spec: the YAML a user submits, validated with pydantic.

Why pydantic in strict mode: YAML already yields typed values, so a quoted number or a `true`
where an int belongs is a mistake we want to report, not coerce. Every problem becomes ONE line
that names the field, e.g. ``spec: budget.flops: must be in (0, 1], got 1.5`` (SpecError, exit 2).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from acpsearch.errors import SpecError

DATASETS = ("digits", "mnist5k", "fashion-mnist", "cifar10", "folder", "npz")
DATASETS_WITH_PATH = ("cifar10", "folder", "npz")
CRITERIA = ("l1", "l2", "bn_scale", "fpgm", "taylor", "random")
LOSSES = ("csq", "hashnet", "dpsh")
SAMPLERS = ("tpe", "random", "nsga2", "gp", "qmc")
RANKERS = ("similarity", "adaptive_bn", "code_agreement", "l1_retained", "random")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _unit_interval(value: float | None, open_low: bool = True) -> float | None:
    if value is None:
        return value
    if not (0.0 < value <= 1.0):
        raise ValueError(f"must be in (0, 1], got {_fmt(value)}")
    return value


def _at_least_one(v: int) -> int:
    if v < 1:
        raise ValueError(f"must be >= 1, got {v}")
    return v


def _learning_rate(v: float) -> float:
    if not (0.0 < v <= 10.0):
        raise ValueError(f"must be in (0, 10], got {_fmt(v)}")
    return v


def _loss_weight(v: float) -> float:
    if not (0.0 <= v <= 100.0):  # NaN fails this too
        raise ValueError(f"must be in [0, 100], got {_fmt(v)}")
    return v


# Field types that carry their range check, so each section only declares its fields.
Count = Annotated[int, AfterValidator(_at_least_one)]
LearningRate = Annotated[float, AfterValidator(_learning_rate)]
LossWeight = Annotated[float, AfterValidator(_loss_weight)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class ModelSpec(_Section):
    """Which network to prune: a zoo name or a user factory, plus an optional trained checkpoint."""

    zoo: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    bits: int = 32
    checkpoint: str | None = None
    hash_layer: str | None = None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not (2 <= v <= 4096):
            raise ValueError(f"must be in [2, 4096], got {v}")
        return v

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or v.startswith(":") or v.endswith(":")):
            raise ValueError(f"must be of the form 'package.module:function', got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.zoo is None) == (self.factory is None):
            raise ValueError("give exactly one of 'zoo' or 'factory'")
        return self


class ProtocolSpec(_Section):
    """Query / train / validation split sizes per class (the rest is the retrieval database)."""

    query_per_class: Count = 100
    train_per_class: Count = 500
    val_per_class: Count = 100
    seed: int = 0


class DataSpec(_Section):
    dataset: Literal["digits", "mnist5k", "fashion-mnist", "cifar10", "folder", "npz"]
    path: str | None = None
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)

    @model_validator(mode="after")
    def _needs_path(self) -> "DataSpec":
        if self.dataset in DATASETS_WITH_PATH and not self.path:
            raise ValueError(f"dataset {self.dataset!r} is user-supplied: set data.path")
        return self


class _Augmentation(_Section):
    """Sections that train with `augment` (random crop after zero padding by 1/8 of the image
    side) and `hflip` (random horizontal flip, only with augment: wrong for digits, right for
    clothes and photos)."""

    @field_validator("hflip", check_fields=False)
    @classmethod
    def _flip_needs_augment(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not info.data.get("augment", False):
            raise ValueError("true needs augment: true (the flip is part of the augmentation)")
        return v


class TrainSpec(_Augmentation):
    """How the base network is trained when model.checkpoint is not given."""

    loss: Literal["csq", "hashnet", "dpsh"] = "csq"
    epochs: Count = 20
    lr: LearningRate = 0.001
    batch_size: Count = 128
    augment: bool = False
    hflip: bool = False


class BudgetSpec(_Section):
    """Resource budget as ratios of the unpruned network (latency in milliseconds)."""

    flops: float | None = None
    params: float | None = None
    latency_ms: float | None = None

    @field_validator("flops", "params")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        return _unit_interval(v)

    @field_validator("latency_ms")
    @classmethod
    def _latency(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"must be > 0, got {_fmt(v)}")
        return v

    @model_validator(mode="after")
    def _some(self) -> "BudgetSpec":
        if self.flops is None and self.params is None and self.latency_ms is None:
            raise ValueError("set at least one of flops, params, latency_ms")
        return self


class SpaceSpec(_Section):
    step: float = 0.1
    min_keep: float = 0.2
    criterion: Literal["l1", "l2", "bn_scale", "fpgm", "taylor", "random"] = "l1"

    @field_validator("step")
    @classmethod
    def _step(cls, v: float) -> float:
        if not (0.0 < v <= 0.5):
            raise ValueError(f"must be in (0, 0.5], got {_fmt(v)}")
        return v

    @field_validator("min_keep")
    @classmethod
    def _min_keep(cls, v: float) -> float:
        return _unit_interval(v)  # type: ignore[return-value]


class EncoderSpec(_Section):
    objective: Literal["sacp", "effect"] = "effect"  # effect ranked better: benchmarks/results/ranking.md
    epochs: Count = 50
    strategies: Count = 512


class SearchSpec(_Section):
    candidates: Count = 500
    sampler: Literal["tpe", "random", "nsga2", "gp", "qmc"] = "tpe"
    workers: Count = 2
    seed: int = 0
    ranker: Literal["similarity", "adaptive_bn", "code_agreement", "l1_retained", "random"] = "similarity"
    rerank: Literal["similarity", "adaptive_bn", "code_agreement", "l1_retained", "random"] | None = None
    rerank_top: Count = 32
    rounds: Count = 2  # the space narrows around the best candidates of the earlier rounds
    elite: Count = 16  # how many of the best candidates set the narrowed ranges
    # One finalist slot goes to the budget's global-magnitude allocation (pipeline.phase_anchor);
    # null: all finalists come from the search.
    anchor: Literal["magnitude"] | None = "magnitude"


class FinetuneSpec(_Augmentation):
    """How the finalists are fine-tuned; `augment` lets them use the base network's recipe
    (whether it pays depends on the structure: benchmarks/results/finetune_recipe_aug8.jsonl);
    `distill` > 0 adds that weight times the distance of the finalist's codes to the unpruned
    network's (MSE of tanh outputs) to the hash loss."""

    top: Count = 4
    epochs: Count = 5
    lr: LearningRate = 0.001
    batch_size: Count = 128
    early_stop: Literal["asha"] | None = "asha"
    augment: bool = False
    hflip: bool = False
    distill: LossWeight = 0.0


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

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"must match {NAME_RE.pattern} (letters, digits, '_', '.', '-'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
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
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after"))


def _one_line(exc: ValidationError, data: Any) -> str:
    """The first validation error as `spec: field.path: reason` (one line)."""
    err = exc.errors(include_url=False)[0]
    loc = _loc(err["loc"])
    kind = err["type"]
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "extra_forbidden":
        parent = err["loc"][:-1]
        model: Any = StudySpec
        for part in parent:
            field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
            ann = field.annotation if field else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        allowed = ", ".join(model.model_fields) if model is not None else ""
        return f"spec: {loc}: unknown key" + (f" (allowed: {allowed})" if allowed else "")
    if kind == "missing":
        return f"spec: {loc}: required"
    if kind in ("model_type", "dict_type") and not loc:
        return f"spec: must be a mapping, got {type(err['input']).__name__}"
    if kind in ("model_type", "dict_type"):
        return f"spec: {loc}: must be a mapping, got {_fmt(err['input'])}"
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
    if spec.data.path:
        spec.data.path = str((base / Path(spec.data.path).expanduser()).resolve())
    return spec


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML spec file (paths inside it are relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec {str(path)!r}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"spec {str(path)!r}: not valid YAML{where} ({problem})") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec {str(path)!r}: not a text file") from None
    return parse_spec(data, base_dir=path.parent)


def spec_from_json(text_or_dict: str | dict[str, Any]) -> StudySpec:
    """Rebuild a spec stored in a study (already validated once, paths already absolute)."""
    data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return parse_spec(data)
