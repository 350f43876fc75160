"""Classification as a downstream task: prune a ResNet-20 Fashion-MNIST classifier at FLOPs
budgets with acpsearch's search and with the usual baselines, at equal fine-tuning epochs.

Uses the libraries directly (acpsearch.classification, graph, pruning, search, encoder), not the
service. Per budget:

    acpsearch      structure encoder trained with the `effect` objective (top-1 agreement with the
                   unpruned classifier after BN recalibration, on --encoder-strategies strategies of
                   the dynamic space), then similarity search over --candidates strategies; its m
                   finalists are the global-magnitude anchor (the service's default) + the top m-1
    uniform_l1     one uniform keep ratio (largest on a 0.01 grid that meets the budget), L1 channels
    tp_global_mag  Torch-Pruning-style global magnitude (PruningStrategy.global_magnitude: one
                   threshold on mean-normalised L1 importance, bisected to the budget)
    random         best of m random strategies of the same dynamic space
    adaptive_bn    EagleEye: top m of --abn-candidates random strategies by validation top-1 after
                   BN recalibration
    unpruned       the ceiling: the base network with the same fine-tuning

Best-of-m methods fine-tune each finalist --select-epochs epochs (seed 0) and keep the one with
the best VALIDATION top-1. Every method's chosen network is then fine-tuned --epochs epochs from
its pruned (not yet fine-tuned) weights with --seeds seeds; the table reports the mean +- standard
error of test top-1. Standing vs acpsearch: a difference within two standard errors of the
difference (sqrt(se_a^2 + se_b^2)) is a tie. The test split never chooses anything.

    PYTHONPATH=. python -m benchmarks.classification --train-per-class 300 --base-epochs 8 \
        --epochs 2 --seeds 3 --top 4 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    RESULTS,
    eta,
    log,
    magnitude_strategy,
    parser,
    seed_all,
    set_threads,
    standing,
    stats,
    uniform_strategy,
    write_json,
)
from benchmarks.pool import JobPool

METHODS = ("acpsearch", "uniform_l1", "tp_global_mag", "random", "adaptive_bn", "unpruned")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--budgets", default="0.5,0.25", help="FLOPs budgets as fractions of the unpruned net")
    p.add_argument("--train-per-class", type=int, default=None, help="cap on training images per class")
    p.add_argument("--val-per-class", type=int, default=100, help="validation images per class (held out of train)")
    p.add_argument("--test-per-class", type=int, default=None, help="cap on the standard test split per class")
    p.add_argument("--base-epochs", type=int, default=10, help="epochs of the unpruned base classifier")
    p.add_argument("--base-lr", type=float, default=3e-3)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every final network")
    p.add_argument("--select-epochs", type=int, default=1, help="short fine-tune of each best-of-m finalist")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds of every final network")
    p.add_argument("--top", type=int, default=4, help="m: finalists of the best-of-m methods")
    p.add_argument("--encoder-strategies", type=int, default=64)
    p.add_argument("--encoder-epochs", type=int, default=40)
    p.add_argument("--candidates", type=int, default=2000, help="strategies the similarity search scores")
    p.add_argument("--abn-candidates", type=int, default=32, help="random strategies adaptive BN scores")
    p.add_argument("--probe-size", type=int, default=512, help="probe / calibration images of the effect signal")
    p.add_argument("--step", type=float, default=0.05, help="keep-ratio grid step of the dynamic space")
    p.add_argument("--min-keep", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--base-batch-size", type=int, default=None, help="batch of the base training (default --batch-size)"
    )
    p.add_argument("--base-augment", action="store_true", help="random crop + flip in the base training")
    p.add_argument("--device", default="cpu", help="cpu / cuda: where the base and every fine-tune train")
    p.add_argument("--jobs", type=int, default=1, help="fine-tuning processes sharing the device (1: inline)")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new job starts")
    p.add_argument("--grace", type=float, default=60.0, help="seconds running jobs get after the deadline")
    p.add_argument("--base-out", default=None, help="also save the trained base's state dict here")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, cifar10 (with --data), digits, ...")
    p.add_argument("--data", default=None, help="the data set's folder (default: the system's Fashion-MNIST)")
    p.add_argument("--out", default=str(RESULTS / "classification.json"))
    p.add_argument("--md", default=None, help="also write the markdown table here")
    return p


# --- pieces ----------------------------------------------------------------------------------------


def load_splits(args: argparse.Namespace) -> Any:
    from acpsearch.classification import classification_splits
    from acpsearch.hashing import load_dataset

    return classification_splits(
        load_dataset(args.dataset, args.data),
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )


def finetune(
    net: torch.nn.Module, splits: Any, args: argparse.Namespace, epochs: int, seed: int, test: bool = True
) -> dict[str, float]:
    """The shared fine-tuning recipe and evaluation: best-by-validation epoch, its val and test top-1
    (test skipped for a finalist's selection fine-tune: the test split never chooses)."""
    from acpsearch.classification import evaluate_classifier, train_classifier
    from acpsearch.pruning import measure_cost

    t0 = time.perf_counter()
    res = train_classifier(
        copy.deepcopy(net), splits, epochs=epochs, lr=args.lr, batch_size=args.batch_size, seed=seed,
        device=args.device,
    )  # fmt: skip
    out = {"val": float(res.best_val_top1), "best_epoch": res.best_epoch}
    if test:
        out["test"] = float(evaluate_classifier(res.model, *splits.test)["top1"])
    cost = measure_cost(res.model.cpu(), torch.zeros(1, *splits.test[0].shape[1:]))
    out.update(flops=int(cost.flops), seconds=time.perf_counter() - t0)
    return out


def acpsearch_finalists(base: Any, g: Any, space: Any, splits: Any, ex: Any, args: argparse.Namespace) -> list[Any]:
    """The effect encoder + similarity search: the magnitude anchor + the top m-1 searched strategies."""
    from acpsearch.encoder import train_encoder
    from acpsearch.search.rankers import make_ranker

    rng = random.Random(args.seed)
    Xtr = splits.train[0]
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(Xtr), generator=gen)
    ctx = {"model": base, "example_input": ex, "calib_X": Xtr[idx[: args.probe_size]], "threads": args.threads}
    probe = make_ranker("code_agreement", task="classification", probe_X=splits.val[0][: args.probe_size], **ctx)
    train_set = space.sample_many(args.encoder_strategies, rng)
    signal = probe.score(train_set)
    enc = train_encoder(
        g,
        "effect",
        strategies=train_set,
        signal=signal,
        epochs=args.encoder_epochs,
        seed=args.seed,
        threads=args.threads,
    ).encoder
    cands = space.sample_many(args.candidates, rng)
    scores = make_ranker("similarity", task="classification", encoder=enc, graph=g).score(cands)
    order = sorted(range(len(cands)), key=lambda i: -float(scores[i]))
    anchor = magnitude_strategy(g, space.budget.flops)
    return [anchor] + [cands[i] for i in order[: max(0, args.top - 1)]]


def abn_finalists(base: Any, space: Any, splits: Any, ex: Any, args: argparse.Namespace) -> list[Any]:
    from acpsearch.search.rankers import make_ranker

    cands = space.sample_many(args.abn_candidates, random.Random(args.seed + 2))
    ranker = make_ranker(
        "adaptive_bn", task="classification", model=base, splits=splits, example_input=ex, calib_batches=4,
        threads=args.threads,
    )  # fmt: skip
    scores = ranker.score(cands)
    order = sorted(range(len(cands)), key=lambda i: -float(scores[i]))
    return [cands[i] for i in order[: args.top]]


# --- the benchmark ---------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        log(f"[{self.done}/{self.total}] {what}; {eta(self.done, self.total, self.t0)}")


def build_structures(
    budget: float, base: Any, g: Any, splits: Any, ex: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """Every method's candidate structures at one budget (the best-of-m methods have m)."""
    from acpsearch.search.space import Budget, DynamicSpace

    space = DynamicSpace(g, Budget(flops=budget), step=args.step, criterion="l1", min_keep=args.min_keep)
    t0 = time.perf_counter()
    structures: dict[str, list[Any]] = {
        "acpsearch": acpsearch_finalists(base, g, space, splits, ex, args),
        "uniform_l1": [uniform_strategy(g, budget)],
        "tp_global_mag": [magnitude_strategy(g, budget)],
        "random": space.sample_many(args.top, random.Random(args.seed + 1)),
        "adaptive_bn": abn_finalists(base, space, splits, ex, args),
    }
    log(f"budget {budget}: structures ready in {time.perf_counter() - t0:.0f}s")
    return structures


# --- fine-tuning jobs (run in worker processes with --jobs > 1) ---------------------------------------

_WORKER: dict[str, Any] = {}


def init_worker(arg_dict: dict[str, Any], threads: int) -> None:
    args = argparse.Namespace(**arg_dict)
    set_threads(threads)
    _WORKER["args"] = args
    _WORKER["splits"] = load_splits(args)


def finetune_job(net: torch.nn.Module, epochs: int, seed: int, test: bool) -> dict[str, float]:
    return finetune(net, _WORKER["splits"], _WORKER["args"], epochs, seed, test)


class Runner:
    """Submits every method's jobs and files their results into the results document."""

    def __init__(self, doc: dict[str, Any], g: Any, pool: JobPool, args: argparse.Namespace, save: Any) -> None:
        self.doc, self.g, self.pool, self.args, self.save = doc, g, pool, args, save
        self.nets: dict[tuple[int, str], list[Any]] = {}
        self.strategies: dict[tuple[int, str], list[Any]] = {}
        self.sel: dict[tuple[int, str], dict[int, dict[str, float]]] = {}
        self.t0 = time.perf_counter()

    def add_budget(self, bi: int, structures: dict[str, list[Any]], base: Any, ex: Any) -> None:
        from acpsearch.pruning import prune

        full = self.g.cost().flops
        for mi, (method, strategies) in enumerate(structures.items()):
            key = (bi, method)
            self.strategies[key] = strategies
            self.nets[key] = [prune(base, s, ex) for s in strategies]
            self.doc["budgets"][bi]["methods"][method] = {
                "chosen": 0,
                "flops_ratio": self.g.cost(strategies[0]).flops / full,
                "selection_val": [],
                "runs": [],
            }
            if len(strategies) > 1:
                self.sel[key] = {}
                for i, net in enumerate(self.nets[key]):
                    self.pool.submit(("sel", bi, method, i), (-1, bi, mi, i), net, self.args.select_epochs, 0, False)
            else:
                self._finals(bi, method, mi, 0)

    def _finals(self, bi: int, method: str, mi: int, chosen: int) -> None:
        m = self.doc["budgets"][bi]["methods"][method]
        s = self.strategies[(bi, method)][chosen]
        m.update(
            chosen=chosen,
            source="magnitude anchor" if method == "acpsearch" and chosen == 0 else method,
            flops_ratio=self.g.cost(s).flops / self.g.cost().flops,
            ratios={k: round(float(v), 4) for k, v in s.ratios.items()},
        )
        for seed in range(self.args.seeds):
            self.pool.submit(("final", bi, method, seed), (seed, bi, mi), self.nets[(bi, method)][chosen],
                             self.args.epochs, seed, True)  # fmt: skip

    def handle(self, tag: tuple[Any, ...], res: dict[str, float]) -> None:
        kind = tag[0]
        if kind == "unpruned":
            m = self.doc["unpruned"]
            what = f"unpruned seed {tag[1]}"
        elif kind == "sel":
            _, bi, method, i = tag
            got = self.sel[(bi, method)]
            got[i] = res
            what = f"{self.doc['budgets'][bi]['budget']} {method} finalist {i}: val {res['val']:.4f}"
            if len(got) == len(self.nets[(bi, method)]):
                m = self.doc["budgets"][bi]["methods"][method]
                m["selection_val"] = [got[j]["val"] for j in range(len(got))]
                chosen = max(range(len(got)), key=lambda j: got[j]["val"])
                self._finals(bi, method, list(self.doc["budgets"][bi]["methods"]).index(method), chosen)
            self._log(what)
            return
        else:
            _, bi, method, seed = tag
            m = self.doc["budgets"][bi]["methods"][method]
            what = f"{self.doc['budgets'][bi]['budget']} {method} seed {seed}"
        m["runs"].append(res)
        m["test"] = stats([r["test"] for r in m["runs"]])
        m["val"] = stats([r["val"] for r in m["runs"]])
        self.save()
        self._log(f"{what}: val {res['val']:.4f} test {res['test']:.4f}")

    def _log(self, what: str) -> None:
        done, total = self.pool.finished, self.pool.submitted
        log(f"[{done}/{total} jobs] {what}; {eta(done, total, self.t0)}")


def chosen_label(name: str, m: dict[str, Any]) -> str:
    if not m.get("selection_val"):
        return "—"
    return f"{m['chosen'] + 1} of {len(m['selection_val'])}" + (
        " (anchor)" if m.get("source") == "magnitude anchor" else ""
    )


def render_markdown(doc: dict[str, Any]) -> str:
    lines = []
    ceiling = doc["unpruned"]["test"]
    lines.append(
        f"Unpruned ceiling (base + {doc['args']['epochs']} fine-tuning epochs, {doc['args']['seeds']} seeds): "
        f"test top-1 {100 * ceiling['mean']:.2f} ± {100 * ceiling['se']:.2f}; "
        f"base before fine-tuning {100 * doc['base']['test']:.2f}.\n"
    )
    lines.append(
        "| FLOPs budget | method | chosen finalist | FLOPs kept | val top-1 | test top-1 (mean ± SE) "
        "| acpsearch vs it |"
    )
    lines.append("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for block in doc["budgets"]:
        if "acpsearch" not in block["methods"]:
            continue
        ref = block["methods"]["acpsearch"]["test"]
        for name, m in block["methods"].items():
            st = "—" if name == "acpsearch" else standing(m["test"], ref)
            lines.append(
                f"| {block['budget']:.2f} | {name} | {chosen_label(name, m)} | {m['flops_ratio']:.3f} | "
                f"{100 * m['val']['mean']:.2f} | "
                f"{100 * m['test']['mean']:.2f} ± {100 * m['test']['se']:.2f} | {st} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from acpsearch.classification import create_classifier, evaluate_classifier, train_classifier
    from acpsearch.graph import ChannelGraph

    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    seed_all(args.seed)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    t0 = time.perf_counter()
    splits = load_splits(args)
    shape = tuple(splits.train[0].shape[1:])
    log(f"splits: train {len(splits.train[0])}, val {len(splits.val[0])}, test {len(splits.test[0])}; input {shape}")
    base = create_classifier("resnet20", splits.num_classes, in_channels=shape[0], image_size=shape[-1])
    res = train_classifier(
        base, splits, epochs=args.base_epochs, lr=args.base_lr, batch_size=args.base_batch_size or args.batch_size,
        seed=0, device=args.device, augment=args.base_augment, hflip=args.base_augment,
    )  # fmt: skip
    base = res.model.cpu().eval()
    if args.base_out:
        torch.save(base.state_dict(), args.base_out)
    base_test = evaluate_classifier(base, *splits.test)["top1"]
    log(
        f"base: best epoch {res.best_epoch} of {args.base_epochs}, val {res.best_val_top1:.4f}, test {base_test:.4f} "
        f"({time.perf_counter() - t0:.0f}s)"
    )
    ex = torch.zeros(1, *shape)
    g = ChannelGraph.from_model(base, ex, hash_layer="classifier")
    doc: dict[str, Any] = {
        "args": vars(args),
        "splits": {k: len(getattr(splits, k)[0]) for k in ("train", "val", "test")},
        "base": {
            "val": float(res.best_val_top1),
            "test": float(base_test),
            "best_epoch": res.best_epoch,
            "history": res.history,
            "seconds": time.perf_counter() - t0,
        },
        "unpruned": {"runs": []},
        "budgets": [{"budget": b, "methods": {}} for b in budgets],
    }

    def save() -> None:
        doc["seconds"] = time.perf_counter() - t0
        write_json(Path(args.out), doc)

    save()
    deadline = None if args.deadline is None else max(0.0, args.deadline - (time.perf_counter() - t0))
    # by module name, not __main__'s: spawned workers unpickle the functions by that name
    from benchmarks import classification as jobs

    pool = JobPool(
        jobs.finetune_job, jobs.init_worker, (vars(args), 1 if args.jobs > 1 else args.threads), args.jobs, deadline
    )
    runner = Runner(doc, g, pool, args, save)
    for seed in range(args.seeds):
        pool.submit(("unpruned", seed), (seed, -1, 0), base, args.epochs, seed, True)
    for bi, budget in enumerate(budgets):
        if args.jobs > 1:
            for tag, r in pool.poll(0):
                runner.handle(tag, r)  # type: ignore[arg-type]
        runner.add_budget(bi, build_structures(budget, base, g, splits, ex, args), base, ex)
    end = None if args.deadline is None else t0 + args.deadline + args.grace
    while pool.pending() and (end is None or time.perf_counter() < end):
        for tag, r in pool.poll(5):
            runner.handle(tag, r)  # type: ignore[arg-type]
    pool.close()
    left = doc["dropped_jobs"] = pool.dropped
    for block in doc["budgets"]:
        block["methods"]["unpruned"] = {"flops_ratio": 1.0, "chosen": 0, **doc["unpruned"]}
    save()
    md = render_markdown(doc)
    print(md)
    if args.md:
        Path(args.md).write_text(md)
    log(f"done in {time.perf_counter() - t0:.0f}s ({left} jobs dropped at the deadline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
