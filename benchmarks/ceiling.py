"""The reference rows of the search-alone table: the unpruned network and the one-shot baselines
(Torch-Pruning-style global magnitude, uniform L1), each fine-tuned with the same recipe and many
seeds, on one retrieval base network.

The unpruned row is the ceiling: the base network given the same fine-tuning as every pruned one.
Without it a pruned network's mAP cannot be read (a recipe that improves the base would flatter
every pruned network by the same amount). Rows go to a JSON file in the shape of
``benchmarks/results/search_alone.json``: ``{"rows": [{"net", "budget", "recipe", "method",
"test_map": [one per seed], "val_map": [...], "flops_ratio"}]}``; the unpruned row is written once
per budget, so each budget's block is complete on its own.

    PYTHONPATH=. python -m benchmarks.ceiling --base benchmarks/cache/resnet20_csq32_fmnist.pt \\
        --seeds 10 --jobs 2                       # CPU
    python3 -m benchmarks.ceiling --train-base 40 --base-out $OUT/base.pt --data .gpu/fmnist \\
        --device cuda --jobs 12 --seeds 10        # a GPU machine with no base yet: trains it first
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    PROTOCOL,
    RESULTS,
    eta,
    log,
    magnitude_strategy,
    parser,
    seed_all,
    set_threads,
    uniform_strategy,
    write_json,
)
from benchmarks.pool import JobPool

RECIPES: dict[str, dict[str, Any]] = {"ft4": {"epochs": 4, "lr": 1e-3, "batch_size": 128}}
# the resnet20-csq32 base's recipe (benchmarks/base_models.py)
BASE_RECIPE = {"lr": 2e-3, "batch_size": 32, "augment": True, "hflip": True, "warmup_epochs": 1, "weight_decay": 1e-4}

_WORKER: dict[str, Any] = {}


def load_splits(data: str | None) -> Any:
    from acpsearch.hashing import load_dataset, make_splits

    return make_splits(load_dataset("fashion-mnist", data), **PROTOCOL)


def init_worker(data: str | None, device: str, threads: int) -> None:
    set_threads(threads)
    _WORKER.update(splits=load_splits(data), device=device)


def finetune_job(net: torch.nn.Module, recipe: str, seed: int, epochs: int | None = None) -> dict[str, Any]:
    from acpsearch.hashing import evaluate, train_hash_net

    t0 = time.perf_counter()
    splits = _WORKER["splits"]
    kw = {**RECIPES[recipe], **({"epochs": epochs} if epochs else {})}
    res = train_hash_net(copy.deepcopy(net).to(_WORKER["device"]), splits, loss="csq", seed=seed, progress=False, **kw)
    ev = evaluate(res.model, splits)
    return {
        "val_map": round(float(res.best_val_map), 5),
        "test_map": round(float(ev["map_all"]), 5),
        "best_epoch": res.best_epoch,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def train_base(args: argparse.Namespace, splits: Any) -> torch.nn.Module:
    from acpsearch.checkpoint import save_zoo_checkpoint
    from acpsearch.hashing import checkpoint_meta, create_model, evaluate, train_hash_net

    c, h, _ = splits.input_shape
    torch.manual_seed(0)
    model = create_model(args.model, bits=32, in_channels=c, image_size=h).to(args.device)
    res = train_hash_net(model, splits, loss="csq", epochs=args.train_base, seed=0, progress=False, **BASE_RECIPE)
    base = res.model.cpu().eval()
    ev = evaluate(base, splits, topk=1000)
    args.base_test_map = ev["map_all"]
    log(f"base: {args.train_base} epochs (best {res.best_epoch}), val {res.best_val_map:.4f}, test {ev['map_all']:.4f}")
    if args.base_out:
        meta = checkpoint_meta(splits, "csq", res, ev, bits=32, lr=BASE_RECIPE["lr"], batch_size=32, seed=0)
        save_zoo_checkpoint(args.base_out, base, args.model, 32, c, h, meta)
    return base


def build_nets(
    base: torch.nn.Module, g: Any, ex: torch.Tensor, budgets: list[float], methods: list[str]
) -> dict[tuple[str, float], tuple[torch.nn.Module, float]]:
    """(method, budget) -> (the network before fine-tuning, its FLOPs ratio)."""
    from acpsearch.pruning import prune

    full = g.cost().flops
    nets: dict[tuple[str, float], tuple[torch.nn.Module, float]] = {}
    for b in budgets:
        for m in methods:
            if m == "unpruned":
                nets[(m, b)] = (base, 1.0)
            else:
                s = (magnitude_strategy if m == "tp_global_mag" else uniform_strategy)(g, b)
                nets[(m, b)] = (prune(base, s, ex), g.cost(s).flops / full)
    return nets


def init_rows(
    args: argparse.Namespace, budgets: list[float], methods: list[str], nets: dict[Any, Any]
) -> tuple[dict[str, Any], dict[tuple[str, float, str], dict[str, Any]]]:
    """The results document and its rows by (method, budget, recipe); with --resume the rows of an
    existing --out come first, with their seeds (rows of methods not asked for now are kept)."""
    doc: dict[str, Any] = {"args": vars(args), "rows": [], "base_test_map": args.base_test_map}
    old = json.loads(Path(args.out).read_text()).get("rows", []) if args.resume and Path(args.out).exists() else []
    rows: dict[tuple[str, float, str], dict[str, Any]] = {}
    for r in old:
        rows[(r["method"], float(r["budget"]), r["recipe"])] = r
        doc["rows"].append(r)
    for recipe in args.recipes.split(","):
        for b in budgets:
            for m in methods:
                if (m, b, recipe) in rows:
                    continue
                row = {"net": args.model, "budget": b, "recipe": recipe, "method": m, "flops_ratio": nets[(m, b)][1]}
                rows[(m, b, recipe)] = {**row, "test_map": [], "val_map": [], "seeds": []}
                doc["rows"].append(rows[(m, b, recipe)])
    return doc, rows


def summary(doc: dict[str, Any]) -> None:
    for row in doc["rows"]:
        xs = row["test_map"]
        if xs:
            mean = sum(xs) / len(xs)
            sd = (sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
            log(f"{row['budget']} {row['recipe']} {row['method']}: {mean:.4f} +- {sd:.4f} ({len(xs)} seeds)")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--base", default=None, help="the base checkpoint (else --train-base trains one)")
    p.add_argument("--train-base", type=int, default=0, help="epochs of a CSQ-32 base of --model trained here")
    p.add_argument("--model", default="resnet20", help="the zoo network --train-base trains (a --base names its own)")
    p.add_argument("--base-out", default=None, help="where to save the base trained with --train-base")
    p.add_argument("--budgets", default="0.5,0.25")
    p.add_argument("--methods", default="unpruned,tp_global_mag,uniform_l1")
    p.add_argument("--recipes", default="ft4")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--ft-epochs", type=int, default=None, help="override the recipe's epochs (smoke tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new job starts")
    p.add_argument("--grace", type=float, default=60.0)
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the system's)")
    p.add_argument("--out", default=str(RESULTS / "ceiling.json"))
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of an existing --out and run only the seeds they lack (more seeds: raise --seeds)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.graph import ChannelGraph
    from benchmarks import ceiling as jobs

    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    seed_all(0)
    t0 = time.perf_counter()
    splits = load_splits(args.data)
    if args.base:
        ck = read_checkpoint(args.base)
        base = model_from_checkpoint(ck).eval()
        args.model = ck["model"]["zoo"]  # the rows' "net"
        # the base's identity in search_alone.py: rows from different bases must not be compared
        args.base_test_map = ((ck.get("meta") or {}).get("metrics") or {}).get("map_all")
    elif args.train_base:
        base = train_base(args, splits)
    else:
        raise SystemExit("give --base CKPT or --train-base EPOCHS")
    ex = torch.zeros(1, *splits.input_shape)
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    nets = build_nets(base, ChannelGraph.from_model(base, ex), ex, budgets, methods)
    doc, rows = init_rows(args, budgets, methods, nets)
    deadline = None if args.deadline is None else max(0.0, args.deadline - (time.perf_counter() - t0))
    pool = JobPool(jobs.finetune_job, jobs.init_worker, (args.data, args.device, 1), args.jobs, deadline)
    for recipe in args.recipes.split(","):
        for seed in range(args.seeds):
            for m in methods:  # the unpruned network is fine-tuned once per seed, shared by the budgets
                for b in budgets if m != "unpruned" else budgets[:1]:
                    if all(seed in rows[(m, bb, recipe)]["seeds"] for bb in (budgets if m == "unpruned" else [b])):
                        continue  # --resume: already measured
                    pool.submit(
                        (m, b, recipe, seed), (seed, m != "unpruned"), nets[(m, b)][0], recipe, seed, args.ft_epochs
                    )
    end = None if args.deadline is None else t0 + args.deadline + args.grace
    while pool.pending() and (end is None or time.perf_counter() < end):
        for (m, b, recipe, seed), r in pool.poll(5):  # type: ignore[misc]
            for bb in budgets if m == "unpruned" else [b]:
                row = rows[(m, bb, recipe)]
                if seed in row["seeds"]:
                    continue
                row["test_map"].append(r["test_map"])
                row["val_map"].append(r["val_map"])
                row["seeds"].append(seed)
            doc["seconds"] = time.perf_counter() - t0
            write_json(Path(args.out), doc)
            log(f"{m} {b} {recipe} seed {seed}: test {r['test_map']:.4f}; {eta(pool.finished, pool.submitted, t0)}")
    pool.close()
    doc["dropped_jobs"] = pool.dropped
    write_json(Path(args.out), doc)
    summary(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
