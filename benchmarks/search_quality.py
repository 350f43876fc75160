"""Search quality: acpsearch's winner against the pruning baselines at the same FLOPs budget and
the same fine-tuning budget.

Methods (all start from the SAME trained base hash net, all final models fine-tuned with the same
hash loss, epochs, learning rate and batch size; best-of-m methods choose on VALIDATION mAP):
  acpsearch      a full study (encoder, search over the dynamic space, top-m fine-tuned, winner)
  uniform_l1     every group kept at the largest uniform ratio that meets the budget, L1 channels
  tp_global_mag  Torch-Pruning MagnitudePruner (L1, global_pruning=True), ratio bisected to the budget
  random_best_m  m random strategies from the same dynamic space, each fine-tuned, best by val mAP
  adaptive_bn    `candidates` random strategies scored by adaptive-BN val mAP (EagleEye), top m fine-tuned
Reported per method: test mAP@all and mAP@1000 (queries vs database), val mAP, FLOPs, params, their
ratios, latency (batch 32, 1 thread), fine-tuning epochs spent, wall seconds.
Results: benchmarks/results/search_quality.json (rewritten after every method).

Full run (CPU, hours; by hand):
    nice -n 10 .venv/bin/python benchmarks/search_quality.py --base benchmarks/cache/resnet20_csq32_fmnist.pt \
        --dataset fashion-mnist --budget 0.5 --epochs 4 --top 4 --candidates 500
Smoke test (digits, ~3 min):
    .venv/bin/python benchmarks/search_quality.py --smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from acpsearch.graph import ChannelGraph  # noqa: E402
from acpsearch.hashing import create_model, evaluate, load_dataset, make_splits, train_hash_net  # noqa: E402
from acpsearch.pruning import PruningStrategy, measure_cost, prune  # noqa: E402
from acpsearch.search.tasks import measure_latency_ms  # noqa: E402


def finetune_and_eval(net: torch.nn.Module, splits: Any, args: argparse.Namespace, shape: list[int]) -> dict[str, Any]:
    """The shared fine-tuning budget and the shared evaluation."""
    res = train_hash_net(net, splits, loss=args.loss, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         seed=args.seed, progress=False)
    ev = evaluate(res.model, splits)
    cost = measure_cost(res.model, torch.zeros(*shape))
    return {"model": res.model, "val_map": float(res.best_val_map), "test_map": float(ev["map_all"]),
            "test_map_topk": float(ev["map_topk"]), "topk": int(ev["topk"]), "flops": int(cost.flops),
            "params": int(cost.params), "latency_ms": round(measure_latency_ms(res.model, shape), 3)}


def uniform_keep(g: Any, budget: float, step: float = 0.01) -> float:
    """Largest uniform keep ratio (on a 0.01 grid) whose predicted FLOPs meet the budget."""
    full = g.cost().flops
    keep = 1.0
    while keep > step:
        if g.cost(PruningStrategy.uniform(g, keep=keep, criterion="l1")).flops <= budget * full:
            return round(keep, 4)
        keep -= step
    raise SystemExit(f"uniform: no uniform ratio meets budget {budget}")


def tp_global_magnitude(base: torch.nn.Module, ex: torch.Tensor, budget: float) -> torch.nn.Module:
    """Torch-Pruning global L1-magnitude pruning with the ratio bisected until FLOPs <= budget."""
    import torch_pruning as tp

    full, _ = tp.utils.count_ops_and_params(base, ex)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        net = copy.deepcopy(base)
        hash_layer = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        pruner = tp.pruner.MagnitudePruner(net, ex, importance=tp.importance.MagnitudeImportance(p=1),
                                           global_pruning=True, pruning_ratio=mid, ignored_layers=[hash_layer],
                                           in_channel_groups={}, out_channel_groups={}, num_heads={})
        pruner.step()
        flops, _ = tp.utils.count_ops_and_params(net, ex)
        if flops <= budget * full:
            best, hi = net, mid
        else:
            lo = mid
    if best is None:
        raise SystemExit("tp_global_mag: no ratio met the budget")
    return best


def run_acpsearch(args: argparse.Namespace, base_path: Path, workdir: Path) -> dict[str, Any]:
    from acpsearch.search import study as st
    from acpsearch.search.pipeline import run_study
    from acpsearch.search.storage import open_storage
    from acpsearch.spec import parse_spec

    spec = parse_spec({
        "name": "search-quality", "model": {"zoo": args.model, "bits": args.bits, "checkpoint": str(base_path)},
        "data": {"dataset": args.dataset, "protocol": args.protocol},
        "budget": {"flops": args.budget}, "space": {"step": args.step, "min_keep": args.min_keep, "criterion": "l1"},
        "encoder": {"objective": args.objective, "epochs": args.encoder_epochs, "strategies": args.encoder_strategies},
        "search": {"candidates": args.candidates, "workers": args.workers, "seed": args.seed},
        "finetune": {"top": args.top, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                     "early_stop": None},
        "train": {"loss": args.loss},
    })
    url = f"sqlite:///{workdir / 'search_quality.db'}"
    storage = open_storage(url)
    name = st.submit(storage, spec, f"search-quality-{int(time.time())}")
    run_study(url, name, workers=args.workers, artifacts=workdir / "artifacts")
    w = st.load_search_study(storage, name).user_attrs["winner"]
    return {"val_map": w["val_map"], "test_map": w["test_map"], "test_map_topk": w["test_map_topk"],
            "topk": w["topk"], "flops": w["measured_flops"], "params": w["measured_params"],
            "latency_ms": w["latency_ms"], "finetune_epochs_total": args.top * args.epochs, "study": name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="trained base checkpoint (default: train one with --base-epochs)")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per final model (all methods)")
    ap.add_argument("--top", type=int, default=4, help="m: finalists of acpsearch / adaptive_bn, random best-of-m")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--encoder-epochs", type=int, default=50)
    ap.add_argument("--encoder-strategies", type=int, default=512)
    ap.add_argument("--objective", default="sacp", choices=["sacp", "effect"])
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--min-keep", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--loss", default="csq")
    ap.add_argument("--base-epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="acpsearch,uniform_l1,tp_global_mag,random_best_m,adaptive_bn")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "search_quality.json")
    ap.add_argument("--smoke", action="store_true", help="digits, tiny budgets: checks the script end to end")
    args = ap.parse_args(argv)
    args.protocol = {"query_per_class": 100, "train_per_class": 500, "val_per_class": 100, "seed": args.seed}
    if args.smoke:
        args.dataset, args.bits, args.epochs, args.top, args.candidates = "digits", 16, 1, 2, 16
        args.encoder_epochs, args.encoder_strategies, args.base_epochs = 3, 32, 3
        args.protocol = {"query_per_class": 10, "train_per_class": 60, "val_per_class": 15, "seed": args.seed}
        if args.results == ap.get_default("results"):
            args.results = Path(tempfile.gettempdir()) / "search_quality_smoke.json"
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="search-quality-"))
    splits = make_splits(load_dataset(args.dataset), **args.protocol)
    c, h, _ = splits.input_shape
    shape = [1, c, h, h]
    if args.base is None:
        kw = {"bits": args.bits, "in_channels": c, "image_size": h}
        net = train_hash_net(create_model(args.model, **kw), splits, loss=args.loss, epochs=args.base_epochs,
                             seed=args.seed, progress=False).model
        args.base = save_checkpoint(workdir / "base.pt", net, {"zoo": args.model, "kwargs": kw}, shape)
    ckpt = read_checkpoint(args.base)
    base = model_from_checkpoint(ckpt)
    ex = torch.zeros(*shape)
    g = ChannelGraph.from_model(base, ex)
    full = g.cost()
    bev = evaluate(base, splits)
    results: dict[str, Any] = {
        "protocol": {k: v for k, v in vars(args).items() if k not in ("results",)},
        "base": {"test_map": bev["map_all"], "test_map_topk": bev["map_topk"], "val_map": bev["val_map"],
                 "flops": full.flops, "params": full.params, "latency_ms": round(measure_latency_ms(base, shape), 3)},
        "methods": {},
    }

    def record(name: str, res: dict[str, Any], t0: float) -> None:
        res = {k: v for k, v in res.items() if k != "model"}
        res.update(flops_ratio=res["flops"] / full.flops, params_ratio=res["params"] / full.params,
                   seconds=round(time.perf_counter() - t0, 1))
        res.setdefault("finetune_epochs_total", args.epochs)
        results["methods"][name] = res
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2, default=str))
        print(f"{name:15s} test mAP {res['test_map']:.4f}  FLOPs {res['flops_ratio']:.3f}  params "
              f"{res['params_ratio']:.3f}  latency {res['latency_ms']:.2f} ms  ({res['seconds']} s)", flush=True)

    from acpsearch.search.pipeline import make_space
    from acpsearch.spec import parse_spec

    space_spec = parse_spec({"model": {"zoo": args.model}, "data": {"dataset": args.dataset},
                             "budget": {"flops": args.budget},
                             "space": {"step": args.step, "min_keep": args.min_keep, "criterion": "l1"}})
    space = make_space(space_spec, g, base, ex)
    methods = args.methods.split(",")
    if "acpsearch" in methods:
        t0 = time.perf_counter()
        record("acpsearch", run_acpsearch(args, Path(args.base), workdir), t0)
    if "uniform_l1" in methods:
        t0 = time.perf_counter()
        keep = uniform_keep(g, args.budget)
        res = finetune_and_eval(prune(base, PruningStrategy.uniform(g, keep=keep, criterion="l1"), ex), splits, args, shape)
        res["keep"] = keep
        record("uniform_l1", res, t0)
    if "tp_global_mag" in methods:
        t0 = time.perf_counter()
        record("tp_global_mag", finetune_and_eval(tp_global_magnitude(base, ex, args.budget), splits, args, shape), t0)

    def best_of(strategies: list[Any]) -> dict[str, Any]:
        runs = [finetune_and_eval(prune(base, s, ex), splits, args, shape) for s in strategies]
        best = max(runs, key=lambda r: r["val_map"])
        best["finetune_epochs_total"] = len(runs) * args.epochs
        best["finalists_test_map"] = [r["test_map"] for r in runs]
        return best

    if "random_best_m" in methods:
        t0 = time.perf_counter()
        record("random_best_m", best_of(space.sample_many(args.top, random.Random(args.seed + 1))), t0)
    if "adaptive_bn" in methods:
        from acpsearch.search.rankers import make_ranker

        t0 = time.perf_counter()
        pool = space.sample_many(args.candidates, random.Random(args.seed + 2))
        scores = make_ranker("adaptive_bn", model=base, splits=splits, example_input=ex).score(pool)
        order = sorted(range(len(pool)), key=lambda i: -scores[i])[: args.top]
        record("adaptive_bn", best_of([pool[i] for i in order]), t0)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
