"""Ranking benchmark: how well does each ranker order pruned candidates by fine-tuned mAP?

Real data, run by hand (CPU, ~1 h):

    nice -n 10 .venv/bin/python -m benchmarks.ranking > benchmarks/cache/ranking.log 2>&1 &

Protocol: Fashion-MNIST, CIFAR-style splits (100 queries + 500 train + 100 val per class, the
rest as database), the trained ResNet-20 32-bit CSQ hash net (benchmarks/cache/
resnet20_csq32_fmnist.pt, written by benchmarks/base_models.py). For each FLOPs budget (0.5,
0.25) N candidates are drawn from the DynamicSpace; every ranker scores the SAME candidates
(phase 1, cheap); then every candidate is fine-tuned ONCE with the same budget (4 epochs,
acpsearch.hashing.train_hash_net) and evaluated (validation mAP = val queries vs train set;
test mAP = queries vs database) (phase 2, expensive). Per ranker: Spearman and Kendall of the
score with the fine-tuned validation mAP, the test mAP of its top-1 candidate and the best test
mAP within its top 3, seconds per candidate and candidates scored per second in batch.

Everything is cached in benchmarks/cache/ (candidate lists, ranker scores, one JSON line per
fine-tuned candidate), so an interrupted run resumes; results/ranking.json|md are rewritten
after every fine-tuned candidate, so a cut-off run still leaves numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

import acpsearch as acp
from acpsearch.checkpoint import read_checkpoint
from acpsearch.encoder import FunctionalProbe, train_encoder
from acpsearch.hashing import encode, evaluate, load_dataset, make_splits, mean_average_precision, train_hash_net
from acpsearch.search.rankers import (
    AdaptiveBNRanker,
    CodeAgreementRanker,
    L1RetainedRanker,
    RandomRanker,
    SimilarityRanker,
)
from acpsearch.search.space import Budget, DynamicSpace
from benchmarks import common

CACHE = common.CACHE
RESULTS = common.RESULTS
COMMAND = "nice -n 10 .venv/bin/python -m benchmarks.ranking"


log = common.log


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: ignore, it is recomputed
            pass
    return out


def claim(name: str) -> bool:
    """Atomically claim a unit of work (a fine-tune or test pass) so that two benchmark processes
    can share the list; a claim whose process died is taken over."""
    path = CACHE / f"{name}.lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(path.read_text() or "0")
            os.kill(pid, 0)
            return pid == os.getpid()
        except (ValueError, ProcessLookupError):
            path.write_text(str(os.getpid()))
            return True
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def setup(args: argparse.Namespace):
    common.set_threads(args.threads)
    ckpt = read_checkpoint(args.base)
    model = acp.load_model(args.base).eval()
    meta = ckpt.get("meta", {})
    proto = meta.get("protocol") or {"query_per_class": 100, "train_per_class": 500, "val_per_class": 100, "seed": 0}
    proto = {k: proto[k] for k in ("query_per_class", "train_per_class", "val_per_class", "seed") if k in proto}
    ds = load_dataset(meta.get("dataset") or "fashion-mnist")
    splits = make_splits(ds, **proto)
    example = torch.zeros(ckpt["input_shape"])
    g = acp.ChannelGraph.from_model(model, example)
    return model, splits, example, g, meta


def candidates_for(space: DynamicSpace, budget: str, n: int, seed: int) -> list[Any]:
    """The benchmark's candidates, drawn once and cached so every phase and resume sees the same."""
    path = CACHE / f"ranking_candidates_{budget}.json"
    if path.exists():
        rows = json.loads(path.read_text())
        if len(rows) >= n:
            return [space.to_strategy(r) for r in rows[:n]]
    strategies = space.sample_many(n, random.Random(seed))
    path.write_text(json.dumps([{k: float(v) for k, v in s.ratios.items()} for s in strategies]))
    return strategies


def load_scores(budget: str, n: int, version: int) -> dict[str, Any] | None:
    """The cached ranker scores of a budget, merged from the part files (main, adaptive_bn)."""
    out = None
    for part in ("main", "adaptive_bn"):
        path = CACHE / f"ranking_scores_{budget}_{part}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        if d.get("n") != n or d.get("version") != version:
            continue
        if out is None:
            out = d
        else:
            for k in ("scores", "seconds_per_candidate", "per_second_batch"):
                out.setdefault(k, {}).update(d.get(k, {}))
    return out


def score_phase(args, model, splits, example, g, budget: str, cands: list[Any], part: str) -> None:
    """Score the candidates with the rankers of `part` (main: encoders, similarity, code agreement,
    l1, random; adaptive_bn: the EagleEye baseline) and cache them; parts can run in parallel."""
    path = CACHE / f"ranking_scores_{budget}_{part}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("n") == len(cands) and cached.get("version") == args.scores_version:
            return
    if not claim(f"ranking_scores_{budget}_{part}"):
        return
    b = float(budget)
    space = DynamicSpace(g, Budget(flops=b), step=0.1, min_keep=0.2)
    rng = random.Random(1000 + args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    Xtr = splits.train[0]
    perm = torch.randperm(len(Xtr), generator=gen)
    calib = Xtr[perm[: args.signal_calib_batches * 128]]
    probe_X = Xtr[perm[-args.probe :]]
    out: dict[str, Any] = {
        "n": len(cands),
        "version": args.scores_version,
        "scores": {},
        "seconds_per_candidate": {},
        "per_second_batch": {},
        "encoders": {},
    }
    rankers: dict[str, Any] = {}
    if part == "adaptive_bn":
        rankers["adaptive_bn"] = AdaptiveBNRanker(model, splits, example, calib_batches=args.calib_batches)
    else:
        # -- encoders: trained on strategies from the same space, disjoint from the candidates (other seed)
        train_strats = space.sample_many(args.train_strategies, rng)
        log(f"[{budget}] sacp encoder on {len(train_strats)} strategies")
        sacp = train_encoder(g, "sacp", strategies=train_strats, epochs=args.encoder_epochs, seed=args.seed)
        log(f"[{budget}] sacp loss {sacp.losses[0]:.3f} -> {sacp.losses[-1]:.3f} in {sacp.seconds:.1f}s")
        probe = FunctionalProbe(model, example, calib, probe_X)
        t0 = time.perf_counter()
        signal = probe.agreement(train_strats)
        sig_s = time.perf_counter() - t0
        log(f"[{budget}] effect signal (code agreement) for {len(train_strats)} strategies in {sig_s:.1f}s")
        effect = train_encoder(
            g, "effect", strategies=train_strats, signal=signal, epochs=args.encoder_epochs, seed=args.seed
        )
        log(f"[{budget}] effect loss {effect.losses[0]:.3f} -> {effect.losses[-1]:.3f} in {effect.seconds:.1f}s")
        for name, res in (("sacp", sacp), ("effect", effect)):
            out["encoders"][name] = {
                "loss_first": res.losses[0],
                "loss_last": res.losses[-1],
                "train_seconds": res.seconds,
                "strategies": res.strategies,
                "epochs": len(res.losses),
                "loss_history": [round(x, 4) for x in res.losses],
            }
            res.encoder.save(CACHE / f"ranking_encoder_{name}_{budget}.pt")
        out["encoders"]["effect"]["signal_seconds"] = sig_s
        rankers = {
            "similarity": SimilarityRanker(effect.encoder if args.default_objective == "effect" else sacp.encoder, g),
            "similarity_sacp": SimilarityRanker(sacp.encoder, g),
            "similarity_effect": SimilarityRanker(effect.encoder, g),
            "code_agreement": CodeAgreementRanker(model, example, calib, probe_X),
            "l1_retained": L1RetainedRanker(g),
            "random": RandomRanker(args.seed),
        }
    pool = space.sample_many(512, random.Random(5000 + args.seed))
    for name, r in rankers.items():
        scores = r.score(cands)
        out["scores"][name] = [float(v) for v in scores]
        out["seconds_per_candidate"][name] = r.last_seconds / len(cands)
        if name.startswith("similarity") or name in ("l1_retained", "random"):
            r.score(pool)  # batch throughput on a larger pool
            out["per_second_batch"][name] = len(pool) / max(r.last_seconds, 1e-9)
        else:
            out["per_second_batch"][name] = 1.0 / max(out["seconds_per_candidate"][name], 1e-9)
        log(f"[{budget}] {name}: {out['seconds_per_candidate'][name] * 1000:.2f} ms/candidate")
    out["default_objective"] = args.default_objective
    if part == "main":
        # how well each encoder reproduces the functional signal on the (unseen) candidates
        ca = np.array(out["scores"]["code_agreement"])
        out["encoder_vs_code_agreement_spearman"] = {
            k: float(stats.spearmanr(out["scores"][k], ca).statistic) for k in ("similarity_sacp", "similarity_effect")
        }
        log(f"[{budget}] Spearman with code agreement on the candidates: {out['encoder_vs_code_agreement_spearman']}")
    path.write_text(json.dumps(out))


def finetune_one(args, model, splits, example, g, budget: str, idx: int, s: Any) -> dict[str, Any]:
    """Fine-tune one candidate (validation mAP only); its weights go to the cache for the test pass."""
    pruned = acp.prune(model, s, example)
    t0 = time.perf_counter()
    res = train_hash_net(
        pruned,
        splits,
        loss="csq",
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        num_threads=args.ft_threads or args.threads,
        eval_every=args.eval_every,
    )
    ft_s = time.perf_counter() - t0
    torch.save(
        {k: v.detach().clone() for k, v in res.model.to(memory_format=torch.contiguous_format).state_dict().items()},
        CACHE / f"ranking_ft_{budget}_{idx}.pt",
    )
    cost = g.cost(s)
    full = g.cost()
    return {
        "budget": budget,
        "idx": idx,
        "ratios": {k: float(v) for k, v in s.ratios.items()},
        "flops_ratio": cost.flops / full.flops,
        "params_ratio": cost.params / full.params,
        "val_map": res.best_val_map,
        "epochs": args.epochs,
        "finetune_seconds": ft_s,
    }


def test_one(args, model, splits, example, budget: str, idx: int, s: Any) -> dict[str, Any]:
    """Test mAP (queries vs the 63k database) of a fine-tuned candidate from its cached weights."""
    net = acp.prune(model, s, example)
    net.load_state_dict(torch.load(CACHE / f"ranking_ft_{budget}_{idx}.pt", weights_only=True))
    t0 = time.perf_counter()
    torch.set_num_threads(args.ft_threads or args.threads)
    # the two numbers the table needs, without evaluate()'s extras (val re-encode, precision@N):
    # encoding the 63k database dominates and costs minutes on the shared machine
    q = encode(net.eval(), splits.query[0])
    db = encode(net, splits.database[0])
    ql, dl = splits.query[1], splits.database[1]
    return {
        "budget": budget,
        "idx": idx,
        "test_map": mean_average_precision(q, db, ql, dl),
        "test_map_topk": mean_average_precision(q, db, ql, dl, topk=1000),
        "eval_seconds": time.perf_counter() - t0,
    }


def merged(budget: str, epochs: int) -> list[dict[str, Any]]:
    """Fine-tune records of a budget joined with their test records (test_map None until evaluated)."""
    ft = {
        d["idx"]: d
        for d in load_jsonl(CACHE / "ranking_finetune.jsonl")
        if d["budget"] == budget and d["epochs"] == epochs
    }
    te = {d["idx"]: d for d in load_jsonl(CACHE / "ranking_test.jsonl") if d["budget"] == budget}
    out = []
    for i in sorted(ft):
        d = dict(ft[i])
        d["test_map"] = te[i]["test_map"] if i in te else None
        d["eval_seconds"] = te[i]["eval_seconds"] if i in te else None
        out.append(d)
    return out


def test_priority(scores: dict[str, Any], done: list[dict[str, Any]]) -> list[int]:
    """Candidates whose test mAP the table needs first: every ranker's top 3, then the top 5 by
    fine-tuned validation mAP, then all the rest (so best_test_map covers every candidate in the end)."""
    idx = [d["idx"] for d in done]
    order: list[int] = []
    for sc in (scores or {}).get("scores", {}).values():
        top = sorted(idx, key=lambda i: -sc[i])[:3]
        order += [i for i in top if i not in order]
    by_val = sorted(done, key=lambda d: -d["val_map"])
    order += [d["idx"] for d in by_val[:5] if d["idx"] not in order]
    order += [i for i in idx if i not in order]
    return order


def ranker_table(scores: dict[str, Any], done: list[dict[str, Any]]) -> dict[str, Any]:
    idx = [d["idx"] for d in done]
    val = np.array([d["val_map"] for d in done])
    test = np.array([np.nan if d["test_map"] is None else d["test_map"] for d in done])
    table = {}
    for name, sc in scores["scores"].items():
        s = np.array([sc[i] for i in idx])
        order = np.argsort(-s, kind="stable")
        sp = stats.spearmanr(s, val).statistic if len(done) > 2 else float("nan")
        kt = stats.kendalltau(s, val).statistic if len(done) > 2 else float("nan")
        table[name] = {
            "spearman": None if np.isnan(sp) else round(float(sp), 4),
            "kendall": None if np.isnan(kt) else round(float(kt), 4),
            "top1_test_map": None if np.isnan(test[order[0]]) else round(float(test[order[0]]), 4),
            "top3_best_test_map": None if np.isnan(test[order[:3]]).any() else round(float(test[order[:3]].max()), 4),
            "seconds_per_candidate": round(float(scores["seconds_per_candidate"][name]), 6),
            "candidates_per_second_batch": round(float(scores["per_second_batch"][name]), 2),
        }
    return table


def write_results(args, base: dict[str, Any]) -> None:
    all_scores = {b: sc for b in args.budgets if (sc := load_scores(b, args.candidates, args.scores_version))}
    out: dict[str, Any] = {
        "budgets": {},
        "base_test_map": base.get("map_all"),
        "base_val_map": base.get("val_map"),
        "command": COMMAND,
        "protocol": {
            "dataset": "fashion-mnist",
            "model": "resnet20 csq 32 bits",
            "finetune_epochs": args.epochs,
            "finetune_lr": args.lr,
            "encoder_train_strategies": args.train_strategies,
            "encoder_epochs": args.encoder_epochs,
            "calib_batches": args.calib_batches,
        },
    }
    for budget, scores in all_scores.items():
        done = merged(budget, args.epochs)
        tested = [d for d in done if d["test_map"] is not None]
        entry: dict[str, Any] = {
            "candidates": len(done),
            "candidates_planned": scores["n"],
            "encoder_vs_code_agreement_spearman": scores.get("encoder_vs_code_agreement_spearman"),
            "candidates_test_evaluated": len(tested),
            "encoders": scores.get("encoders", {}),
            "default_objective": scores.get("default_objective"),
        }
        if done:
            entry["rankers"] = ranker_table(scores, done)
            entry["finetuned_map_range"] = [
                round(min(d["val_map"] for d in done), 4),
                round(max(d["val_map"] for d in done), 4),
            ]
            if tested:
                entry["finetuned_test_map_range"] = [
                    round(min(d["test_map"] for d in tested), 4),
                    round(max(d["test_map"] for d in tested), 4),
                ]
                entry["best_test_map"] = round(max(d["test_map"] for d in tested), 4)
                entry["eval_seconds_mean"] = round(float(np.mean([d["eval_seconds"] for d in tested])), 1)
            entry["flops_ratio_range"] = [
                round(min(d["flops_ratio"] for d in done), 4),
                round(max(d["flops_ratio"] for d in done), 4),
            ]
            entry["finetune_seconds_mean"] = round(float(np.mean([d["finetune_seconds"] for d in done])), 1)
        out["budgets"][budget] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ranking.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "ranking.md").write_text(markdown(out))


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# Ranking benchmark: rankers vs fine-tuned mAP",
        "",
        "ResNet-20, 32-bit CSQ hash net, Fashion-MNIST (CIFAR-style protocol). Candidates drawn from the",
        "DynamicSpace at each FLOPs budget, every candidate fine-tuned once "
        f"({out['protocol']['finetune_epochs']} epochs); correlations are with the fine-tuned",
        "validation mAP (val queries vs train set), top-1 / top-3 use the test mAP@all (queries vs database).",
        "`similarity` is the ACP-SSE ranker with the default encoder objective; `similarity_sacp` and",
        "`similarity_effect` show both objectives.",
        "",
        f"Base net test mAP@all: {out['base_test_map']}",
        "",
        f"Command: `{out['command']}`",
        "",
    ]
    for budget, e in out["budgets"].items():
        lines += [
            f"## FLOPs budget {budget}: {e['candidates']} of {e['candidates_planned']} candidates fine-tuned, "
            f"{e['candidates_test_evaluated']} test-evaluated",
            "",
        ]
        if "rankers" not in e:
            lines += ["(no candidate fine-tuned yet)", ""]
            continue
        lines += [
            f"fine-tuned val mAP range {e['finetuned_map_range']}, test mAP range {e.get('finetuned_test_map_range')}, "
            f"best test mAP {e.get('best_test_map')} (over the test-evaluated candidates), "
            f"FLOPs ratio range {e['flops_ratio_range']}",
            "",
            "| ranker | Spearman | Kendall | top-1 test mAP | best test mAP in top 3 | s / candidate "
            "| candidates / s (batch) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in e["rankers"].items():
            lines.append(
                f"| {name} | {r['spearman']} | {r['kendall']} | {r['top1_test_map']} | {r['top3_best_test_map']} | "
                f"{r['seconds_per_candidate']:.4g} | {r['candidates_per_second_batch']:.4g} |"
            )
        enc = e.get("encoders", {})
        if enc:
            lines += [
                "",
                "Encoder training: "
                + "; ".join(
                    f"{k}: loss {v['loss_first']:.3f} -> {v['loss_last']:.3f} over {v['epochs']} epochs on "
                    f"{v['strategies']} strategies in {v['train_seconds']:.0f} s"
                    for k, v in enc.items()
                ),
            ]
        lines.append("")
    return "\n".join(lines) + "\n"


def base_eval(model: Any, splits: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The base network's test / val mAP: cached, from the checkpoint's meta, or measured."""
    base_path = CACHE / "ranking_base_eval.json"
    m = meta.get("metrics") or {}
    if base_path.exists():
        return json.loads(base_path.read_text())
    if "map_all" in m and "val_map" in m:  # measured by benchmarks.base_models on the same protocol
        base = {"map_all": m["map_all"], "val_map": m["val_map"], "source": "checkpoint meta"}
    else:
        base = evaluate(model, splits)
    base_path.write_text(json.dumps(base))
    return base


def test_passes(
    args: argparse.Namespace, model: Any, splits: Any, example: Any, b: str, cands: list[Any], base: dict[str, Any]
) -> None:
    """Test passes of one budget's fine-tuned candidates, by ranker priority, until every ranker's top 3
    is tested (and --min-tested are), or all are with --test-all."""
    while True:
        sc = load_scores(b, args.candidates, args.scores_version)
        m = merged(b, args.epochs)
        untested = {d["idx"] for d in m if d["test_map"] is None}
        order = [
            i for i in test_priority(sc, m) if i in untested and not (CACHE / f"ranking_test_{b}_{i}.lock").exists()
        ]
        if not order:
            break
        i = order[0]
        if not claim(f"ranking_test_{b}_{i}"):
            continue
        rec = test_one(args, model, splits, example, b, i, cands[i])
        with (CACHE / "ranking_test.jsonl").open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log(f"[{b}] candidate {i}: test {rec['test_map']:.4f} ({rec['eval_seconds']:.0f}s)")
        write_results(args, base)
        res = json.loads((RESULTS / "ranking.json").read_text())["budgets"][b].get("rankers", {})
        if (
            not args.test_all
            and sc is not None
            and len(res) >= 7
            and all(r["top3_best_test_map"] is not None for r in res.values())
            and sum(d["test_map"] is not None for d in merged(b, args.epochs)) >= args.min_tested
        ):
            break


def main(argv: list[str] | None = None) -> int:
    global CACHE, RESULTS
    p = common.parser(__doc__, full=False)
    p.add_argument("--base", default=str(common.BASE))
    p.add_argument("--budgets", nargs="+", default=["0.5", "0.25"])
    p.add_argument("--candidates", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-strategies", type=int, default=256)
    p.add_argument("--encoder-epochs", type=int, default=60)
    p.add_argument("--calib-batches", type=int, default=20)
    p.add_argument("--default-objective", default="effect", choices=["effect", "sacp"])
    p.add_argument("--scores-version", type=int, default=1, help="bump to recompute cached ranker scores")
    p.add_argument("--eval-every", type=int, default=4, help="validation mAP every k fine-tune epochs (and the last)")
    p.add_argument(
        "--min-tested", type=int, default=12, help="test-evaluate at least this many per budget before moving on"
    )
    p.add_argument("--test-all", action="store_true", help="test-evaluate every candidate before the next budget")
    p.add_argument(
        "--score-part",
        default="both",
        choices=["both", "main", "adaptive_bn"],
        help="which rankers this process scores (parts can run in parallel processes)",
    )
    p.add_argument(
        "--signal-calib-batches",
        type=int,
        default=4,
        help="BN-recalibration batches (of 128) for the code-agreement signal and ranker",
    )
    p.add_argument("--probe", type=int, default=500, help="probe images for code agreement")
    p.add_argument(
        "--phase",
        default="all",
        choices=["all", "scores", "finetune", "test", "report"],
        help="test: test passes of the candidates fine-tuned so far (by ranker priority), no waiting",
    )
    p.add_argument("--cache", default=str(common.CACHE), help="cache folder (a dry run can point elsewhere)")
    p.add_argument("--results", default=str(common.RESULTS))
    p.add_argument("--ft-threads", type=int, default=None, help="torch threads while fine-tuning (default --threads)")
    args = p.parse_args(argv)
    CACHE, RESULTS = Path(args.cache), Path(args.results)
    CACHE.mkdir(parents=True, exist_ok=True)

    model, splits, example, g, meta = setup(args)
    base = base_eval(model, splits, meta)
    log(f"base test mAP {base['map_all']:.4f} val mAP {base['val_map']:.4f}")

    cands = {
        b: candidates_for(DynamicSpace(g, Budget(flops=float(b))), b, args.candidates, args.seed + int(float(b) * 100))
        for b in args.budgets
    }
    for b in args.budgets:  # budget by budget: scores, fine-tunes, then the test passes it needs
        if args.phase in ("all", "scores"):
            for part in ["main", "adaptive_bn"] if args.score_part == "both" else [args.score_part]:
                score_phase(args, model, splits, example, g, b, cands[b], part)
        write_results(args, base)
        if args.phase in ("scores", "report"):
            continue
        ft_path = CACHE / "ranking_finetune.jsonl"
        for i, s in enumerate(cands[b] if args.phase != "test" else []):
            if any(d["idx"] == i for d in merged(b, args.epochs)) or not claim(f"ranking_ft_{b}_{i}"):
                continue
            rec = finetune_one(args, model, splits, example, g, b, i, s)
            with ft_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            log(
                f"[{b}] candidate {i}: flops {rec['flops_ratio']:.3f} val {rec['val_map']:.4f} "
                f"({rec['finetune_seconds']:.0f}s)"
            )
            write_results(args, base)
        if args.phase == "finetune":
            continue
        while args.phase != "test" and any(
            not any(d["idx"] == i for d in merged(b, args.epochs)) for i in range(len(cands[b]))
        ):
            time.sleep(10)  # another process is finishing a claimed fine-tune
        test_passes(args, model, splits, example, b, cands[b], base)
    if args.phase == "all":  # then the remaining test passes, so best_test_map covers every candidate
        for b in args.budgets:
            for d in merged(b, args.epochs):
                if d["test_map"] is None and claim(f"ranking_test_{b}_{d['idx']}"):
                    rec = test_one(args, model, splits, example, b, d["idx"], cands[b][d["idx"]])
                    with (CACHE / "ranking_test.jsonl").open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    log(f"[{b}] candidate {d['idx']}: test {rec['test_map']:.4f} ({rec['eval_seconds']:.0f}s)")
                    write_results(args, base)
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
