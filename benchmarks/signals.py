"""Signals benchmark: which cheap signal ranks pruned structures by their fine-tuned validation mAP?

Evaluation set, per FLOPs budget (0.5, 0.25):
  sweep    every distinct structure (kept channel counts) in benchmarks/results/*.meta.json, with its
           stored `ft4` validation mAP from benchmarks/results/*.jsonl (fine-tuned from the structure
           sweep's base network, which is not in the repository);
  ranking  the ranking benchmark's candidates, redrawn as it draws them (DynamicSpace, seed 0 + budget
           x 100); their per-candidate fine-tunes lived in an uncommitted cache, so they are refitted here.
Every structure is rebuilt from its kept counts on THIS run's base (channels chosen by l1) and
fine-tuned with `ft4` (4 epochs, lr 1e-3, batch 128, --seeds seeds): the ground truth is the mean
validation mAP (val queries vs train set). The stored sweep mAP is reported as a second column.

Signals (higher = predicted better): agreement (the `effect` signal: code agreement after BN
recalibration), branch / branch_mean / branch_worst (1 - residual-branch damage before the add,
share-weighted / mean / worst block), add_output (the same measured after the add), naswot,
adaptive_bn (EagleEye), l1_retained, flops / params ratios, similarity_effect, similarity_branch and
similarity_agreement+branch (the GCN encoder trained on agreement, on branch, or on their rank
average), ft_steps (validation mAP after --short-steps fine-tuning steps), and rank averages.

    python -m benchmarks.signals --device cuda --threads 2 --jobs 8 --seeds 2     # GPU, ~5 min
    python -m benchmarks.signals --quick --threads 1                              # CPU smoke, ~2 min

A missing --base is trained first with the base-model benchmark's recipe (--base-epochs, 40 as there;
--quick saves an untrained network instead: a smoke test checks the pipeline, not the numbers).
Results: benchmarks/results/signals.json (rewritten after every phase) and signals.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from benchmarks import common

FT4 = {"epochs": 4, "lr": 1e-3, "batch_size": 128}
_CTX: dict[str, Any] = {}


def kept_of(g: Any, c: dict[str, Any], budget: float) -> dict[str, int] | None:
    """A prepared candidate's kept counts: stored, from its ratios (and round_to), or the uniform
    allocation's; None for Torch-Pruning's own network (its channels are not ours to rebuild)."""
    from acpsearch.pruning import PruningStrategy

    if "kept" in c:
        return {k: int(v) for k, v in c["kept"].items()}
    if "ratios" in c:
        s = PruningStrategy(g, c["ratios"], criterion="l1", round_to=int(c.get("round_to", 4)))
    elif c.get("method") == "uniform_l1":  # the largest uniform keep on a 0.01 grid within the budget
        keep = next(k / 100 for k in range(100, 0, -1) if g.cost(PruningStrategy.uniform(g, keep=k / 100)).flops
                    <= budget * g.cost().flops)  # fmt: skip
        s = PruningStrategy.uniform(g, keep=keep, criterion="l1")
    else:
        return None
    return {k: int(v) for k, v in s.kept.items()}


def structures_from_results(results: Path, g: Any) -> list[dict[str, Any]]:
    """Distinct (budget, kept counts) of the structure sweep's prepared folders, with their stored
    `ft4` validation / test mAP over all seeds found in the results' JSON lines."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in glob.glob(str(results / "*.jsonl")):
        for line in Path(f).read_text().splitlines():
            d = json.loads(line)
            if d.get("recipe") == "ft4" and d.get("dir"):
                rows.setdefault((Path(d["dir"]).name, d["candidate"]), []).append(d)
    out: dict[tuple[float, tuple[tuple[str, int], ...]], dict[str, Any]] = {}
    for f in sorted(glob.glob(str(results / "*.meta.json"))):
        meta = json.loads(Path(f).read_text())
        folder = Path(f).name.removesuffix(".meta.json")
        for name, c in meta.get("candidates", {}).items():
            kept = kept_of(g, c, float(meta["budget"]))
            if kept is None:
                continue
            key = (float(meta["budget"]), tuple(sorted(kept.items())))
            e = out.setdefault(key, {"budget": key[0], "kept": dict(key[1]), "names": [], "val": [], "test": []})
            e["names"].append(f"{folder}/{name}")
            for d in rows.get((folder, name), []):
                e["val"].append(d["val_map"])
                e["test"].append(d["test_map"])
    return list(out.values())


def ranking_structures(g: Any, budget: float, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The ranking benchmark's candidates of a budget, drawn as benchmarks.ranking draws them."""
    from acpsearch.search.space import Budget, DynamicSpace

    space = DynamicSpace(g, Budget(flops=budget))
    strategies = space.sample_many(n, random.Random(seed + int(budget * 100)))
    return [
        {"budget": budget, "kept": {k: int(v) for k, v in s.kept.items()}, "names": [f"ranking{budget}/{i}"]}
        for i, s in enumerate(strategies)
    ]


def strategy_of(g: Any, kept: dict[str, int]) -> Any:
    """A strategy keeping exactly `kept` channels per group (l1 channel choice)."""
    from acpsearch.pruning import PruningStrategy

    ch = {gr.name: gr.channels for gr in g.groups}
    s = PruningStrategy(g, {k: kept.get(k, ch[k]) / ch[k] for k in ch}, criterion="l1", round_to=1)
    if {k: int(v) for k, v in s.kept.items()} != {k: kept.get(k, ch[k]) for k in ch}:
        raise SystemExit(f"kept counts {kept} are not reproducible: {dict(s.kept)}")
    return s


def _context(base: str, data_dir: str | None, device: str, threads: int) -> dict[str, Any]:
    if not _CTX:
        from acpsearch.graph import ChannelGraph

        common.set_threads(threads)
        model = common.load_base(base).eval()
        splits = common.fmnist_splits(data_dir=data_dir)
        ex = torch.zeros(1, *splits.input_shape)
        _CTX.update(model=model, ex=ex, splits=splits, device=device, threads=threads)
        _CTX["g"] = ChannelGraph.from_model(model, ex)
    return _CTX


def finetune_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune one structure (ft4, or --short-steps optimizer steps) and return its validation mAP."""
    from acpsearch.hashing import train_hash_net
    from acpsearch.pruning import prune

    c = _context(job["base"], job["data_dir"], job["device"], job["threads"])
    net = prune(c["model"], strategy_of(c["g"], job["kept"]), c["ex"]).to(c["device"])
    kw = dict(FT4)
    steps = job["steps"] or job.get("max_batches")
    if steps:
        per_epoch = math.ceil(len(c["splits"].train[0]) / kw["batch_size"])
        need = math.ceil(steps / per_epoch)
        kw["epochs"] = need if job["steps"] else min(kw["epochs"], need)
    t0 = time.perf_counter()
    res = train_hash_net(
        net,
        c["splits"],
        loss="csq",
        seed=job["seed"],
        progress=False,
        num_threads=c["threads"],
        max_batches=steps or None,
        eval_every=kw["epochs"],
        **kw,
    )
    return {"key": job["key"], "seed": job["seed"], "steps": job["steps"], "val_map": res.best_val_map,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def collect(results: Any, n: int, label: str) -> list[dict[str, Any]]:
    """Results of n fine-tune jobs (futures or an iterator), with progress lines."""
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in results:
        out.append(r.result() if hasattr(r, "result") else r)
        if len(out) % max(1, n // 10) == 0 or len(out) == n:
            common.log(f"{label}: {len(out)}/{n} ({common.eta(len(out), n, t0)})")
    return out


def train_base(args: argparse.Namespace) -> None:
    """The ResNet-20 / CSQ / 32-bit base, trained with the base-model benchmark's recipe on --device."""
    from acpsearch.checkpoint import save_zoo_checkpoint
    from acpsearch.hashing import checkpoint_meta, create_model, train_hash_net
    from benchmarks.base_models import RECIPE

    splits = common.fmnist_splits(data_dir=args.data_dir)
    c, h, _ = splits.input_shape
    torch.manual_seed(0)
    model = create_model("resnet20", bits=32, in_channels=c, image_size=h).to(args.device)
    Path(args.base).parent.mkdir(parents=True, exist_ok=True)
    if args.base_epochs == 0:  # smoke tests: the untrained network
        save_zoo_checkpoint(args.base, model.cpu(), "resnet20", 32, c, h, {"dataset": splits.dataset})
        return
    t0 = time.perf_counter()
    recipe = dict(RECIPE, batch_size=args.base_batch or RECIPE["batch_size"])
    res = train_hash_net(
        model,
        splits,
        loss="csq",
        epochs=args.base_epochs,
        seed=0,
        progress=False,
        eval_every=args.base_epochs,
        **recipe,
    )
    common.log(f"base: {args.base_epochs} epochs in {time.perf_counter() - t0:.0f}s, val mAP {res.best_val_map:.4f}")
    meta = checkpoint_meta(splits, "csq", res, None, bits=32, lr=recipe["lr"], batch_size=recipe["batch_size"])
    save_zoo_checkpoint(args.base, res.model.cpu(), "resnet20", 32, c, h, meta)


def score(args: argparse.Namespace, structs: list[dict[str, Any]], doc: dict[str, Any]) -> None:
    """Every cheap signal on every structure (in place: struct['signals'][name])."""
    from acpsearch.pruning.signals import SignalProbe
    from acpsearch.search.rankers import AdaptiveBNRanker, L1RetainedRanker

    c = _context(args.base, args.data_dir, args.device, args.threads)
    g, Xtr = c["g"], c["splits"].train[0]
    perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(0))
    probe = None
    if args.probe_signals:
        probe = SignalProbe(c["model"], c["ex"], Xtr[perm[: 4 * 128]], Xtr[perm[-args.probe :]], device=args.device)
    abn = None
    if args.abn:
        abn = AdaptiveBNRanker(c["model"], c["splits"], c["ex"], calib_batches=args.abn_calib, device=args.device)
    l1 = L1RetainedRanker(g)
    full = g.cost()
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, st in enumerate(structs):
        s = strategy_of(g, st["kept"])
        t = time.perf_counter()
        sig = {k: float(v[0]) for k, v in probe.signals([s]).items()} if probe is not None else {}
        secs["probe"] = secs.get("probe", 0.0) + time.perf_counter() - t
        if abn is not None:
            sig["adaptive_bn"] = float(abn.score([s])[0])
            secs["adaptive_bn"] = secs.get("adaptive_bn", 0.0) + abn.last_seconds
        sig["l1_retained"] = float(l1.score([s])[0])
        cost = g.cost(s)
        sig["flops_ratio"], sig["params_ratio"] = cost.flops / full.flops, cost.params / full.params
        st["signals"] = sig
        if (i + 1) % max(1, len(structs) // 10) == 0:
            common.log(f"signals: {i + 1}/{len(structs)} ({common.eta(i + 1, len(structs), t0)})")
    doc["seconds_per_candidate"] = {k: v / len(structs) for k, v in secs.items()}


ENCODER_ROWS = {  # encoder target -> its row (similarity_effect: the `effect` objective's own target)
    "agreement": "similarity_effect",
    "branch": "similarity_branch",
    "agreement+branch": "similarity_agreement+branch",
    "ft_steps": "similarity_ft_steps",
}


def encoder_signals(args: argparse.Namespace, structs: list[dict[str, Any]], doc: dict[str, Any]) -> None:
    """similarity_<target>: the GCN encoder trained (per budget, as a study does) on one signal of
    random strategies (--encoder-targets), scoring the structures. The ft_steps target fine-tunes
    every training strategy --short-steps steps (in --jobs processes); its values are kept in the
    results (encoder_ft_steps) and reused by a later --from run with the same settings."""
    from acpsearch.encoder import rank_average, train_encoder
    from acpsearch.pruning.signals import SignalProbe
    from acpsearch.search.rankers import SimilarityRanker
    from acpsearch.search.space import Budget, DynamicSpace

    targets = [t for t in args.encoder_targets.split(",") if t]
    c = _context(args.base, args.data_dir, args.device, args.threads)
    g, Xtr = c["g"], c["splits"].train[0]
    perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(0))
    probe = SignalProbe(c["model"], c["ex"], Xtr[perm[: 4 * 128]], Xtr[perm[-args.probe :]], device=args.device)
    budgets = {float(b) for b in args.encoder_budgets.split(",")}
    for b in sorted({st["budget"] for st in structs} & budgets):
        space = DynamicSpace(g, Budget(flops=b), step=0.1, min_keep=0.2)
        train = space.sample_many(args.encoder_strategies, random.Random(1000))
        t = time.perf_counter()
        tsig: dict[str, Any] = {}
        if set(targets) - {"ft_steps"}:  # the probe's targets (ft_steps alone needs no probe pass)
            tsig = probe.signals(train)
            # the rank average of the two, scaled to (0, 1]: one target that sees both the code and the branches
            tsig["agreement+branch"] = np.asarray(rank_average(tsig["agreement"], tsig["branch"]))
        if "ft_steps" in targets:
            tsig["ft_steps"] = np.asarray(_train_ft_steps(args, b, train, doc))
        common.log(f"[{b}] encoder targets for {len(train)} strategies in {time.perf_counter() - t:.0f}s")
        mine = [st for st in structs if st["budget"] == b]
        strategies = [strategy_of(g, st["kept"]) for st in mine]
        for target in targets:
            enc = train_encoder(g, "effect", strategies=train, signal=tsig[target], epochs=args.encoder_epochs, seed=0)
            for st, v in zip(mine, SimilarityRanker(enc.encoder, g).score(strategies)):
                st["signals"][ENCODER_ROWS[target]] = float(v)
        doc.setdefault("encoder_seconds", {})[str(b)] = time.perf_counter() - t


def _train_ft_steps(args: argparse.Namespace, budget: float, train: list[Any], doc: dict[str, Any]) -> list[float]:
    """The ft_steps signal of the encoder's training strategies (validation mAP after --short-steps
    steps), from the results document when it holds them for these settings."""
    key = f"{budget} steps={args.short_steps} n={len(train)}"
    stored = doc.setdefault("encoder_ft_steps", {})
    if key in stored:
        return [float(v) for v in stored[key]]
    base_job = {"base": args.base, "data_dir": args.data_dir, "device": args.device, "threads": args.threads}
    jobs = [
        dict(base_job, key=i, kept={k: int(v) for k, v in s.kept.items()}, seed=0, steps=args.short_steps)
        for i, s in enumerate(train)
    ]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            res = collect([pool.submit(finetune_job, j) for j in jobs], len(jobs), f"[{budget}] encoder ft_steps")
    else:
        res = collect(map(finetune_job, jobs), len(jobs), f"[{budget}] encoder ft_steps")
    vals = [r["val_map"] for r in sorted(res, key=lambda r: r["key"])]
    stored[key] = vals
    return vals


def spearman_table(structs: list[dict[str, Any]], truth: str) -> dict[str, dict[str, Any]]:
    """Per evaluation subset ('<set> <budget>'): n and every signal's Spearman with `truth`."""
    table: dict[str, dict[str, Any]] = {}
    subsets: dict[str, list[dict[str, Any]]] = {}
    for st in structs:
        if st.get(truth) is None or "signals" not in st:
            continue
        for name in (st["set"], "all"):
            subsets.setdefault(f"{name} {st['budget']}", []).append(st)
    for key, rows in sorted(subsets.items()):
        if len(rows) < 4:
            continue
        y = np.array([r[truth] for r in rows])
        names = sorted({k for r in rows for k in r["signals"]})
        table[key] = {"n": len(rows)}
        for k in names:
            x = np.array([r["signals"].get(k, np.nan) for r in rows], dtype=float)
            ok = np.isfinite(x)
            rho = stats.spearmanr(x[ok], y[ok]).statistic if ok.sum() > 3 else float("nan")
            table[key][k] = None if not np.isfinite(rho) else round(float(rho), 3)
    return table


def add_rank_averages(structs: list[dict[str, Any]]) -> None:
    """Rank averages of agreement with the branch signals, per budget (ranks within the budget)."""
    for b in {st["budget"] for st in structs}:
        mine = [st for st in structs if st["budget"] == b and "agreement" in st.get("signals", {})]
        if not mine:
            continue
        r = {k: stats.rankdata([st["signals"][k] for st in mine]) for k in ("agreement", "branch", "branch_worst")}
        for i, st in enumerate(mine):
            st["signals"]["agreement+branch"] = float(r["agreement"][i] + r["branch"][i])
            st["signals"]["agreement+branch_worst"] = float(r["agreement"][i] + r["branch_worst"][i])


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Signals vs fine-tuned validation mAP (Spearman)", "", f"Command: `{doc['command']}`", ""]
    for truth, table in doc["tables"].items():
        if not table:
            continue
        cols = list(table)
        lines += [f"## Ground truth: {truth}", "", "| signal | " + " | ".join(cols) + " |"]
        lines += ["|---|" + "---|" * len(cols), "| n | " + " | ".join(str(table[c]["n"]) for c in cols) + " |"]
        for k in sorted({k for t in table.values() for k in t} - {"n"}):
            lines.append(f"| {k} | " + " | ".join(str(table[c].get(k)) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--base", default=str(common.BASE))
    p.add_argument("--base-epochs", type=int, default=40, help="epochs when --base is missing and trained here")
    p.add_argument("--base-batch", type=int, default=None, help="batch size of a base trained here (default: recipe's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="fine-tune processes sharing the device")
    p.add_argument("--seeds", type=int, default=1, help="ft4 seeds per structure (ground truth)")
    p.add_argument("--short-steps", type=int, default=40, help="optimizer steps of the ft_steps signal (0: off)")
    p.add_argument("--ft-max-batches", type=int, default=None, help="cap ft4's optimizer steps (smoke tests)")
    p.add_argument("--candidates", type=int, default=24, help="ranking candidates per budget")
    p.add_argument("--probe", type=int, default=500, help="probe images of the functional signals")
    p.add_argument("--abn-calib", type=int, default=20, help="adaptive-BN calibration batches")
    p.add_argument("--encoder-strategies", type=int, default=128, help="0: no encoder rows")
    p.add_argument("--encoder-epochs", type=int, default=60)
    p.add_argument(
        "--encoder-targets",
        default="agreement,branch,agreement+branch",
        help=f"the encoder rows' targets, comma-separated ({', '.join(ENCODER_ROWS)}); ft_steps fine-tunes "
        "each of --encoder-strategies strategies --short-steps steps",
    )
    p.add_argument("--encoder-budgets", default="0.5,0.25", help="the budgets that get encoder rows")
    p.add_argument(
        "--from",
        dest="from_json",
        default=None,
        help="a results file of an earlier run on the same --base: its structures, truth and signals are "
        "reused and only the encoder rows are computed (again)",
    )
    p.add_argument("--sets", default="sweep,ranking", help="evaluation sets: sweep, ranking (comma-separated)")
    p.add_argument("--no-finetune", action="store_true", help="no ft4 fine-tunes: only the stored sweep mAP as truth")
    p.add_argument(
        "--ranking-truth",
        default=None,
        help="benchmarks.ranking's fine-tune log (its cache's ranking_finetune.jsonl): the ranking set's truth "
        "is read from it (fine-tuned from the same --base), and those structures are not fine-tuned again",
    )
    p.add_argument("--no-abn", dest="abn", action="store_false", help="skip adaptive BN (the slowest signal)")
    p.add_argument(
        "--no-probe", dest="probe_signals", action="store_false", help="skip the probe's signals (agreement, branch...)"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 2 structures per set and budget, tiny settings")
    p.add_argument("--out", default=str(common.RESULTS / "signals.json"))
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    unknown = set(args.encoder_targets.split(",")) - set(ENCODER_ROWS) - {""}
    if unknown:
        p.error(f"--encoder-targets: unknown {sorted(unknown)}; known: {', '.join(ENCODER_ROWS)}")
    if args.quick:  # tiny settings, and files of their own so a smoke test never replaces real ones
        args.candidates, args.probe, args.abn_calib, args.encoder_strategies, args.encoder_epochs = 4, 128, 2, 16, 5
        args.base_epochs, args.short_steps, args.ft_max_batches = 0, 4, 8
        if args.base == str(common.BASE):
            args.base = str(common.CACHE / "signals_quick_base.pt")
        if args.out == str(common.RESULTS / "signals.json"):
            args.out = str(common.CACHE / "signals_quick.json")
    return args


def attach_ranking_truth(path: Path, g: Any, structs: list[dict[str, Any]]) -> None:
    """The ranking benchmark's fine-tuned validation mAP as the ranking set's truth (st['ft4']).

    Each record is matched by budget and candidate number, and its FLOPs ratio must be the one this
    run's structure has: a log from other candidates (another seed or space) stops the run."""
    from benchmarks.ranking import load_jsonl

    recs = {(float(d["budget"]), int(d["idx"])): d for d in load_jsonl(path)}
    full = g.cost().flops
    for st in structs:
        d = recs.get((st["budget"], int(st["names"][0].rsplit("/", 1)[1])))
        if d is None:
            continue
        flops = g.cost(strategy_of(g, st["kept"])).flops / full
        if abs(flops - d["flops_ratio"]) > 1e-6:
            raise SystemExit(f"{path}: {st['names'][0]} has FLOPs ratio {d['flops_ratio']:.6f}, not {flops:.6f}")
        st["ft4"] = [float(d["val_map"])]


def all_structures(args: argparse.Namespace, g: Any) -> list[dict[str, Any]]:
    """The evaluation set: the sweep's structures, then the ranking candidates (--quick: 2 of each)."""
    sets = set(args.sets.split(","))
    structs = [dict(st, set="sweep") for st in structures_from_results(common.RESULTS, g)] if "sweep" in sets else []
    for b in (0.5, 0.25) if "ranking" in sets else ():
        structs += [dict(st, set="ranking") for st in ranking_structures(g, b, args.candidates)]
    if args.quick:  # the first 2 structures of each set and budget
        seen: dict[tuple[str, float], int] = {}
        for st in structs:
            seen[(st["set"], st["budget"])] = st["n_in_set"] = seen.get((st["set"], st["budget"]), 0) + 1
        structs = [st for st in structs if st.pop("n_in_set") <= 2]
    if args.ranking_truth:
        attach_ranking_truth(Path(args.ranking_truth), g, [st for st in structs if st["set"] == "ranking"])
    if args.no_finetune:  # the stored mAP is the only ground truth: structures without it are not scored
        structs = [st for st in structs if st.get("val") or st.get("ft4")]
    for i, st in enumerate(structs):
        st["key"] = i
        st["stored_val"] = float(np.mean(st["val"])) if st.get("val") else None
        st["stored_test"] = float(np.mean(st["test"])) if st.get("test") else None
    return structs


def measure(args: argparse.Namespace, structs: list[dict[str, Any]], doc: dict[str, Any], save: Any) -> None:
    """The ground-truth fine-tunes (ft4), the cheap signals and the ft_steps signal of every structure."""
    base_job = {"base": args.base, "data_dir": args.data_dir, "device": args.device, "threads": args.threads}
    ft4 = [
        dict(base_job, key=st["key"], kept=st["kept"], seed=s, steps=0, max_batches=args.ft_max_batches)
        for s in range(0 if args.no_finetune else args.seeds)
        for st in structs
        if not st.get("ft4")  # truth read from --ranking-truth
    ]
    short = [dict(base_job, key=st["key"], kept=st["kept"], seed=0, steps=args.short_steps) for st in structs]
    short = short if args.short_steps else []
    # with --jobs > 1 the fine-tunes start in worker processes now, while this one scores the signals
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else None
    futures = [pool.submit(finetune_job, j) for j in ft4 + short] if pool else None
    try:
        common.log(f"{len(structs)} structures; scoring the signals")
        score(args, structs, doc)
        save()
        res = collect(futures[: len(ft4)] if futures else map(finetune_job, ft4), len(ft4), "ft4")
        for r in res:  # (none with --no-finetune)
            structs[r["key"]].setdefault("ft4", []).append(r["val_map"])
        for st in structs:
            st["val_map"] = float(np.mean(st["ft4"])) if st.get("ft4") else None
        if res:
            doc["seconds_per_candidate"]["ft4"] = float(np.mean([r["seconds"] for r in res]))
        save()
        if short:
            res = collect(futures[len(ft4) :] if futures else map(finetune_job, short), len(short), "ft_steps")
            for r in res:
                structs[r["key"]]["signals"]["ft_steps"] = r["val_map"]
            doc["seconds_per_candidate"]["ft_steps"] = float(np.mean([r["seconds"] for r in res]))
            save()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if not Path(args.base).exists():
        common.log(f"{args.base} missing: training it ({args.base_epochs} epochs on {args.device})")
        train_base(args)
    c = _context(args.base, args.data_dir, args.device, args.threads)
    cmd = "python -m benchmarks.signals " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if args.from_json:  # an earlier run's structures, truth and signals; only the encoder rows are computed
        doc = json.loads(Path(args.from_json).read_text())
        doc["command"] = f"{doc['command']}; then {cmd.strip()}"
        structs = doc["structures"]
    else:
        structs = all_structures(args, c["g"])
        doc = {"command": cmd.strip(), "device": args.device, "tables": {}, "structures": structs}

    def save() -> None:
        add_rank_averages(structs)
        doc["tables"] = {
            "ft4 on this base (mean over seeds)": spearman_table(structs, "val_map"),
            "stored ft4 (sweep's base, mean over seeds)": spearman_table(structs, "stored_val"),
            "stored ft4 test mAP (sweep's base, mean over seeds)": spearman_table(structs, "stored_test"),
        }
        common.write_json(out, doc)
        out.with_suffix(".md").write_text(markdown(doc))

    if not args.from_json:
        measure(args, structs, doc, save)
    if args.encoder_strategies:
        encoder_signals(args, structs, doc)
        save()
    common.log(f"done: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
