"""Study spec: the YAML a user submits, validated with pydantic.

Why pydantic in strict mode: YAML already yields typed values, so a quoted number or a `true`
where an int belongs is a mistake we want to report, not coerce. Every problem becomes ONE line
that names the field, e.g. ``spec: budget.flops: must be in (0, 1], got 1.5`` (SpecError, exit 2).
"""

from __future__ import annotations

import json
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from acpsearch.errors import SpecError
from acpsearch.errors import echo as _fmt
from acpsearch.hashing.data import PROTOCOL_DEFAULTS

DATASETS = ("digits", "mnist5k", "fashion-mnist", "cifar10", "folder", "npz", "listfile")
LIST_KEYS = ("train_list", "database_list", "test_list", "val_list")
DATASETS_WITH_PATH = ("cifar10", "folder", "npz")
CRITERIA = ("l1", "l2", "bn_scale", "fpgm", "taylor", "random")
LOSSES = ("csq", "hashnet", "dpsh")
SAMPLERS = ("tpe", "random", "nsga2", "gp", "qmc")
RANKERS = ("similarity", "adaptive_bn", "code_agreement", "l1_retained", "random")
# \Z, not $: `$` also matches before a final newline, which let a study be named "x\n".
# Always use NAME_RE.fullmatch (or valid_name); with .match the \Z keeps it anchored too.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\Z")

# --- bounds of the spec's numbers (a real study stays far inside them; beyond them a value is a
# typo or an attack that would crash or hang a later phase) --------------------------------------
SEED_LIMIT = 2**32  # numpy / torch / optuna seeds: [0, 2**32)
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_PER_CLASS = 10_000_000  # images per class in the query / train / validation split
MAX_STRATEGIES = 100_000  # encoder training strategies
MAX_CANDIDATES = 100_000  # search candidates (also rerank_top, elite)
MAX_ROUNDS = 100
MAX_WORKERS = 1_024
MAX_FINALISTS = 1_000  # finetune.top
MIN_STEP = 0.01  # space.step: the grid of keep ratios has at most 1 / step values per group

# Error lines echo the offending value at most this long (a YAML alias bomb or a 50 MB string
# must not become a 50 MB "one line").


def valid_name(name: Any) -> bool:
    """Whether `name` is a valid study name (the whole string, no trailing newline)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def check_name(name: Any, field: str = "--name") -> str:
    """`name` if it is a valid study name, else SpecError naming `field` ('' is refused: it is not
    "no name")."""
    if name == "":
        raise SpecError(f"{field}: empty; leave it out to use the spec's name")
    if not valid_name(name):
        raise SpecError(f"{field}: must match {NAME_RE.pattern} (letters, digits, '_', '.', '-'), got {_fmt(name)}")
    return name


# Field types that carry their range (pydantic constraints; `_one_line` words a violation as
# "must be in [lo, hi], got X" from the field's own bounds).
def _ints(lo: int, hi: int | None = None, *, hi_open: bool = False) -> Any:
    if hi is None:
        return Annotated[int, Field(ge=lo)]
    return Annotated[int, Field(ge=lo, lt=hi) if hi_open else Field(ge=lo, le=hi)]


Count = _ints(1)
Seed = _ints(0, SEED_LIMIT, hi_open=True)
Epochs = _ints(1, MAX_EPOCHS)
BatchSize = _ints(1, MAX_BATCH_SIZE)
PerClass = _ints(1, MAX_PER_CLASS)
Candidates = _ints(1, MAX_CANDIDATES)
Strategies = _ints(1, MAX_STRATEGIES)
Workers = _ints(1, MAX_WORKERS)
Rounds = _ints(1, MAX_ROUNDS)
Finalists = _ints(1, MAX_FINALISTS)
Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
LearningRate = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
LossWeight = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


def _field_error(loc: tuple[str, ...], value: Any, message: str) -> ValidationError:
    """A validation error of the sub-field `loc` raised from a model validator (so the error line
    names e.g. model.kwargs.bits, not just model)."""
    return ValidationError.from_exception_data(
        "spec",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{message}", {"message": message}), loc=loc, input=value
            )
        ],
    )


def _not_empty(v: str | None, hint: str) -> str | None:
    if v is not None and not v.strip():
        raise ValueError(f"empty: {hint}")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class ModelSpec(_Section):
    """Which network to prune: a zoo name or a user factory, plus an optional trained checkpoint."""

    zoo: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    bits: Annotated[int, Field(ge=2, le=4096)] = 32
    checkpoint: str | None = None
    hash_layer: str | None = None
    # A directory put on the import path for model.factory (relative to the spec file). Left out, a
    # factory spec read from a file stores the spec file's directory here (workers need it too).
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _not_empty(v, "leave it out to import model.factory from the spec's directory")

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or v.startswith(":") or v.endswith(":")):
            raise ValueError(f"must be of the form 'package.module:function', got {_fmt(v)}")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, v: str | None) -> str | None:
        return _not_empty(v, "leave it out to train a base network")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.zoo is None) == (self.factory is None):
            raise ValueError("give exactly one of 'zoo' or 'factory'")
        # kwargs.bits would silently win over model.bits (the zoo / factory gets both), while the
        # stored spec, the checkpoint checks and the reports go by model.bits
        if "bits" in self.kwargs and self.kwargs["bits"] != self.bits:
            given = "" if "bits" in self.model_fields_set else " (the default)"
            raise _field_error(
                ("kwargs", "bits"),
                self.kwargs["bits"],
                f"{_fmt(self.kwargs['bits'])} contradicts model.bits = {self.bits}{given}; "
                "give the code length once, as model.bits",
            )
        return self


class ProtocolSpec(_Section):
    """Query / train / validation split sizes per class (the rest is the retrieval database);
    a count left out takes the data set's default (PROTOCOL_DEFAULTS, filled in by DataSpec)."""

    query_per_class: PerClass | None = None
    train_per_class: PerClass | None = None
    val_per_class: PerClass | None = None
    seed: Seed = 0


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class NormalizeSpec(_Section):
    """Fixed per-channel statistics (one value per channel, or one for all), applied to pixels in [0, 1]."""

    mean: Annotated[list[FiniteFloat], Field(min_length=1, max_length=64)]
    std: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=1, max_length=64)]


class DataSpec(_Section):
    """The data set. `normalize`: "train" (per-channel mean/std of the training split, stored in
    every checkpoint as meta.preprocess), "none", or {mean, std}. listfile: `path` (one list, split
    by the protocol) or train_list + database_list + test_list (+ val_list), image paths relative to
    `root` (default: the list's folder); `image_size` resizes the shorter side and crops the centre;
    `stream` decodes images per batch with `workers` DataLoader workers instead of loading them all."""

    dataset: Literal["digits", "mnist5k", "fashion-mnist", "cifar10", "folder", "npz", "listfile"]
    path: str | None = None
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    normalize: Literal["train", "none"] | NormalizeSpec = "train"
    image_size: _ints(1, 4096) | None = None  # type: ignore[valid-type]
    train_list: str | None = None
    database_list: str | None = None
    test_list: str | None = None
    val_list: str | None = None
    root: str | None = None
    stream: bool = True
    workers: _ints(0, 64) = 0  # type: ignore[valid-type]

    @field_validator("path", "train_list", "database_list", "test_list", "val_list", "root")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _not_empty(v, "leave it out for a data set that needs no path")

    @field_validator("normalize", mode="wrap")
    @classmethod
    def _normalize(cls, v: Any, handler: Any) -> Any:
        """One readable line instead of pydantic's union errors."""
        if isinstance(v, NormalizeSpec) or v in ("train", "none"):
            return v
        if isinstance(v, dict):
            try:
                return NormalizeSpec.model_validate(v)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                msg = err["msg"][:1].lower() + err["msg"][1:]
                raise ValueError(f"{where}: {msg}, got {_fmt(err.get('input'))}") from None
        raise ValueError(f"must be 'train', 'none' or {{mean: [...], std: [...]}}, got {_fmt(v)}")

    @model_validator(mode="after")
    def _needs_path(self) -> DataSpec:
        if self.dataset in DATASETS_WITH_PATH and not self.path:
            raise ValueError(f"dataset {self.dataset!r} is user-supplied: set data.path")
        lists = [k for k in LIST_KEYS if getattr(self, k)]
        if self.dataset != "listfile":
            extra = lists + (["root"] if self.root else [])
            if extra:
                raise _field_error((extra[0],), getattr(self, extra[0]), "only for dataset 'listfile'")
        elif self.path and lists:
            raise _field_error(
                (lists[0],),
                getattr(self, lists[0]),
                "give either data.path (one list, split by the protocol) or the lists, not both",
            )
        elif not self.path:
            missing = [k for k in LIST_KEYS[:3] if not getattr(self, k)]
            if missing:
                raise _field_error(
                    (missing[0],),
                    None,
                    "dataset 'listfile' needs data.path (one list) or train_list, database_list and test_list",
                )
        q, t, v = PROTOCOL_DEFAULTS[self.dataset]
        p = self.protocol
        p.query_per_class = q if p.query_per_class is None else p.query_per_class
        p.train_per_class = t if p.train_per_class is None else p.train_per_class
        p.val_per_class = v if p.val_per_class is None else p.val_per_class
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
    epochs: Epochs = 20
    lr: LearningRate = 0.001
    batch_size: BatchSize = 128
    augment: bool = False
    hflip: bool = False
    # where the base network is trained (and the base evaluated) by the runner: auto (cuda when
    # torch sees a GPU), cpu, cuda, cuda:N; `--device` of train / run / worker overrides it
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from acpsearch.devices import _DEVICE_RE, DEVICE_CHOICES

        if _DEVICE_RE.fullmatch(v) is None:
            raise ValueError(f"must be one of {DEVICE_CHOICES}, got {_fmt(v)}")
        return v


class ResourcesSpec(_Section):
    """What one Ray worker asks for: `cpu` slots (also its torch threads) and `gpu`, the share of
    one GPU it runs on (0.25: four trials share a GPU; 1: a GPU of its own; a trial or actor uses
    one GPU, so more is refused); gpu > 0 runs the work on cuda."""

    cpu: Workers = 1
    gpu: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        return float(v)


class BudgetSpec(_Section):
    """Resource budget as ratios of the unpruned network (latency in milliseconds)."""

    flops: Ratio | None = None
    params: Ratio | None = None
    latency_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.flops is None and self.params is None and self.latency_ms is None:
            raise ValueError("set at least one of flops, params, latency_ms")
        return self


MAX_ROUND_TO = 1024


class SpaceSpec(_Section):
    """The search space. `exclude`: module names or fnmatch patterns whose output channels are never
    pruned; `bounds`: {group name or pattern: [min_keep, max_keep]} per group (keep ratios before
    rounding); `round_to`: kept channels are multiples of it (null: the search and its finalists
    round to 4, the magnitude anchor keeps exact counts, as before these keys existed)."""

    step: Annotated[float, Field(ge=MIN_STEP, le=0.5, allow_inf_nan=False)] = 0.1
    min_keep: Ratio = 0.2
    criterion: Literal["l1", "l2", "bn_scale", "fpgm", "taylor", "random"] = "l1"
    exclude: list[str] = Field(default_factory=list)
    bounds: dict[str, list[float]] = Field(default_factory=dict)
    round_to: Annotated[int, Field(ge=1, le=MAX_ROUND_TO)] | None = None

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip():
                raise ValueError(
                    "empty module name: give module names like 'layer1.0.conv1' or patterns like 'layer1.*'"
                )
        return v

    @model_validator(mode="after")
    def _bounds(self) -> SpaceSpec:
        for key, pair in self.bounds.items():
            if not key.strip():
                raise _field_error(("bounds",), key, "empty group name")
            ok = (
                len(pair) == 2
                and not any(isinstance(x, bool) for x in pair)
                and all(math.isfinite(x) for x in pair)
                and 0 < pair[0] <= pair[1] <= 1
            )
            if not ok:
                raise _field_error(
                    ("bounds", key),
                    pair,
                    f"must be [min_keep, max_keep] with 0 < min_keep <= max_keep <= 1, got {_fmt(pair)}",
                )
        return self


class EncoderSpec(_Section):
    objective: Literal["sacp", "effect"] = "effect"  # effect ranked better: benchmarks/results/ranking.md
    epochs: Epochs = 50
    strategies: Strategies = 512


class SearchSpec(_Section):
    candidates: Candidates = 500
    sampler: Literal["tpe", "random", "nsga2", "gp", "qmc"] = "tpe"
    workers: Workers = 2
    seed: Seed = 0
    ranker: Literal["similarity", "adaptive_bn", "code_agreement", "l1_retained", "random"] = "similarity"
    rerank: Literal["similarity", "adaptive_bn", "code_agreement", "l1_retained", "random"] | None = None
    rerank_top: Candidates = 32
    rounds: Rounds = 2  # the space narrows around the best candidates of the earlier rounds
    elite: Candidates = 16  # how many of the best candidates set the narrowed ranges
    # One finalist slot goes to the budget's global-magnitude allocation (pipeline.phase_anchor);
    # null: all finalists come from the search.
    anchor: Literal["magnitude"] | None = "magnitude"
    # per ranker actor (Ray): {cpu: 1, gpu: 0} as before; gpu > 0 scores on that GPU
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


class FinetuneSpec(_Augmentation):
    """How the finalists are fine-tuned; `augment` lets them use the base network's recipe
    (whether it pays depends on the structure: benchmarks/results/finetune_recipe_aug8.jsonl);
    `distill` > 0 adds that weight times the distance of the finalist's codes to the unpruned
    network's (MSE of tanh outputs) to the hash loss."""

    top: Finalists = 4
    epochs: Epochs = 5
    lr: LearningRate = 0.001
    batch_size: BatchSize = 128
    early_stop: Literal["asha"] | None = "asha"
    augment: bool = False
    hflip: bool = False
    distill: LossWeight = 0.0
    # per finalist trial (Ray Tune): {cpu: 1, gpu: 0} as before; gpu 0.25 = four trials per GPU
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


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
        if v is not None and not valid_name(v):
            raise ValueError(f"must match {NAME_RE.pattern} (letters, digits, '_', '.', '-'), got {_fmt(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
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
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
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
    lo = hi = None
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
    return spec


# --- YAML ----------------------------------------------------------------------------------------
# A spec is a few dozen values. Aliases let a 1 KB file stand for billions of values (the
# "billion laughs": 9 levels of 9 aliases = 9**9 leaves), which every later step that walks the
# value (validation, the error line, json for the storage) would expand; so the expanded size of
# the document is bounded before anything is built from it.
MAX_YAML_VALUES = 100_000  # values (scalars, lists, mappings) once every alias is expanded
MAX_YAML_ALIASES = 10_000  # uses of an anchor
MAX_YAML_DEPTH = 100  # nesting levels


class YamlRefused(yaml.YAMLError):
    """A YAML document refused before it is built (alias bomb, recursion, too deep): one line."""

    def __init__(self, problem: str, detail: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.detail, self.mark = problem, detail, mark

    def __str__(self) -> str:
        where = f" at line {self.mark.line + 1}" if self.mark is not None else ""
        return f"{self.problem}{where} ({self.detail})"


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose alias expansion is too large, recursive or too deep, in time
    proportional to the graph (the file), not to its expansion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    visiting: set[int] = set()
    aliases = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        if finished:
            visiting.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_VALUES:
                raise YamlRefused(
                    "too many YAML aliases",
                    f"they expand the document to more than {MAX_YAML_VALUES:,} values",
                    node.start_mark,
                )
            if depth[key] > MAX_YAML_DEPTH:
                raise YamlRefused("YAML nested too deeply", f"more than {MAX_YAML_DEPTH} levels", node.start_mark)
            continue
        if key in size:  # a node met again: an alias
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise YamlRefused(
                    "too many YAML aliases", f"more than {MAX_YAML_ALIASES:,} uses of anchors", node.start_mark
                )
            continue
        if key in visiting:
            raise YamlRefused("recursive YAML alias", "an anchor is used inside itself", node.start_mark)
        visiting.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children)


class SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml.safe_load's loader (libyaml when available) that also refuses duplicate keys (YAML
    would keep the last one silently), integers Python cannot print, and documents whose aliases
    expand to too many values (see _check_expansion)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding keys is meant
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # unhashable: the base class words it
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_fmt(key)}, first at line {first[key] + 1}", key_node.start_mark
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more than 4300 digits
            raise yaml.constructor.ConstructorError(
                None, None, "integer with too many digits", node.start_mark
            ) from None


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def safe_yaml_load(text: str) -> Any:
    """yaml.safe_load with SpecLoader's refusals (yaml.YAMLError subclasses)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML spec file (paths inside it are relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec {str(path)!r}: file not found")
    try:
        data = safe_yaml_load(path.read_text())
    except YamlRefused as exc:
        raise SpecError(f"spec {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"spec {str(path)!r}: not valid YAML{where} ({problem})") from None
    except RecursionError:  # the pure-Python parser (no libyaml) on very deep nesting
        raise SpecError(f"spec {str(path)!r}: YAML nested too deeply") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec {str(path)!r}: not a text file") from None
    return parse_spec(data, base_dir=path.parent)


def spec_from_json(text_or_dict: str | dict[str, Any]) -> StudySpec:
    """Rebuild a spec stored in a study (already validated once, paths already absolute)."""
    data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return parse_spec(data)
