"""The search-alone table: the searched winner (``search.anchor: null``) against the unpruned
ceiling and the one-shot baselines, per network, FLOPs budget and fine-tuning recipe, with a
win / tie / loss verdict for each of the issue's targets.

Inputs are results that other benchmarks wrote, all measured on one base network per net:
- ``--rows FILE``: ``benchmarks/ceiling.py`` output (``{"rows": [{"net", "budget", "recipe",
  "method", "test_map": [one per seed], ...}]}``): the unpruned, Torch-Pruning global magnitude and
  uniform L1 rows;
- ``--sweep FILE[=LABEL]``: ``benchmarks/structure_sweep.py report --md X.md`` summaries (``X.json``):
  each method's candidate chosen on validation with its per-seed test mAP (the searched winner, random
  best-of-m, adaptive BN); with ``=LABEL`` the file's searched winner is a variant row named LABEL
  (e.g. another encoder target), judged against the same targets.

A sweep row whose base network's test mAP differs from the rows' base is refused: rows measured on
different bases cannot be compared. The output is ``benchmarks/results/search_alone.json``
(``{"rows": [...], "verdicts": [...]}``) and a markdown table.

Targets (issue: the search must win on its own), each against the searched winner's mean test mAP:
- 50% FLOPs, any recipe: >= Torch-Pruning global magnitude + 0.3 pt;
- 25% FLOPs, ``ft4``: >= the best baseline + 2 pt; 25%, a distillation recipe: >= the best baseline.
A margin within two standard errors of the difference is a tie whatever the target says, and a row
with fewer than 10 seeds is CPU scale, not a verdict.

    python -m benchmarks.search_alone --rows benchmarks/results/ceiling_cpu.json \\
        --sweep benchmarks/results/structure_sweep_noanchor_cpu.json --out benchmarks/results/search_alone.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, parser, standing, stats, write_json

BASELINES = ("tp_global_mag", "uniform_l1", "random_best_m", "adaptive_bn")
MIN_SEEDS = 10
DISTILL = ("kd16",)  # the distillation recipes of the structure sweep


def target(budget: float, recipe: str) -> tuple[str, float] | None:
    """(the baseline the searched winner is measured against, the margin it must clear), or None."""
    if abs(budget - 0.5) < 1e-9:
        return "tp_global_mag", 0.003
    if abs(budget - 0.25) < 1e-9:
        return "best", 0.0 if recipe in DISTILL else 0.02
    return None


def read_rows(files: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for f in files:
        doc = json.loads(f.read_text())
        base = doc.get("base_test_map")
        for r in doc["rows"]:
            if r["test_map"]:
                rows.append({**r, "source": str(f), **({"base_test_map": base} if base is not None else {})})
    return rows


def read_sweeps(files: list[str], net_default: str) -> list[dict[str, Any]]:
    """Rows of structure_sweep report summaries; FILE=LABEL renames the file's acpsearch rows to LABEL
    (a variant of the search, e.g. another encoder target), judged like the default search."""
    rows = []
    for spec in files:
        path, _, label = spec.partition("=")
        f = Path(path)
        for rec in json.loads(f.read_text()):
            method = rec["method"].split(" (")[0]  # "acpsearch (folder)" when a report had several folders
            if label and method == "acpsearch":
                method = label
            rows.append(
                {
                    "net": rec.get("net") or net_default,
                    "budget": rec["budget"],
                    "recipe": rec["recipe"],
                    "method": method,
                    "flops_ratio": rec.get("flops_ratio"),
                    "test_map": rec["test_maps"],
                    "chosen": f"{rec['chosen']} (of {rec['of']}, on validation)",
                    "source": str(f),
                    "base_test_map": rec.get("base_test_map"),
                }
            )
    return rows


def check_bases(rows: list[dict[str, Any]]) -> None:
    """Every net's rows must come from one base network (its test mAP, to 4 decimals, where known)."""
    seen: dict[str, tuple[float, str]] = {}
    for r in rows:
        b = r.get("base_test_map")
        if b is None:
            continue
        if r["net"] in seen and abs(seen[r["net"]][0] - b) > 5e-5:
            raise SystemExit(
                f"{r['source']}: {r['net']} base test mAP {b:.4f}, but {seen[r['net']][1]} has "
                f"{seen[r['net']][0]:.4f}: rows from different base networks cannot be compared"
            )
        seen.setdefault(r["net"], (b, r["source"]))


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per (net, budget, recipe) with a searched winner and the baseline its target names."""
    out = []
    groups: dict[tuple[str, float, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["net"], float(r["budget"]), r["recipe"]), {})[r["method"]] = r
    for (net, budget, recipe), by in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        t = target(budget, recipe)
        if t is None:
            continue
        present = [m for m in BASELINES if m in by]
        ref_name, margin = t
        if ref_name == "best":
            if not present:
                continue
            ref_name = max(present, key=lambda m: stats(by[m]["test_map"])["mean"])
        if ref_name not in by:
            continue
        for method in sorted(m for m in by if m.startswith("acpsearch")):
            out.append(_verdict(net, budget, recipe, method, by, ref_name, margin))
    return out


def _verdict(
    net: str, budget: float, recipe: str, method: str, by: dict[str, dict[str, Any]], ref_name: str, margin: float
) -> dict[str, Any]:
    a, ref = stats(by[method]["test_map"]), stats(by[ref_name]["test_map"])
    diff = a["mean"] - ref["mean"]
    se = math.sqrt(sum((s["se"] if not math.isnan(s["se"]) else 0.0) ** 2 for s in (a, ref)))
    n_ok = min(a["n"], ref["n"]) >= MIN_SEEDS
    unp = stats(by["unpruned"]["test_map"]) if "unpruned" in by else None
    return {
        "net": net,
        "budget": budget,
        "recipe": recipe,
        "method": method,
        "against": ref_name,
        "margin_needed": margin,
        "diff": diff,
        "se_diff": se,
        "standing": standing(ref, a),
        "target_met": bool(n_ok and diff >= margin and diff > 2 * se),
        "seeds": [a["n"], ref["n"]],
        "verdict_scale": "verdict" if n_ok else f"CPU scale (< {MIN_SEEDS} seeds)",
        "ceiling": unp["mean"] if unp else None,
        "target_above_ceiling": bool(unp and ref["mean"] + margin > unp["mean"] + 2 * unp["se"]),
    }


def markdown(rows: list[dict[str, Any]], vs: list[dict[str, Any]]) -> str:
    lines = [
        "| net | budget | recipe | method | test mAP@all mean +- std (n) | SE | FLOPs ratio |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(("unpruned", "acpsearch", *BASELINES))}
    for r in sorted(rows, key=lambda r: (r["net"], -r["budget"], r["recipe"], order.get(r["method"], 1.5))):
        s = stats(r["test_map"])
        sd = s["se"] * math.sqrt(s["n"]) if s["n"] > 1 else float("nan")
        fr = f"{r['flops_ratio']:.3f}" if r.get("flops_ratio") is not None else ""
        lines.append(
            f"| {r['net']} | {r['budget']} | {r['recipe']} | {r['method']} | {s['mean']:.4f} +- {sd:.4f} "
            f"({s['n']}) | {s['se']:.4f} | {fr} |"
        )
    lines += [
        "",
        "| net | budget | recipe | searched winner | target | it − target's baseline | 2 SE | standing | target met "
        "| scale |",
        "|---|---:|---|---|---|---:|---:|---|---|---|",
    ]
    for v in vs:
        need = f"{v['against']} + {100 * v['margin_needed']:.1f} pt"
        above = " (target above the ceiling)" if v["target_above_ceiling"] else ""
        lines.append(
            f"| {v['net']} | {v['budget']} | {v['recipe']} | {v['method']} | {need}{above} | "
            f"{100 * v['diff']:+.2f} pt | {200 * v['se_diff']:.2f} pt | {v['standing']} | "
            f"{'yes' if v['target_met'] else 'no'} | {v['verdict_scale']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=Path, action="append", default=[], help="a ceiling.py results file")
    ap.add_argument(
        "--sweep",
        action="append",
        default=[],
        help="a structure_sweep report JSON; FILE=LABEL names its searched winner LABEL (a variant of acpsearch)",
    )
    ap.add_argument("--net", default="resnet20", help="the net of sweep summaries that do not name one")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_alone.json")
    ap.add_argument("--md", type=Path, default=None, help="the markdown table (default: --out with .md)")
    args = ap.parse_args(argv)
    for f in [*args.rows, *(Path(x.partition("=")[0]) for x in args.sweep)]:
        if not f.exists():
            ap.error(f"{f}: no such file")
    rows = read_rows(args.rows) + read_sweeps(args.sweep, args.net)
    check_bases(rows)
    keys = [(r["net"], float(r["budget"]), r["recipe"], r["method"]) for r in rows]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        ap.error(f"several rows for {dup[0]}: give each (net, budget, recipe, method) once")
    vs = verdicts(rows)
    write_json(args.out, {"rows": rows, "verdicts": vs})
    md = markdown(rows, vs)
    (args.md or args.out.with_suffix(".md")).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
