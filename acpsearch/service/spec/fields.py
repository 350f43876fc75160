"""The building blocks of the spec sections: choice lists, bounds, field types, helpers.

The choices of a field come from the module that owns them (losses from acpsearch.hashing.losses,
data sets from acpsearch.hashing.data, rankers from acpsearch.search.rankers), so a new loss, data
set or ranker is accepted by the spec without a second list to keep in step; a refused value's
error line lists them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from acpsearch.errors import SpecError
from acpsearch.errors import echo as _fmt
from acpsearch.hashing.data import DATASET_NAMES
from acpsearch.hashing.losses import LOSS_NAMES
from acpsearch.pruning.criteria import CRITERIA as PRUNING_CRITERIA
from acpsearch.search.rankers import RANKERS as RANKERS  # the spec's ranker choices
from acpsearch.service.samplers import SAMPLERS as SAMPLERS  # owned by acpsearch.service.samplers

DATASETS = DATASET_NAMES
LIST_KEYS = ("train_list", "database_list", "test_list", "val_list")
DATASETS_WITH_PATH = ("cifar10", "folder", "npz")
LOSSES = LOSS_NAMES  # the hash losses; a classifier's cross-entropy: spec/task.py
CRITERIA = PRUNING_CRITERIA  # owned by acpsearch.pruning.criteria


def choice(names: tuple[str, ...]) -> Any:
    """The field type "one of `names`" (a Literal built from a registry tuple): a refused value
    is worded by pydantic with every choice, e.g. "input should be 'csq', 'hashnet' or 'dpsh'"."""
    return Literal[names]


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
    return str(name)


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


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_ROUND_TO = 1024
