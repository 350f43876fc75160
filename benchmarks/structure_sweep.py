"""Search quality with many fine-tuning seeds and longer recipes: every method's candidate
structures are prepared here (CPU), fine-tuned on an accelerator (or here), then reported.

Why a second benchmark beside search_quality.py: on 2 CPU cores one 4-epoch fine-tune costs ~30 s,
so search_quality.py affords 3 seeds of one recipe, and its margins (0.1-0.3 pt) sit inside the
seed noise. A GPU runs the same fine-tune function (`train_hash_net`, on the model's device) in a
few seconds, so every candidate of every method can be fine-tuned with several seeds and recipes.

    prepare  (CPU, needs Ray + Torch-Pruning) runs the methods' *selection* parts on one base and budget:
             acpsearch   a real study through the service (encoder, search, rerank off); its
                         m finalists: the magnitude anchor + the top m-1 searched candidates
                         (--no-anchor: the top m); the study's own fine-tune runs 1 epoch
                         only, its result is not used here. --methods acpsearch prepares only it.
             random      m random strategies of the same dynamic space (search_quality's seed)
             adaptive_bn top-m of --abn-candidates random strategies by adaptive-BN val mAP (EagleEye)
             tp_global_mag, uniform_l1   one structure each, as in search_quality.py
             and writes DIR/structures.pt (pruned modules, before fine-tuning), DIR/meta.json, and
             copies of the base checkpoint and the Fashion-MNIST IDX files (so DIR alone travels).
    run      (any device) fine-tunes every candidate with seed 0, then the val-chosen candidate of
             each method with --seeds seeds; --jobs processes share the device; stages (recipe x
             folder) in the order given, until --deadline; one JSON line per job in --out.
    prepare-tp-counts  one network with Torch-Pruning's kept counts per group, pruned by our pruner
             (its channels chosen by our l1 criterion): is TP's edge its counts or its channels?
    report   per recipe and method: the candidate chosen on seed-0 VALIDATION mAP (best-of-m
             methods), its test mAP@all on seed 0 and over all seeds; writes --md.

Honest selection: the test column never chooses anything. A recipe is not chosen by test either:
all recipes run are reported.

    .venv/bin/python -m benchmarks.structure_sweep prepare --base benchmarks/cache/resnet20_csq32_fmnist.pt \
        --budget 0.5 --dir .gpu/r20-50
    python3 -m benchmarks.structure_sweep run --dir .gpu/r20-50 --recipes ft4,kd16 --seeds 5 \
        --jobs 12 --deadline 420 --out $OUT/structure_sweep.jsonl     # on the device machine
    .venv/bin/python -m benchmarks.structure_sweep report benchmarks/results/structure_sweep.jsonl

docs/results/structure_sweep.md and docs/results/magnitude_anchor.md have the exact commands behind their tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import PROTOCOL, load_base, parser, set_threads

# name -> train_hash_net keyword arguments. ft4 is search_quality.py's budget (4 epochs, batch 128);
# kd16 a longer fine-tune with the base's augmentation and code distillation from the base;
# kd8 the same at half the length; base40 the base network's own training recipe on the pruned network.
RECIPES: dict[str, dict[str, Any]] = {
    "ft4": {"epochs": 4, "lr": 1e-3, "batch_size": 128},
    "kd16": {"epochs": 16, "lr": 1e-3, "batch_size": 32, "augment": True, "hflip": True, "distill": 1.0},
    "base40": {"epochs": 40, "lr": 2e-3, "batch_size": 32, "augment": True, "hflip": True, "warmup_epochs": 1},
    "kd8": {"epochs": 8, "lr": 1e-3, "batch_size": 32, "augment": True, "hflip": True, "distill": 1.0},
}


# --- prepare ---------------------------------------------------------------------------------------


def acpsearch_finalists(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The m finalists of a real acpsearch study (the service's own search, with its anchor unless
    --no-anchor), best score first: each {ratios, round_to, source}."""
    from acpsearch.service import study as st
    from acpsearch.service.runner import run_study
    from acpsearch.service.spec import parse_spec
    from acpsearch.service.storage import open_storage

    spec = parse_spec(
        {
            "name": "structure-sweep",
            "model": {"zoo": args.model, "bits": args.bits, "checkpoint": str(args.base)},
            "data": {"dataset": "fashion-mnist", "protocol": PROTOCOL},
            "budget": {"flops": args.budget},
            "space": {"step": args.step, "min_keep": args.min_keep, "criterion": "l1"},
            "encoder": {
                "objective": args.objective,
                **({"target": args.target} if args.objective == "effect" else {}),
                **({"ft_steps": args.ft_steps} if args.target == "ft_steps" else {}),
                "epochs": args.encoder_epochs,
                "strategies": args.encoder_strategies,
            },
            "search": {
                "candidates": args.candidates,
                "workers": args.workers,
                "seed": args.seed,
                "anchor": None if args.no_anchor else "magnitude",
            },
            "finetune": {"top": args.top, "epochs": 1, "early_stop": None},
        }
    )
    url = f"sqlite:///{workdir / 'sweep.db'}"
    storage = open_storage(url)
    name = st.submit(storage, spec, f"structure-sweep-{int(time.time())}")
    run_study(url, name, workers=args.workers, artifacts=workdir / "artifacts")
    study = st.load_search_study(storage, name)
    ft = st.finetune_study(storage, study).get_trials(deepcopy=False)
    ft = sorted(ft, key=lambda t: -float(t.user_attrs.get("score") or 0.0))
    cands = [
        {
            "ratios": {k[len("keep/") :]: float(v) for k, v in t.params.items() if k.startswith("keep/")},
            "round_to": int(study.trials[int(t.user_attrs["candidate"])].user_attrs.get("round_to", 4)),
            "source": t.user_attrs.get("source", "search"),
        }
        for t in ft
    ]
    phases = {p: (study.user_attrs.get(f"phase.{p}") or {}).get("seconds") for p in st.PHASES}
    return cands, {"study": name, "scores": [t.user_attrs.get("score") for t in ft], "phase_seconds": phases}


def _load_base(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, torch.Tensor, Any, dict[str, Any]]:
    """Base network, Fashion-MNIST splits, example input, channel graph, and the base's evaluation."""
    from acpsearch.graph import ChannelGraph
    from acpsearch.hashing import evaluate, load_dataset, make_splits

    set_threads(args.threads)
    base = load_base(args.base)
    splits = make_splits(load_dataset("fashion-mnist"), **PROTOCOL)
    ex = torch.zeros(1, *splits.input_shape)
    bev = evaluate(base, splits)
    return (
        base,
        splits,
        ex,
        ChannelGraph.from_model(base, ex),
        {"test_map": bev["map_all"], "test_map_topk": bev["map_topk"], "val_map": bev["val_map"]},
    )


def _write_folder(out: Path, base_path: Path, nets: dict[str, torch.nn.Module], meta: dict[str, Any]) -> None:
    """A prepared folder: pruned modules, meta, copies of the base and the data (so it travels alone)."""
    from acpsearch.hashing.data import FASHION_MNIST_DIR

    out.mkdir(parents=True, exist_ok=True)
    torch.save(nets, out / "structures.pt")  # whole modules: this folder is a benchmark's scratch, not a product file
    shutil.copy(base_path, out / "base.pt")
    (out / "fmnist").mkdir(exist_ok=True)
    for f in FASHION_MNIST_DIR.glob("*-ubyte*"):
        shutil.copy(f, out / "fmnist" / f.name)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(
        json.dumps(
            {
                n: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in c.items() if k != "ratios"}
                for n, c in meta["candidates"].items()
            },
            indent=1,
        )
    )


def prepare(args: argparse.Namespace) -> int:
    from acpsearch.pruning import PruningStrategy, measure_cost, prune
    from acpsearch.search.rankers import make_ranker
    from acpsearch.service.inputs import make_space
    from acpsearch.service.spec import parse_spec
    from benchmarks import search_quality as sq

    base, splits, ex, g, base_eval = _load_base(args)
    space = make_space(
        parse_spec(
            {
                "model": {"zoo": args.model},
                "data": {"dataset": "fashion-mnist"},
                "budget": {"flops": args.budget},
                "space": {"step": args.step, "min_keep": args.min_keep, "criterion": "l1"},
            }
        ),
        g,
        base,
        ex,
    )
    full = g.cost()
    nets: dict[str, torch.nn.Module] = {}
    meta: dict[str, Any] = {
        "budget": args.budget,
        "model": args.model,
        "base": "base.pt",
        "methods": {},
        "candidates": {},
        "top": args.top,
        "base_eval": base_eval,
    }
    t0 = time.perf_counter()

    def add(method: str, name: str, net: torch.nn.Module, **info: Any) -> None:
        cost = measure_cost(net, ex)
        nets[name] = net
        meta["candidates"][name] = {
            "method": method,
            "flops_ratio": cost.flops / full.flops,
            "params_ratio": cost.params / full.params,
            **info,
        }
        meta["methods"].setdefault(method, []).append(name)

    methods = set(args.methods.split(",")) if args.methods else set(METHOD_ORDER)
    unknown = methods - set(METHOD_ORDER)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; known: {', '.join(METHOD_ORDER)}")
    if "acpsearch" in methods:
        cands, info = acpsearch_finalists(args, Path(tempfile.mkdtemp(prefix="structure-sweep-")))
        meta["acpsearch"] = {**info, "seconds": round(time.perf_counter() - t0, 1)}
        for i, c in enumerate(cands):
            s = PruningStrategy(g, c["ratios"], criterion="l1", round_to=c["round_to"])
            add("acpsearch", f"acpsearch{i}", prune(base, s, ex), **c, kept=dict(s.kept), score=info["scores"][i])
    if "uniform_l1" in methods:
        s = PruningStrategy.uniform(g, keep=sq.uniform_keep(g, args.budget), criterion="l1")
        add("uniform_l1", "uniform_l1", prune(base, s, ex))
    if "tp_global_mag" in methods:
        add("tp_global_mag", "tp_global_mag", sq.tp_global_magnitude(base, ex, args.budget))
    if "random_best_m" in methods:
        for i, s in enumerate(space.sample_many(args.top, random.Random(args.seed + 1))):
            add("random_best_m", f"random{i}", prune(base, s, ex), ratios=dict(s.ratios))
    if "adaptive_bn" in methods:
        t1 = time.perf_counter()
        pool = space.sample_many(args.abn_candidates, random.Random(args.seed + 2))
        scores = make_ranker("adaptive_bn", model=base, splits=splits, example_input=ex).score(pool)
        order = sorted(range(len(pool)), key=lambda i: -scores[i])[: args.top]
        meta["adaptive_bn"] = {"pool": len(pool), "seconds": round(time.perf_counter() - t1, 1)}
        for rank, i in enumerate(order):
            add(
                "adaptive_bn",
                f"adaptive_bn{rank}",
                prune(base, pool[i], ex),
                ratios=dict(pool[i].ratios),
                score=float(scores[i]),
            )
    _write_folder(args.dir, args.base, nets, meta)
    return 0


def prepare_tp_counts(args: argparse.Namespace) -> int:
    """One network: Torch-Pruning global magnitude's kept channel counts per group, pruned by our
    pruner (round_to=1) with our `l1` channel choice: does TP win by its counts or by its channels?"""
    from acpsearch.pruning import PruningStrategy, measure_cost, prune
    from benchmarks import search_quality as sq

    base, _splits, ex, g, base_eval = _load_base(args)
    tp_modules = dict(sq.tp_global_magnitude(base, ex, args.budget).named_modules())
    channels = {gr.name: gr.channels for gr in g.groups}  # a group is named after the conv producing it
    kept = {name: int(tp_modules[name].out_channels) for name in channels}
    strategy = PruningStrategy(g, {k: v / channels[k] for k, v in kept.items()}, criterion="l1", round_to=1)
    if {k: int(v) for k, v in strategy.kept.items()} != kept:
        raise SystemExit(f"tp counts: the strategy keeps {dict(strategy.kept)}, not {kept}")
    net = prune(base, strategy, ex)
    full, cost = g.cost(), measure_cost(net, ex)
    name = "tp_counts_l1"
    _write_folder(
        args.dir,
        args.base,
        {name: net},
        {
            "budget": args.budget,
            "model": "resnet20",
            "base": "base.pt",
            "top": 1,
            "base_eval": base_eval,
            "methods": {name: [name]},
            "candidates": {
                name: {
                    "method": name,
                    "flops_ratio": cost.flops / full.flops,
                    "params_ratio": cost.params / full.params,
                    "kept": kept,
                }
            },
        },
    )
    return 0


# --- run -------------------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def _row(job: dict[str, Any]) -> dict[str, Any]:
    """The job's fields that go into the results file (not where it ran or read its data)."""
    return {k: v for k, v in job.items() if k not in ("device", "data")}


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One fine-tune + evaluation in a worker process (splits, structures and teacher cached per process)."""
    from acpsearch.hashing import evaluate, load_dataset, make_splits, train_hash_net

    set_threads(1)
    d = job["dir"]
    if d not in _CACHE:
        data = job.get("data") or str(Path(d) / "fmnist")
        splits = make_splits(load_dataset("fashion-mnist", data), **PROTOCOL)
        _CACHE[d] = (
            splits,
            torch.load(Path(d) / "structures.pt", weights_only=False),
            load_base(Path(d) / "base.pt"),
        )
    splits, nets, teacher = _CACHE[d]
    dev = torch.device(job["device"])
    net = copy.deepcopy(nets[job["candidate"]]).to(dev)
    kw = dict(RECIPES[job["recipe"]])
    t0 = time.perf_counter()
    res = train_hash_net(
        net,
        splits,
        loss="csq",
        seed=job["seed"],
        progress=False,
        teacher=copy.deepcopy(teacher).to(dev) if kw.get("distill") else None,
        **kw,
    )
    train_s = time.perf_counter() - t0
    ev = evaluate(res.model, splits)
    return {
        **_row(job),
        "val_map": round(float(res.best_val_map), 5),
        "test_map": round(float(ev["map_all"]), 5),
        "test_map_topk": round(float(ev["map_topk"]), 5),
        "best_epoch": res.best_epoch,
        "train_seconds": round(train_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "device_name": _device_name(dev),
    }


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _worker(jobs: Any, results: Any) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            results.put(_job(job))
        except Exception as exc:  # a failed job is reported, the sweep goes on
            results.put({**_row(job), "error": f"{type(exc).__name__}: {exc}"})


def _chosen(seed0: dict[str, dict[str, Any]]) -> str:
    """The candidate a best-of-m method keeps: best seed-0 VALIDATION mAP (ties: the name)."""
    return max(seed0, key=lambda c: (seed0[c]["val_map"], c))


def _done_jobs(out: Path) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """Jobs already in the results file (resume: they are not run again)."""
    results: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            if "error" not in r:
                results[(r["dir"], r["recipe"], r["candidate"], r["seed"])] = r
    return results


def _keep_methods(metas: dict[str, dict[str, Any]], keep: set[str]) -> None:
    """Drop the candidates of every method not in keep."""
    for meta in metas.values():
        meta["methods"] = {m: c for m, c in meta["methods"].items() if m in keep}
        meta["candidates"] = {n: c for n, c in meta["candidates"].items() if c["method"] in keep}


class _Plan:
    """The job queue of `run`: a heap ordered by (stage, seed, candidate), each job queued once."""

    def __init__(
        self,
        stages: list[tuple[str, str]],
        metas: dict[str, dict[str, Any]],
        results: dict[tuple[str, str, str, int], dict[str, Any]],
        seeds: int,
    ) -> None:
        self.stages, self.metas, self.results, self.seeds = stages, metas, results, seeds
        self.heap: list[tuple[int, int, int, str]] = []
        self.queued: set[tuple[str, str, str, int]] = set()

    def push(self, stage: int, cand: str, seed: int) -> None:
        import heapq

        d, rc = self.stages[stage]
        key = (d, rc, cand, seed)
        if key not in self.results and key not in self.queued:
            self.queued.add(key)
            heapq.heappush(self.heap, (stage, seed, list(self.metas[d]["candidates"]).index(cand), cand))

    def extras(self, stage: int) -> None:
        """Queue the extra seeds of every method whose seed-0 runs are all in."""
        d, rc = self.stages[stage]
        for cands in self.metas[d]["methods"].values():
            seed0 = {c: self.results.get((d, rc, c, 0)) for c in cands}
            if len(cands) == 1 or all(seed0.values()):
                best = cands[0] if len(cands) == 1 else _chosen(seed0)
                for seed in range(1, self.seeds):
                    self.push(stage, best, seed)


def run(args: argparse.Namespace) -> int:
    """Seed 0 of every candidate, then --seeds seeds of each method's val-chosen candidate: the
    extra seeds are spent where the report reads them. Stages (recipe x folder) run in order."""
    import heapq
    import multiprocessing as mp

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    recipes = args.recipes.split(",")
    metas = {str(d): json.loads((Path(d) / "meta.json").read_text()) for d in args.dir}
    results = _done_jobs(args.out)
    stages = [(d, rc) for rc in recipes for d in metas]  # recipe-major: each recipe covers every budget
    if args.methods:  # run only these methods' candidates
        _keep_methods(metas, set(args.methods.split(",")))
    plan = _Plan(stages, metas, results, args.seeds)
    heap, extras = plan.heap, plan.extras
    for i, (d, _rc) in enumerate(stages):
        for cand in metas[d]["candidates"]:
            plan.push(i, cand, 0)
        extras(i)
    print(f"{len(heap)} jobs to start with on {device}, {args.jobs} processes, deadline {args.deadline} s", flush=True)
    ctx = mp.get_context("spawn")
    jobs, out_q = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(jobs, out_q), daemon=True) for _ in range(args.jobs)]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    pending = finished = 0

    def submit() -> None:  # one job per idle process, so the heap order is the priority
        nonlocal pending
        while heap and pending < args.jobs and time.perf_counter() - t0 < args.deadline:
            stage, seed, _, cand = heapq.heappop(heap)
            d, rc = stages[stage]
            jobs.put(
                {
                    "dir": d,
                    "candidate": cand,
                    "recipe": rc,
                    "seed": seed,
                    "budget": metas[d]["budget"],
                    "method": metas[d]["candidates"][cand]["method"],
                    "stage": stage,
                    "device": device,
                    "data": args.data,
                }
            )
            pending += 1

    submit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        while pending:
            try:
                r = out_q.get(timeout=max(1.0, args.deadline + args.grace - (time.perf_counter() - t0)))
            except queue.Empty:
                print("grace period over: the jobs still running are dropped", flush=True)
                break
            pending -= 1
            finished += 1
            stage = r.pop("stage")
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            print(
                f"[{time.perf_counter() - t0:6.0f}s] {r['recipe']} seed {r['seed']} {r['candidate']:14s} "
                f"val {r.get('val_map')} test {r.get('test_map')} ({r.get('seconds')} s) {r.get('error', '')}",
                flush=True,
            )
            if "error" not in r:
                results[(r["dir"], r["recipe"], r["candidate"], r["seed"])] = r
                if r["seed"] == 0:
                    extras(stage)
            submit()
    for p in procs:
        if pending:
            p.terminate()
        else:
            jobs.put(None)
    print(
        f"{finished} jobs done in {time.perf_counter() - t0:.0f} s; {len(heap)} not started, {pending} dropped",
        flush=True,
    )
    return 0


# --- report ----------------------------------------------------------------------------------------

METHOD_ORDER = ("acpsearch", "tp_global_mag", "uniform_l1", "random_best_m", "adaptive_bn")


def _meta_of(d: str, results_file: Path) -> dict[str, Any] | None:
    """A prepared folder's meta.json, or its copy beside the results (<folder name>.meta.json)."""
    for f in (Path(d) / "meta.json", results_file.with_name(f"{Path(d).name}.meta.json")):
        if f.exists():
            return json.loads(f.read_text())
    return None


def report(args: argparse.Namespace) -> int:
    rows, metas = [], {}
    for f in args.results:
        for line in Path(f).read_text().splitlines():
            if line.strip() and "error" not in (r := json.loads(line)):
                rows.append(r)
                if r["dir"] not in metas:
                    metas[r["dir"]] = _meta_of(r["dir"], Path(f))
    by: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["budget"], r["recipe"], r["method"], r["dir"], r["candidate"]), []).append(r)
    lines = [
        "| budget | recipe | method | chosen (of m) | test mAP@all (seed 0) | mean +- std over seeds (n) | "
        "val mAP (seed 0) | best of the m on test (seed 0) | FLOPs ratio | params ratio |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    keys = sorted(
        {(b, rc, m, d) for b, rc, m, d, _ in by},
        key=lambda k: (-k[0], list(RECIPES).index(k[1]), order.get(k[2], 99), k[2], k[3]),
    )
    # A method prepared in several folders of one budget (e.g. with and without an option) gets
    # one row per folder, labelled with the folder's name.
    folders: dict[tuple[Any, ...], set[str]] = {}
    for b, rc, m, d in keys:
        folders.setdefault((b, rc, m), set()).add(d)
    shown: set[tuple[float, str]] = set()
    for budget, recipe, method, folder in keys:
        meta = metas.get(folder) or {}
        base_meta = next((m for m in metas.values() if m and m["budget"] == budget and m.get("base_eval")), None)
        if (budget, recipe) not in shown and base_meta:
            shown.add((budget, recipe))
            b = base_meta["base_eval"]
            lines.append(
                f"| {budget} | {recipe} | base (unpruned) | | {b['test_map']:.4f} | | {b['val_map']:.4f} | | "
                "1.000 | 1.000 |"
            )
        label = method if len(folders[(budget, recipe, method)]) == 1 else f"{method} ({Path(folder).name})"
        cands = {c: rs for (b_, rc, m, d, c), rs in by.items() if (b_, rc, m, d) == (budget, recipe, method, folder)}
        if method in meta.get("methods", {}):  # every prepared candidate of the method must have run
            cands = {c: cands.get(c, []) for c in meta["methods"][method]}
        seed0 = {c: next((r for r in rs if r["seed"] == 0), None) for c, rs in cands.items()}
        if any(v is None for v in seed0.values()):
            continue  # the choice needs every candidate's seed-0 validation mAP
        chosen = _chosen(seed0)  # chosen on VALIDATION
        tests = [r["test_map"] for r in sorted(cands[chosen], key=lambda r: r["seed"])]
        info = meta.get("candidates", {}).get(chosen, {})
        rec = {
            "net": meta.get("model"),
            "budget": budget,
            "recipe": recipe,
            "method": label,
            "folder": folder,
            "chosen": chosen,
            "of": len(cands),
            "test_map_seed0": seed0[chosen]["test_map"],
            "test_maps": tests,
            "mean": statistics.fmean(tests),
            "std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "val_map": seed0[chosen]["val_map"],
            "best_seed0_test": max(r["test_map"] for r in seed0.values()),
            "flops_ratio": info.get("flops_ratio"),
            "params_ratio": info.get("params_ratio"),
            "base_test_map": (meta.get("base_eval") or {}).get("test_map"),
        }
        summary.append(rec)
        fr = f"{rec['flops_ratio']:.3f}" if rec["flops_ratio"] is not None else ""
        pr = f"{rec['params_ratio']:.3f}" if rec["params_ratio"] is not None else ""
        lines.append(
            f"| {budget} | {recipe} | {label} | {chosen} (of {len(cands)}) | {rec['test_map_seed0']:.4f} | "
            f"{rec['mean']:.4f} +- {rec['std']:.4f} ({len(tests)}) | {rec['val_map']:.4f} | "
            f"{rec['best_seed0_test']:.4f} | {fr} | {pr} |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    if args.md:
        args.md.write_text(md)
        args.md.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return 0


def latency(args: argparse.Namespace) -> int:
    """CPU latency (batch 32, 1 thread, the service's measure) of the base and of prepared
    candidates, in interleaved rounds so that machine drift hits every network alike."""
    from acpsearch.service.tasks import measure_latency_ms

    nets: dict[str, torch.nn.Module] = {}
    for spec in args.candidates:  # FOLDER:CANDIDATE
        folder, _, cand = spec.rpartition(":")
        if not folder:
            folder, cand = spec, ""
        found = torch.load(Path(folder) / "structures.pt", weights_only=False)
        if "base" not in nets:
            nets["base"] = load_base(Path(folder) / "base.pt")
        for name in [cand] if cand else list(found):
            nets[f"{Path(folder).name}:{name}"] = found[name]
    shape = (
        list(next(iter(nets.values())).example_shape)
        if hasattr(next(iter(nets.values())), "example_shape")
        else [1, 1, 28, 28]
    )
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(args.rounds):
        for k, net in nets.items():
            times[k].append(measure_latency_ms(net, shape, repeats=args.repeats))
    lines = ["| network | latency ms (median of rounds) | min | max |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |" for k, v in times.items()]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.md:
        args.md.write_text(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--top", type=int, default=4, help="m: finalists / best-of-m / adaptive-BN top-m")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--abn-candidates", type=int, default=32)
    p.add_argument("--encoder-epochs", type=int, default=60)
    p.add_argument("--encoder-strategies", type=int, default=128)
    p.add_argument("--objective", default="effect", choices=["sacp", "effect"])
    p.add_argument(
        "--target", default="agreement", choices=["agreement", "agreement+branch", "ft_steps"], help="encoder.target"
    )
    p.add_argument("--ft-steps", type=int, default=40, help="encoder.ft_steps (with --target ft_steps)")
    p.add_argument("--step", type=float, default=0.1)
    p.add_argument("--min-keep", type=float, default=0.2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-anchor", action="store_true", help="acpsearch without its magnitude anchor finalist")
    p.add_argument("--methods", default=None, help=f"prepare only these ({', '.join(METHOD_ORDER)}); default: all")
    c = sub.add_parser("prepare-tp-counts", help="TP global magnitude's kept counts, pruned by acpsearch's pruner")
    c.add_argument("--base", type=Path, required=True)
    c.add_argument("--dir", type=Path, required=True)
    c.add_argument("--budget", type=float, default=0.5)
    c.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("--dir", action="append", required=True, help="a prepared folder (repeatable)")
    r.add_argument("--recipes", default="ft4,kd16,base40")
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    r.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    r.add_argument("--deadline", type=float, default=480.0, help="seconds after which no new job starts")
    r.add_argument("--grace", type=float, default=60.0, help="seconds the running jobs get after the deadline")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--methods", default=None, help="comma-separated methods to run (default: all prepared)")
    r.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: each folder's fmnist/ copy)")
    q = sub.add_parser("report")
    q.add_argument("results", nargs="+", type=Path)
    q.add_argument("--md", type=Path, default=None)
    lt = sub.add_parser("latency", help="CPU latency of prepared candidates (batch 32, 1 thread)")
    lt.add_argument("candidates", nargs="+", help="FOLDER (all its candidates) or FOLDER:CANDIDATE")
    lt.add_argument("--rounds", type=int, default=5)
    lt.add_argument("--repeats", type=int, default=20)
    lt.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)
    return {
        "prepare": prepare,
        "prepare-tp-counts": prepare_tp_counts,
        "run": run,
        "report": report,
        "latency": latency,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
