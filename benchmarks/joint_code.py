"""Channels and code length together: one joint study against the two-step route, at equal FLOPs
and bits, through the real service (`acpsearch submit`, `run`, `show --json`; SQLite, local Ray).

One base network (ResNet-20, --base-bits CSQ code, Fashion-MNIST, the benchmarks' protocol) is
trained here once and both routes start from its checkpoint. Per seed (the study's search seed,
which also seeds its fine-tunes):

- joint     budget {flops: F, bits: B}: the code length is a searched dimension (NSGA-II over FLOPs
            x bits x score); its finalists are fine-tuned --finetune-epochs + --code-epochs epochs,
            so the winner has had as many epochs after its cut as the two-step network;
- two-step  budget {flops: F}: channels first (finalists fine-tuned --finetune-epochs epochs at the
            full code length), then the `code:` phase shortens the winner to B bits (DHWP pruning,
            --criterion, --code-epochs of fine-tuning).

Both routes share every other spec field. The winner of each is chosen on validation mAP; test mAP
(@all, @1000 against the database) is reported with the measured FLOPs ratio and code bits, and the
fine-tuning epochs each route spent. Output: JSON (rewritten after every study) and markdown.

    .venv/bin/python -m benchmarks.joint_code --seeds 3 --out benchmarks/results/joint_code.json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import RESULTS, eta, log, parser, protocol_arg, set_threads, write_json

ROUTES = ("joint", "two-step")


def build_parser() -> Any:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--routes", default=",".join(ROUTES), help="the routes to run (default: both)")
    p.add_argument("--base-bits", type=int, default=64)
    p.add_argument("--bits", type=int, default=32, help="the code-length budget B")
    p.add_argument("--flops", type=float, default=0.5, help="the FLOPs budget F (ratio of the base)")
    p.add_argument("--base-epochs", type=int, default=12)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--code-epochs", type=int, default=2)
    p.add_argument("--criterion", default="auto", help="the two-step route's bit criterion (code.criterion)")
    p.add_argument("--top", type=int, default=2, help="finalists per study")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--strategies", type=int, default=32, help="encoder training strategies")
    p.add_argument("--encoder-epochs", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads while training the base")
    p.add_argument("--protocol", default=None, help="per class QUERY,TRAIN,VAL (default 100,500,100)")
    p.add_argument("--workdir", default="runs/joint_code")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (a few minutes)")
    p.add_argument("--out", default=str(RESULTS / "joint_code.json"))
    p.add_argument("--md", default=str(RESULTS / "joint_code.md"))
    return p


def quick(args: Any) -> None:
    args.seeds, args.base_bits, args.bits, args.base_epochs = 1, 16, 8, 1
    args.finetune_epochs, args.code_epochs, args.top, args.candidates = 1, 1, 2, 24
    args.strategies, args.encoder_epochs, args.criterion = 8, 2, "balance"
    args.protocol = {"query_per_class": 10, "train_per_class": 40, "val_per_class": 10, "seed": 0}


def train_base(args: Any, path: Path) -> dict[str, Any]:
    """The shared base network, saved as an acpsearch checkpoint (reused when it exists)."""
    from acpsearch.checkpoint import read_checkpoint, save_checkpoint
    from acpsearch.hashing import create_model, evaluate, load_dataset, make_splits, train_hash_net

    if path.exists():
        return dict(read_checkpoint(path).get("meta") or {})
    set_threads(args.threads)
    splits = make_splits(load_dataset("fashion-mnist"), **args.protocol)
    kw = {"bits": args.base_bits, "in_channels": 1, "image_size": 28}
    res = train_hash_net(
        create_model("resnet20", **kw), splits, loss="csq", epochs=args.base_epochs, lr=0.002, batch_size=128, seed=0
    )
    m = evaluate(res.model, splits, topk=1000)
    meta = {"dataset": "fashion-mnist", "val_map": res.best_val_map, "test_map": m["map_all"]}
    save_checkpoint(path, res.model, {"zoo": "resnet20", "kwargs": kw}, [1, 1, 28, 28], meta=meta)
    return meta


def spec_for(route: str, seed: int, args: Any, base: Path) -> dict[str, Any]:
    joint = route == "joint"
    spec: dict[str, Any] = {
        "name": f"{route}-s{seed}",
        "model": {"zoo": "resnet20", "bits": args.base_bits, "checkpoint": str(base)},
        "data": {"dataset": "fashion-mnist", "protocol": args.protocol},
        "budget": {"flops": args.flops, **({"bits": args.bits} if joint else {})},
        "space": {"step": 0.1, "min_keep": 0.2, "criterion": "l1"},
        "encoder": {"objective": "effect", "epochs": args.encoder_epochs, "strategies": args.strategies},
        "search": {
            "candidates": args.candidates,
            "sampler": "nsga2" if joint else "tpe",
            "workers": args.workers,
            "seed": seed,
        },
        "finetune": {
            "top": args.top,
            "epochs": args.finetune_epochs + (args.code_epochs if joint else 0),
            "lr": 0.001,
            "early_stop": None,
        },
    }
    if not joint:
        spec["code"] = {
            "method": "prune",
            "criterion": args.criterion,
            "lengths": [args.bits],
            "finetune_epochs": args.code_epochs,
        }
    return spec


def _cli(*argv: str, log_to: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One `acpsearch` command; with log_to, its output is appended there (a study's progress lines)."""
    exe = Path(sys.executable).with_name("acpsearch")
    if log_to is None:
        return subprocess.run([str(exe), *argv], capture_output=True, text=True, check=False)
    with log_to.open("a") as f:
        done = subprocess.run([str(exe), *argv], stdout=f, stderr=subprocess.STDOUT, text=True, check=False)
    done.stderr = log_to.read_text()[-3000:]
    return done


def run_route(route: str, seed: int, args: Any, base: Path, work: Path) -> dict[str, Any]:
    """Submit, run and read one study; the route's final network and what it cost."""
    spec = spec_for(route, seed, args, base)
    url = f"sqlite:///{work / 'studies.db'}"
    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    for argv in (
        ("submit", str(path), "--storage", url),
        ("run", spec["name"], "--storage", url, "--artifacts", str(work / "artifacts")),
    ):
        done = _cli(*argv, log_to=work / f"{spec['name']}.log")
        if argv[0] == "submit" and done.returncode == 2 and "already exists" in done.stderr:
            continue  # a rerun resumes the stored study (`run` skips its finished phases)
        if done.returncode != 0:
            raise RuntimeError(f"acpsearch {argv[0]} {spec['name']}: exit {done.returncode}\n{done.stderr[-3000:]}")
    shown = _cli("show", spec["name"], "--storage", url, "--json")
    rep = json.loads(shown.stdout)
    w = rep["winner"]
    row: dict[str, Any] = {
        "route": route,
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "flops_ratio": w["measured_flops_ratio"],
        "winner_bits": w.get("bits") or args.base_bits,
        "winner_val_map": w.get("val_map"),
        "winner_test_map": w["test_map"],
        "winner_test_map_topk": w.get("test_map_topk"),
    }
    if route == "joint":
        row.update(bits=row["winner_bits"], val_map=w.get("val_map"), test_map=w["test_map"])
        row["test_map_topk"] = w.get("test_map_topk")
        row["front_size"] = len(rep.get("front") or [])
    else:
        (short,) = [r for r in rep.get("code_lengths") or [] if r["bits"] == args.bits]
        row.update(bits=short["bits"], val_map=short.get("val_map"), test_map=short["test_map"])
        row.update(test_map_topk=short.get("test_map_topk"), criterion=short.get("criterion"))
    row["finetune_epochs_after_cut"] = args.finetune_epochs + args.code_epochs
    # fine-tuning epochs the route spent in all: its finalists, plus (two-step) the code phase, which
    # fine-tunes once per criterion tried (criterion auto tries all six)
    tried = 6 if args.criterion == "auto" else 1
    if route == "joint":
        row["epochs_spent"] = args.top * (args.finetune_epochs + args.code_epochs)
    else:
        row["epochs_spent"] = args.top * args.finetune_epochs + tried * args.code_epochs
    return row


def _stat(v: list[float]) -> dict[str, float]:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return {"mean": statistics.fmean(v), "std": sd, "se": sd / len(v) ** 0.5, "n": len(v)}


def summarise(doc: dict[str, Any]) -> None:
    by = {r: [x for x in doc["rows"] if x["route"] == r] for r in ROUTES}
    doc["summary"] = {
        r: {k: _stat([x[k] for x in rows]) for k in ("test_map", "val_map", "flops_ratio", "bits")}
        for r, rows in by.items()
        if rows
    }
    s = doc["summary"]
    if all(r in s for r in ROUTES):
        a, b = s["joint"]["test_map"], s["two-step"]["test_map"]
        diff, se = a["mean"] - b["mean"], (a["se"] ** 2 + b["se"] ** 2) ** 0.5
        if min(a["n"], b["n"]) < 2:
            word = "one seed per route: no verdict (no standard error)"
        else:
            word = "tie" if abs(diff) <= 2 * se else ("joint wins" if diff > 0 else "two-step wins")
        doc["verdict"] = f"joint - two-step = {100 * diff:+.2f} pt test mAP@all (2 SE = {200 * se:.2f} pt): {word}"


def markdown(doc: dict[str, Any]) -> str:
    out = [f"# Joint (channels + bits) against two-step\n\nCommand: `{doc['command']}`\n"]
    base = doc.get("base") or {}
    out.append(f"Base: val mAP {base.get('val_map', float('nan')):.4f}, test mAP@all {base.get('test_map', 0):.4f}\n")
    out += [
        "| route | seed | FLOPs ratio | bits | val mAP | test mAP@all | test mAP@1000 | epochs spent | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        out.append(
            f"| {r['route']} | {r['seed']} | {r['flops_ratio']:.3f} | {r['bits']} | {r['val_map']:.4f} "
            f"| {r['test_map']:.4f} | {r['test_map_topk'] or float('nan'):.4f} | {r['epochs_spent']} "
            f"| {r['seconds']:.0f} |"
        )
    out.append("")
    for route, s in (doc.get("summary") or {}).items():
        t = s["test_map"]
        out.append(f"- {route}: test mAP@all {100 * t['mean']:.2f} ± {100 * t['std']:.2f} (n={t['n']})")
    if doc.get("verdict"):
        out.append(f"- {doc['verdict']}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.protocol = protocol_arg(args.protocol)
    if args.quick:
        quick(args)
    if not 1 <= args.bits < args.base_bits:
        build_parser().error(f"--bits must be in [1, {args.base_bits - 1}] (below --base-bits)")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"command": "python -m benchmarks.joint_code " + " ".join(argv or sys.argv[1:]), "rows": []}
    doc["args"] = vars(args)
    t0 = time.perf_counter()
    base = work / f"base{args.base_bits}.pt"
    log(f"base network: {base}")
    doc["base"] = train_base(args, base)
    log(f"base val {doc['base']['val_map']:.4f} test {doc['base']['test_map']:.4f} ({time.perf_counter() - t0:.0f}s)")
    routes = args.routes.split(",")
    if not set(routes) <= set(ROUTES):
        build_parser().error(f"--routes: each must be one of {', '.join(ROUTES)}")
    jobs = [(route, seed) for seed in range(args.seeds) for route in routes]
    for i, (route, seed) in enumerate(jobs):
        row = run_route(route, seed, args, base.resolve(), work)
        doc["rows"].append(row)
        summarise(doc)
        write_json(Path(args.out), doc)
        Path(args.md).write_text(markdown(doc))
        log(
            f"{route} seed {seed}: {row['bits']} bits, FLOPs {row['flops_ratio']:.3f}, "
            f"test {row['test_map']:.4f} ({eta(i + 1, len(jobs), t0)})"
        )
    if doc.get("verdict"):
        log(doc["verdict"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
