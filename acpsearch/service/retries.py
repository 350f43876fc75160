"""Optuna trials a run could not finish: FAIL with a reason, and their keep ratios queued again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acpsearch.service import keys
from acpsearch.service import optuna_adapter as adapter

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

MAX_ATTEMPTS = 3  # a candidate or finalist whose worker dies is tried at most this often


def fail_leftovers(study: Study, reason: str, waiting: bool = True) -> list[FrozenTrial]:
    """Trials a dead runner left RUNNING (and WAITING, unless `waiting=False`: queued retries
    that the next ask() picks up) become FAIL: Optuna cannot resume a trial. Returns them."""
    import optuna

    states = (optuna.trial.TrialState.RUNNING,) + ((optuna.trial.TrialState.WAITING,) if waiting else ())
    left = []
    for t in study.get_trials(deepcopy=False, states=states):
        storage = adapter.storage_of(study)
        storage.set_trial_user_attr(adapter.trial_id(t), keys.T_FAIL_REASON, reason)
        storage.set_trial_state_values(adapter.trial_id(t), optuna.trial.TrialState.FAIL)
        left.append(t)
    return left


def requeue(study: Study, trials: list[FrozenTrial]) -> int:
    """Enqueue the keep ratios of failed candidates again (Optuna's enqueue_trial: the next ask()
    proposes exactly them), each at most MAX_ATTEMPTS times in all. Returns how many."""
    n = 0
    for t in trials:
        attempt = int(t.user_attrs.get(keys.T_ATTEMPT, 1))
        if t.params and attempt < MAX_ATTEMPTS:
            study.enqueue_trial(dict(t.params), user_attrs={keys.T_ATTEMPT: attempt + 1, keys.T_RETRY_OF: t.number})
            n += 1
    return n
