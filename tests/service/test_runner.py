"""The runner's one phase loop (skip what is done, time, run, store the returned record, report) and
the sampler factory, without Ray: fake phases on an in-memory Optuna study."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import optuna
import pytest

from acpsearch.errors import SpecError
from acpsearch.service import study as st
from acpsearch.service.context import Record, StudyRun
from acpsearch.service.progress import SilentReporter
from acpsearch.service.runner import run_phase
from acpsearch.service.samplers import SAMPLERS, make_sampler


class Recording(SilentReporter):
    def __init__(self) -> None:
        self.events: list[tuple[str, float, bool]] = []

    def done(self, name: str, seconds: float, skipped: bool = False) -> None:
        self.events.append((name, seconds, skipped))


def _run(tmp_path: Path) -> StudyRun:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s")
    return StudyRun(
        storage=None,
        url="",
        study=study,
        spec=None,  # type: ignore[arg-type]  # the fake phases read no spec
        artifacts=tmp_path,
        store=None,
        reporter=Recording(),
        workers=1,
        allow=None,
        splits=None,
    )


def _phase(name: str, record: Record, calls: list[dict[str, Any]], attach: bool = False) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.NAME = name  # type: ignore[attr-defined]

    def run(ctx: StudyRun, records: dict[str, dict[str, Any]], ray_mod: Any) -> Record:
        calls.append(dict(records))
        return record

    mod.run = run  # type: ignore[attr-defined]
    if attach:
        mod.attach = lambda ctx, rec: dataclasses.replace(ctx, workers=rec["workers"])  # type: ignore[attr-defined]
    return mod


def test_a_phase_runs_once_and_its_record_is_stored(tmp_path):
    ctx = _run(tmp_path)
    calls: list[dict[str, Any]] = []
    phase = _phase("one", Record({"path": "x", "workers": 3}), calls, attach=True)
    after, rec = run_phase(ctx, phase, {"base": {"done": True}}, None)
    assert calls == [{"base": {"done": True}}]  # earlier records reach the phase
    stored = ctx.study.user_attrs["phase.one"]
    assert stored == rec and stored["done"] is True and stored["path"] == "x" and "at" in stored
    assert after.workers == 3 and ctx.workers == 1  # attach made a new run; the old one is unchanged
    assert [e[0] for e in ctx.reporter.events] == ["one"] and ctx.reporter.events[0][2] is False
    again, rec2 = run_phase(ctx, phase, {}, None)  # done: skipped, not run, but still attached
    assert len(calls) == 1 and rec2 == stored and again.workers == 3
    assert ctx.reporter.events[-1] == ("one", stored["seconds"], True)


def test_a_phase_with_nothing_to_do_is_stored_with_zero_seconds_and_not_reported(tmp_path):
    ctx = _run(tmp_path)
    _, rec = run_phase(ctx, _phase("rerank", Record({"ranker": None}, seconds=0.0), []), {}, None)
    assert rec["seconds"] == 0.0 and rec["ranker"] is None and st.phase_done(ctx.study, "rerank") == rec
    assert ctx.reporter.events == []


def test_every_sampler_name_builds_and_others_list_the_choices():
    for name in SAMPLERS:
        assert isinstance(make_sampler(name, 0), optuna.samplers.BaseSampler)
    with pytest.raises(SpecError, match=r"unknown sampler 'cmaes' \(one of: tpe, random, nsga2, qmc, gp\)"):
        make_sampler("cmaes", 0)
