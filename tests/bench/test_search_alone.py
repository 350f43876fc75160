"""The search-alone table's verdicts: a margin inside two standard errors is a tie, a target is met
only with >= 10 seeds per side, and rows from different base networks are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import search_alone as sa


def _row(method: str, xs: list[float], budget: float = 0.5, recipe: str = "ft4", base: float = 0.82) -> dict:
    return {"net": "resnet20", "budget": budget, "recipe": recipe, "method": method, "test_map": xs,
            "source": "x", "base_test_map": base}  # fmt: skip


def _seeds(mean: float, n: int = 10, spread: float = 0.001) -> list[float]:
    return [mean + spread * (i - (n - 1) / 2) / n for i in range(n)]


def test_fifty_percent_target_is_tp_plus_three_tenths_of_a_point() -> None:
    rows = [_row("acpsearch", _seeds(0.8200)), _row("tp_global_mag", _seeds(0.8160)), _row("unpruned", _seeds(0.8170))]
    (v,) = sa.verdicts(rows)
    assert v["against"] == "tp_global_mag" and v["standing"] == "win"
    assert v["diff"] == pytest.approx(0.004) and v["target_met"]
    # 0.2 pt is a clear win by standard errors but not the 0.3 pt the target asks for
    rows[0] = _row("acpsearch", _seeds(0.8180))
    (v,) = sa.verdicts(rows)
    assert v["standing"] == "win" and not v["target_met"] and v["target_above_ceiling"]


def test_inside_two_standard_errors_is_a_tie_and_few_seeds_are_no_verdict() -> None:
    rows = [_row("acpsearch", _seeds(0.8170, spread=0.03)), _row("tp_global_mag", _seeds(0.8160, spread=0.03))]
    (v,) = sa.verdicts(rows)
    assert v["standing"] == "tie" and not v["target_met"]
    rows = [_row("acpsearch", _seeds(0.8300, n=5)), _row("tp_global_mag", _seeds(0.8160))]
    (v,) = sa.verdicts(rows)
    assert v["standing"] == "win" and not v["target_met"] and v["verdict_scale"].startswith("CPU scale")


def test_quarter_budget_measures_against_the_best_baseline() -> None:
    rows = [
        _row("acpsearch", _seeds(0.800), 0.25),
        _row("tp_global_mag", _seeds(0.782), 0.25),
        _row("adaptive_bn", _seeds(0.790), 0.25),
        _row("acpsearch", _seeds(0.800), 0.25, "kd16"),
        _row("adaptive_bn", _seeds(0.799), 0.25, "kd16"),
    ]
    ft4, kd = sorted(sa.verdicts(rows), key=lambda v: v["recipe"])
    assert ft4["against"] == "adaptive_bn" and ft4["margin_needed"] == 0.02 and not ft4["target_met"]
    assert kd["margin_needed"] == 0.0 and kd["target_met"]


def test_rows_from_two_bases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="different base networks"):
        sa.check_bases([_row("acpsearch", [0.81], base=0.8198), _row("tp_global_mag", [0.81], base=0.8184)])
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": [_row("tp_global_mag", [0.81, 0.82])], "base_test_map": 0.82}))
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit):  # the same (net, budget, recipe, method) twice
        sa.main(["--rows", str(rows), "--rows", str(rows), "--out", str(out)])
    assert sa.main(["--rows", str(rows), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["test_map"] == [0.81, 0.82]
