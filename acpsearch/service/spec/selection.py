"""The spec's options for choosing and fine-tuning the finalists (sections of `finetune`):
`diversity` (finalists chosen for diversity among the best-scored candidates), `halving`
(successive halving over growing fine-tuning epochs), `epoch_budget` (a cap on the epochs the
fine-tuning phase may spend, checked when the spec is read) and `sparsity` (a group-sparsity
training of the unpruned network on the channels a finalist removes, before the cut)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from acpsearch.search.halving import schedule, total_epochs
from acpsearch.service.spec.fields import (
    MAX_EPOCHS,
    Candidates,
    Epochs,
    Finalists,
    LearningRate,
    _field_error,
    _Section,
)


class DiversitySpec(_Section):
    """Finalists by greedy max-min distance of their kept-channel fractions, among the `pool`
    best-scored distinct candidates (the best-scored one is always a finalist)."""

    pool: Candidates = 64


class HalvingSpec(_Section):
    """Successive halving: every finalist fine-tunes `min_epochs`, the best 1/`eta` of them
    fine-tune again for eta times longer, ... until `final` finalists fine-tune finetune.epochs."""

    eta: Annotated[int, Field(ge=2, le=16)] = 2
    min_epochs: Epochs = 1
    final: Finalists = 2
    # after rung 0: a ridge fit of its validation values on kept fractions may give up to half of
    # rung 1's places to candidates not yet fine-tuned (acpsearch/search/refit.py)
    refit: bool = False


class SparsitySpec(_Section):
    """Before a finalist is cut: `steps` optimiser steps (learning rate `lr`) of the unpruned
    network on the hash loss plus `weight` x the summed L2 norms of the removed channels' groups."""

    steps: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    weight: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1e-3
    lr: LearningRate = 1e-3


EpochBudget = Annotated[int, Field(ge=1, le=MAX_EPOCHS * 1000)]


def planned_epochs(ft: Any) -> int:
    """The most fine-tuning epochs a `finetune` section can spend on finetune.top finalists:
    the halving schedule's sum, or top x epochs (ASHA may stop some earlier)."""
    if ft.halving is None:
        return int(ft.top) * int(ft.epochs)
    h = ft.halving
    return total_epochs(schedule(int(ft.top), h.eta, h.min_epochs, h.final, int(ft.epochs)))


def check_finetune(ft: Any) -> None:
    """The diversity pool must hold finetune.top finalists, a halving schedule must fit
    finetune.epochs, and the planned epochs the epoch budget (pydantic errors naming the field)."""
    if ft.diversity is not None and ft.diversity.pool < ft.top:
        raise _field_error(
            ("diversity", "pool"),
            ft.diversity.pool,
            f"must be >= finetune.top ({ft.top}): the finalists are chosen from the pool",
        )
    if ft.halving is not None:
        h = ft.halving
        try:
            schedule(int(ft.top), h.eta, h.min_epochs, h.final, int(ft.epochs))
        except ValueError as exc:
            raise _field_error(("halving",), h.model_dump(), f"{exc}: raise finetune.epochs or halving.final") from None
    if ft.epoch_budget is not None:
        planned = planned_epochs(ft)
        if planned > ft.epoch_budget:
            how = "the halving schedule" if ft.halving is not None else "finetune.top x finetune.epochs"
            raise _field_error(
                ("epoch_budget",),
                ft.epoch_budget,
                f"{how} needs {planned} fine-tuning epochs, more than the budget of {ft.epoch_budget}",
            )
