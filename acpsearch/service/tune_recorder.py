"""The Ray Tune callback of the fine-tuning phase: it writes each finalist's reported val mAP, node,
device and failed attempts into the finalist's Optuna trial (live curves in the dashboard)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from acpsearch.service import keys


def _trial_error(trial: Any) -> str:
    """One line saying why a Tune trial failed (its error file's last line, else its path)."""
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else str(path)
    except OSError:
        return str(path or "error")


class TuneRecorder:
    """Ray Tune callback on the driver: writes each reported val mAP (a classifier: val top-1,
    `metric` val_acc) of a finalist into its Optuna trial as an intermediate value (live curves in
    the dashboard)."""

    def __init__(self, storage: Any, trial_ids: dict[int, int], metric: str = "val_map") -> None:
        from ray.tune import Callback

        recorder = self

        class _CB(Callback):
            def on_trial_result(
                self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
            ) -> None:
                recorder.result(trial, result)

            def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                recorder.complete(trial)

            def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                recorder.errors[trial.config["finalist"]["number"]] = _trial_error(trial)

            def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                recorder.recovered(trial)

        self.callback = _CB()
        self.storage = storage
        self.trial_ids = trial_ids
        self.metric = metric
        self.reported: dict[int, int] = {}
        self.completed: set[int] = set()
        self.errors: dict[int, str] = {}
        self.nodes: dict[int, str] = {}
        self.devices: dict[int, str] = {}
        self.retries: dict[int, list[str]] = {}

    def recovered(self, trial: Any) -> None:
        """Tune restarts a finalist whose worker died (FailureConfig.max_failures): the Optuna
        trial keeps running and records each failed attempt's reason."""
        number = trial.config["finalist"]["number"]
        self.retries.setdefault(number, []).append(_trial_error(trial))
        self.storage.set_trial_user_attr(self.trial_ids[number], keys.T_FAILED_ATTEMPTS, self.retries[number])

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        number = trial.config["finalist"]["number"]
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        val = result.get(self.metric)
        if val is not None and math.isfinite(val):
            self.storage.set_trial_intermediate_value(self.trial_ids[number], epoch, float(val))
        self.reported[number] = max(self.reported.get(number, -1), epoch)
        if result.get("node") and self.nodes.get(number) != result["node"]:
            self.nodes[number] = str(result["node"])
            self.storage.set_trial_user_attr(self.trial_ids[number], keys.T_RAY_NODE, self.nodes[number])
        if result.get("device") and self.devices.get(number) != result["device"]:  # cpu, or cuda (a GPU share)
            self.devices[number] = str(result["device"])
            self.storage.set_trial_user_attr(self.trial_ids[number], keys.T_DEVICE, self.devices[number])

    def complete(self, trial: Any) -> None:
        self.completed.add(trial.config["finalist"]["number"])
