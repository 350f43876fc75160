"""Truth in the outputs: speed-up wording, interleaved latency, rounded keep ratios, plain progress
lines without a terminal, errors as JSON under --json. Everything runs for real (tiny modules, a
real SQLite storage, the real CLI in-process)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from acpsearch.cli import run
from acpsearch.service.report import markdown, speedup
from acpsearch.service.study import objective_name, round_ratio, round_ratios


# --- speed-up wording ------------------------------------------------------------------------------
def test_speedup_says_slower_when_slower():
    assert speedup(23.67, 24.66) == "1.04x slower"  # the demo's case: never "0.96x faster"
    assert speedup(25.0, 20.0) == "1.25x faster"
    assert speedup(10.0, 10.02) == "no measurable difference"  # 1.00x either way
    assert speedup(None, 5.0) == "–" and speedup(5.0, 0) == "–"


def test_speedup_within_the_spread_is_no_measurable_difference():
    # medians differ by 4%, but the interleaved rounds overlap: noise, not a difference
    assert speedup(23.67, 24.66, (23.0, 25.1), (23.9, 25.4)) == "no measurable difference"
    assert speedup(30.0, 20.0, (29.0, 31.0), (19.5, 20.5)) == "1.50x faster"
    assert speedup(20.0, 30.0, (19.5, 20.5), (29.0, 31.0)) == "1.50x slower"


# --- interleaved latency ---------------------------------------------------------------------------
class _Sleepy(nn.Module):
    """A module whose forward takes a known extra time (so the medians can be told apart)."""

    def __init__(self, extra_s: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.extra_s = extra_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.extra_s)
        return self.conv(x)


def test_compare_latency_alternates_and_returns_medians_and_spread():
    from acpsearch.search.latency import compare_latency

    threads = torch.get_num_threads()
    res = compare_latency(
        {"base": _Sleepy(0.03), "winner": _Sleepy(0.0)}, [1, 1, 8, 8], batch=2, rounds=5, repeats=2, warmup=1, threads=1
    )
    assert torch.get_num_threads() == threads  # restored
    assert res["order"] == [
        ["base", "winner"],
        ["winner", "base"],
        ["base", "winner"],
        ["winner", "base"],
        ["base", "winner"],
    ]
    assert res["batch"] == 2 and res["threads"] == 1 and res["rounds"] == 5
    for m in res["models"].values():
        assert len(m["rounds_ms"]) == 5
        assert m["min_ms"] <= m["q1_ms"] <= m["median_ms"] <= m["q3_ms"] <= m["max_ms"]
    b, w = res["models"]["base"], res["models"]["winner"]
    assert b["median_ms"] >= 30.0 and w["median_ms"] < b["median_ms"]
    with pytest.raises(ValueError):
        compare_latency({}, [1, 1, 8, 8])


# --- rounding ---------------------------------------------------------------------------------------
def test_keep_ratios_are_rounded():
    assert 0.2 + 4 * 0.1 == 0.6000000000000001  # what Optuna's stepped floats store
    assert round_ratio(0.2 + 4 * 0.1) == 0.6 and round_ratio(3) == 3 and round_ratio(None) is None
    import numpy as np

    assert round_ratios({"a": 0.6000000000000001, "b": np.float64(0.30000000000000004)}) == {"a": 0.6, "b": 0.3}


def test_report_shows_rounded_ratios_winner_line_and_slower():
    rep = {
        "study": "s",
        "finetune_study": "s.finetune",
        "candidates": 3,
        "finalists": [],
        "phase_seconds": {},
        "spec": {"search": {"ranker": "similarity"}, "model": {"zoo": "resnet20"}},
        "base": {"test_map": 0.8, "latency_ms": 23.67, "flops": 40_000_000},
        "winner": {
            "test_map": 0.79,
            "val_map": 0.81,
            "finetune_trial": 1,
            "candidate": 7,
            "latency_ms": 24.66,
            "measured_flops": 19_920_000,
            "ratios": {"layer1": 0.6000000000000001},
            "kept": {"layer1": 10},
            "channels": {"layer1": 16},
        },
    }
    note = markdown(rep)
    assert "| `layer1` | 16 | 10 | 0.6 |" in note and "0.6000000000000001" not in note
    assert "1.04x slower" in note and "faster" not in note
    assert "**Winner: trial 1 of `s.finetune`**" in note
    assert (
        "Best Trial here = highest ranker score (`similarity`), not the winner; the winner is trial 1 of "
        "s.finetune" in note
    )
    assert "49.8% of base" in note
    rep["winner"]["latency_compare"] = {
        "rounds": 7,
        "base_median_ms": 23.67,
        "base_q1_ms": 23.1,
        "base_q3_ms": 25.0,
        "winner_median_ms": 24.66,
        "winner_q1_ms": 23.9,
        "winner_q3_ms": 25.3,
    }
    note = markdown(rep)
    assert "| 23.67 (IQR 23.10–25.00) | 24.66 (IQR 23.90–25.30) | no measurable difference |" in note
    assert "| latency (ms, batch 32, 1 thread; median of 7 interleaved rounds, IQR) |" in note
    rep["winner"]["latency_compare"].update(winner_q1_ms=25.2, winner_q3_ms=25.5, winner_median_ms=25.3)
    assert "| 1.07x slower |" in markdown(rep)
    assert objective_name("similarity") == "similarity score (ranker, not mAP)"


# --- progress without a terminal -----------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_plain_reporter_prints_start_progress_eta_and_done():
    from acpsearch.commands.progress import PlainReporter

    buf, clock = io.StringIO(), _Clock()
    rep = PlainReporter(buf, clock=clock)
    rep.phase("search: similarity", total=300)
    for _i in range(40):
        clock.t += 3.075  # 123 s for 40 candidates
        rep.advance(1, best=0.9123)
    rep.log("a note")
    clock.t += 1.0
    rep.done("search", 124.0)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[      0s] search: similarity: started (300 candidates)"
    # every 10% (30 of 300) or 30 s: 30 s first comes at candidate 10
    progress = [ln for ln in lines if "/300 candidates" in ln]
    assert progress[0].startswith("[     31s] search: 10/300 candidates, ETA ")
    assert "[    123s] search: 40/300 candidates, ETA 13m20s  best=0.9123" in lines
    assert lines[-2] == "[    123s] a note" and lines[-1] == "[    124s] search: done in 2m04s"
    # the 10% mark is what prints when progress is fast
    buf2, clock2 = io.StringIO(), _Clock()
    rep2 = PlainReporter(buf2, clock=clock2)
    rep2.phase("finetune: 3 finalists x 4 epochs", total=20)
    for _ in range(20):
        clock2.t += 0.1
        rep2.advance(1)
    counts = [ln.split("finetune: ")[1].split(" ")[0] for ln in buf2.getvalue().splitlines()[1:]]
    assert counts == [f"{i}/20" for i in range(2, 21, 2)]
    assert buf2.getvalue().splitlines()[-1].endswith("finetune: 20/20 finalists")  # no ETA at the end


def test_rich_reporter_on_a_non_tty_stream_prints_plain_lines(monkeypatch):
    from acpsearch.commands import progress

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return False

    buf = Stream()
    rep = progress.RichReporter(stream=buf)
    assert rep.plain is not None
    rep.plain.stream = buf
    rep.phase("base: training", total=2)
    rep.advance(1, val_map=0.5)
    rep.advance(1, val_map=0.6)
    rep.done("base", 65.0)
    rep.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("base: training: started (2 epochs)")
    assert lines[1].endswith("base: 1/2 epochs, ETA 0s  val_map=0.5000") or "base: 1/2 epochs, ETA" in lines[1]
    assert lines[2].endswith("base: 2/2 epochs  val_map=0.6000")
    assert lines[3].endswith("base: done in 1m05s")
    assert progress.RichReporter(quiet=True, stream=buf).plain is None  # --json: silent


# --- errors as JSON under --json -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "{tmp}/missing.yaml", "--json"],
        ["show", "no-such-study", "--json"],
        ["run", "no-such-study", "--json"],
        ["status", "--json", "--storage", " "],
        ["show", "x", "--json", "--bogus-option"],
    ],
)
def test_bad_input_under_json_is_one_json_object(argv, tmp_path: Path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--storage" not in args:
        args += ["--storage", f"sqlite:///{tmp_path / 's.db'}"]
    assert run(args) == 2
    cap = capsys.readouterr()
    err_lines = cap.err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ")
    doc = json.loads(cap.out)
    assert doc == {"error": err_lines[0][len("error: ") :], "exit": 2}


def test_bad_input_without_json_prints_nothing_on_stdout(tmp_path: Path, capsys):
    assert run(["show", "no-such-study", "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("error: study 'no-such-study'")
