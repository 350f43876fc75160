"""The sections of a study spec (model, data, train, budget, space, encoder, search, finetune)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from acpsearch.errors import echo as _fmt
from acpsearch.hashing.data import PROTOCOL_DEFAULTS
from acpsearch.service.spec.fields import (
    CRITERIA,
    DATASETS,
    DATASETS_WITH_PATH,
    LIST_KEYS,
    LOSSES,
    MAX_ROUND_TO,
    MIN_STEP,
    RANKERS,
    SAMPLERS,
    BatchSize,
    Candidates,
    Epochs,
    Finalists,
    FiniteFloat,
    LearningRate,
    LossWeight,
    PerClass,
    Ratio,
    Rounds,
    Seed,
    Strategies,
    Workers,
    _field_error,
    _ints,
    _not_empty,
    _Section,
    choice,
)
from acpsearch.service.spec.selection import DiversitySpec, EpochBudget, HalvingSpec, SparsitySpec, check_finetune
from acpsearch.service.spec.task import CLASSIFICATION_LOSSES


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

    dataset: choice(DATASETS)  # type: ignore[valid-type]
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
    # none: a label-free study (implied by an unsupervised loss; spec/supervision.py); null: labels
    supervision: Literal["labels", "none"] | None = None

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

    # a hash loss (retrieval) or cross-entropy (classification: its default, spec/task.py)
    loss: choice(LOSSES) = "csq"  # type: ignore[valid-type]
    label_smoothing: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0  # classification only
    epochs: Epochs = 20
    lr: LearningRate = 0.001
    batch_size: BatchSize = 128
    augment: bool = False
    hflip: bool = False
    # where the base network is trained (and the base evaluated) by the runner: auto (cuda when
    # torch sees a GPU), cpu, cuda, cuda:N; `--device` of train / run / worker overrides it
    device: str = "cpu"
    # an unsupervised loss's auxiliary semantics (null: kmeans) and the tag file of aux: file
    aux: Literal["kmeans", "bovw", "file"] | None = None
    tags: str | None = None
    # loss odh: a classification checkpoint whose class matrix feeds the learned centres (left out:
    # the base phase trains a classifier on the same backbone first)
    teacher: str | None = None

    @field_validator("loss", mode="wrap")
    @classmethod
    def _loss(cls, v: Any, handler: Any) -> Any:
        """A hash loss, or a classifier's cross-entropy (which task takes which: spec/task.py)."""
        return v if isinstance(v, str) and v in CLASSIFICATION_LOSSES else handler(v)

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("loss") != "odh":
            raise ValueError("only with loss: odh (the classifier that feeds its learned centres)")
        return _not_empty(v, "leave it out to train the teacher classifier first")

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
    ops: Ratio | None = None  # float MACs + binary MACs / 64 (binary networks; docs/binary.md)
    bits: Annotated[int, Field(ge=1, le=4096)] | None = None  # code-length cap: searches the hash layer's outputs

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if all(v is None for v in (self.flops, self.params, self.latency_ms, self.ops, self.bits)):
            raise ValueError("set at least one of flops, params, latency_ms, ops, bits")
        return self


class SpaceSpec(_Section):
    """The search space. `exclude`: module names or fnmatch patterns whose output channels are never
    pruned; `bounds`: {group name or pattern: [min_keep, max_keep]} per group (keep ratios before
    rounding); `round_to`: kept channels are multiples of it (null: the search and its finalists
    round to 4, the magnitude anchor keeps exact counts, as before these keys existed)."""

    step: Annotated[float, Field(ge=MIN_STEP, le=0.5, allow_inf_nan=False)] = 0.1
    min_keep: Ratio = 0.2
    criterion: choice(CRITERIA) = "l1"  # type: ignore[valid-type]
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
    # effect's training signal: code agreement, its rank average with residual-branch damage, or the
    # validation mAP after `ft_steps` fine-tuning steps (docs/results/signals.md). Neither alternative
    # is the default: by the searched winner's fine-tuned mAP at 50% FLOPs (CPU scale, 5 seeds)
    # agreement+branch lost to agreement and ft_steps tied it (docs/results/search_alone.md)
    target: Literal["agreement", "agreement+branch", "ft_steps"] = "agreement"
    epochs: Epochs = 50
    strategies: Strategies = 512
    # target ft_steps: the optimiser steps of each training strategy's short fine-tune
    ft_steps: Annotated[int, Field(ge=1, le=100_000)] = 40

    @model_validator(mode="after")
    def _target(self) -> EncoderSpec:
        if self.target != "agreement" and self.objective != "effect":
            raise _field_error(("target",), self.target, "needs objective: effect (sacp learns no signal)")
        return self


class SearchSpec(_Section):
    candidates: Candidates = 500
    sampler: choice(SAMPLERS) = "tpe"  # type: ignore[valid-type]
    workers: Workers = 2
    seed: Seed = 0
    ranker: choice(RANKERS) = "similarity"  # type: ignore[valid-type]
    rerank: choice(RANKERS) | None = None  # type: ignore[valid-type]
    rerank_top: Candidates = 32
    rounds: Rounds = 2  # the space narrows around the best candidates of the earlier rounds
    elite: Candidates = 16  # how many of the best candidates set the narrowed ranges
    # One finalist slot goes to the budget's global-magnitude allocation (service/phases/anchor.py);
    # null: all finalists come from the search.
    anchor: Literal["magnitude"] | None = "magnitude"
    # per ranker actor (Ray): {cpu: 1, gpu: 0} as before; gpu > 0 scores on that GPU
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


class FinetuneSpec(_Augmentation):
    """How the finalists are fine-tuned; `augment` lets them use the base network's recipe
    (whether it pays depends on the structure: benchmarks/results/finetune_recipe_aug8.jsonl);
    `distill` > 0 adds that weight times the distance of the finalist's codes to the unpruned
    network's (MSE of tanh outputs) to the hash loss; for a classifier it is the weight alpha (in
    [0, 1]) of the temperature-softened KL distillation from the unpruned network."""

    top: Finalists = 4
    epochs: Epochs = 5
    lr: LearningRate = 0.001
    batch_size: BatchSize = 128
    early_stop: Literal["asha"] | None = "asha"
    augment: bool = False
    hflip: bool = False
    distill: LossWeight = 0.0
    # what validation, ASHA and the winner use (null: val_map, neighbour_map in a label-free study)
    select: Literal["val_map", "neighbour_map"] | None = None
    # per finalist trial (Ray Tune): {cpu: 1, gpu: 0} as before; gpu 0.25 = four trials per GPU
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    # finalists chosen for diversity, successive halving, a cap on the epochs spent (spec/selection.py)
    diversity: DiversitySpec | None = None
    halving: HalvingSpec | None = None
    epoch_budget: EpochBudget | None = None
    sparsity: SparsitySpec | None = None  # retrieval only

    @model_validator(mode="after")
    def _selection(self) -> FinetuneSpec:
        check_finetune(self)
        return self
