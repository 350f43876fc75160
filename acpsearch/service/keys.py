"""Every key acpsearch stores in Optuna storage, and the version of that layout.

A study is Optuna's study plus acpsearch's attributes: study user attributes (its spec, state,
lease, phase records, winner, ...), trial user attributes (a candidate's score, a finalist's
mAP, ...) and one system attribute (the objective names optuna-dashboard shows). Their names
live here and nowhere else, so that a change of the layout is one change and one version bump.

SCHEMA_VERSION is the layout a release writes. `submit` stores it in every study it creates;
a study without it was written before the key existed and is version 1. A study written by a
newer release (a higher version) is refused with one line instead of being misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from acpsearch.errors import StorageError

SCHEMA_VERSION = 1
UNVERSIONED = 1  # a study stored without SCHEMA (every study of release 0.1.0) has this layout

# --- study user attributes -----------------------------------------------------------------------
SCHEMA = "schema_version"
KIND = "kind"  # SEARCH_KIND or FINETUNE_KIND
SPEC = "spec"  # the validated spec, StudySpec.to_dict()
STATE = "state"  # one of STATES
SUBMITTED_AT = "submitted_at"
STARTED_AT = "started_at"
FINISHED_AT = "finished_at"
ERROR = "error"  # the first line of what stopped the study
TRACEBACK = "traceback"
LEASE = "lease"  # {holder, expires}: which runner works on the study (service/lease.py)
RUNS = "runs"  # [{holder, started, ended, outcome}]: who ran the study when
RAY = "ray"  # {address, cpus, local, job} of the Ray cluster of the last run
WINNER = "winner"  # the winner's record (val/test mAP, ratios, costs, latency, ...)
FINETUNE_STUDY = "finetune_study"  # the name of the companion study holding the finalists
PARENT = "parent"  # on the companion study: the name of its search study
LATENCY_COMPARE = "latency.base_vs_winner"  # one line: base vs winner latency, timed interleaved
FINETUNE_EPOCHS = "finetune.epochs_spent"  # fine-tuning epochs the finalists trained, all trials together
FINETUNE_RUNGS = "finetune.rungs"  # successive halving: [{rung, size, epochs, finalists}] (candidate numbers)
FRONT = "front"  # joint search: the candidates on the FLOPs x bits x score Pareto front
CODE_LENGTHS = "code.lengths"  # phase shorten: [{bits, val_map, test_map, ...}] per code length
TRUST = "trust"  # did the ranking predict the finalists' validation metric (service/trust.py)

# values of KIND
SEARCH_KIND = "acpsearch-search"
FINETUNE_KIND = "acpsearch-finetune"

# values of STATE
SUBMITTED, RUNNING, DONE, FAILED, INTERRUPTED = "submitted", "running", "done", "failed", "interrupted"
STATES = (SUBMITTED, RUNNING, DONE, FAILED, INTERRUPTED)

_PHASE_PREFIX = "phase."
_WINNER_PREFIX = "winner."
_BASE_PREFIX = "base."
_CONSTRAINT_PREFIX = "constraint."
_TRUST_PREFIX = "trust."


def phase(name: str) -> str:
    """The record of a finished phase: {done, seconds, at, ...details}."""
    return _PHASE_PREFIX + name


def winner(key: str) -> str:
    """One flat value of the winner, shown as its own column by optuna-dashboard."""
    return _WINNER_PREFIX + key


def base(key: str) -> str:
    """One flat value of the base network, shown as its own column by optuna-dashboard."""
    return _BASE_PREFIX + key


def code_length(bits: int, key: str) -> str:
    """One flat value of the winner shortened to `bits` (phase shorten), e.g. code.16bits.test_map."""
    return f"code.{int(bits)}bits.{key}"


def trust(key: str) -> str:
    """One flat value of the trust record (spearman, top1_hit, winner_source)."""
    return _TRUST_PREFIX + key


def constraint(key: str) -> str:
    """One budget constraint (a candidate trial's margin to the budget, as the dashboard shows it)."""
    return _CONSTRAINT_PREFIX + key


# --- trial user attributes -----------------------------------------------------------------------
T_SOURCE = "source"  # "search" or "anchor:<kind>" (candidate trials)
T_CANDIDATE = "candidate"  # a finalist's candidate trial number
T_SCORE = "score"
T_VAL_MAP = "val_map"
T_VAL_MAP_BEFORE = "val_map_before_finetune"
T_TEST_MAP = "test_map"
T_TEST_MAP_TOPK = "test_map_topk"
# a classification study's finalists and winner (top-5 only with 20 or more classes)
T_VAL_ACC = "val_acc"
T_VAL_ACC_BEFORE = "val_acc_before_finetune"
T_TEST_ACC = "test_acc"
T_VAL_ACC_TOP5 = "val_acc_top5"
T_TEST_ACC_TOP5 = "test_acc_top5"
T_TOPK = "topk"
T_FLOPS = "flops"
T_PARAMS = "params"
T_FLOPS_RATIO = "flops_ratio"
T_PARAMS_RATIO = "params_ratio"
T_MEASURED_FLOPS = "measured_flops"
T_MEASURED_PARAMS = "measured_params"
T_MEASURED_FLOPS_RATIO = "measured_flops_ratio"
T_MEASURED_PARAMS_RATIO = "measured_params_ratio"
T_LATENCY_MS = "latency_ms"
T_EPOCHS_RUN = "epochs_run"
T_STOPPED_EARLY = "stopped_early"
T_WINNER = "winner"
T_KEEP = "keep"  # a candidate's rounded keep ratios {group: ratio}
T_PATH = "path"  # a finalist's checkpoint
T_PR_CURVE = "pr_curve"
T_FEASIBLE = "feasible"
T_ROUND = "round"
T_ROUND_TO = "round_to"
T_ATTEMPT = "attempt"
T_RETRY_OF = "retry_of"  # a queued retry: the number of the failed trial it repeats
T_FAIL_REASON = "fail_reason"
T_FAILED_ATTEMPTS = "failed_attempts"
T_RAY_NODE = "ray_node"
T_DEVICE = "device"
T_RUNG = "rung"  # successive halving: the rung a fine-tune trial belongs to (0 = all finalists, shortest)
T_BITS = "bits"  # a candidate's (finalist's, winner's) code length: the hash layer's kept outputs


@dataclass(frozen=True)
class TaskMetric:
    """The metric a study's task is scored by: its validation / test keys and its name in text."""

    val: str
    test: str
    before: str  # a finalist's validation value before fine-tuning
    label: str  # "mAP" or "accuracy", as the report, `show` and the dashboard notes say it


RETRIEVAL_METRIC = TaskMetric(T_VAL_MAP, T_TEST_MAP, T_VAL_MAP_BEFORE, "mAP")
CLASSIFICATION_METRIC = TaskMetric(T_VAL_ACC, T_TEST_ACC, T_VAL_ACC_BEFORE, "accuracy")


def metric_of(task: str | None) -> TaskMetric:
    """The metric of a study's task (a spec stored without `task` is retrieval)."""
    return CLASSIFICATION_METRIC if task == "classification" else RETRIEVAL_METRIC


# --- study system attributes ---------------------------------------------------------------------
# Only the objective names, under Optuna's own key (what study.set_metric_names writes, which
# optuna-dashboard reads): optuna_adapter.metric_names_attr(). optuna-dashboard keeps its notes
# and plots as system attributes too, under keys of its own.


# --- the version ---------------------------------------------------------------------------------
def schema_version(attrs: Mapping[str, Any]) -> int:
    """The layout version of a study from its user attributes (no key: UNVERSIONED)."""
    value = attrs.get(SCHEMA, UNVERSIONED)
    return value if isinstance(value, int) and not isinstance(value, bool) else UNVERSIONED


def check_schema(name: str, attrs: Mapping[str, Any]) -> None:
    """Refuse a study written by a newer release: its keys may mean something this one misreads."""
    found = schema_version(attrs)
    if found > SCHEMA_VERSION:
        raise StorageError(
            f"study {name!r}: stored with storage schema version {found}, this acpsearch reads up to "
            f"version {SCHEMA_VERSION}; upgrade acpsearch to open it"
        )
