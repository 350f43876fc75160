"""Candidate rankers: one interface, `score(strategies) -> np.ndarray` (higher is better).

- `similarity`   ACP-SSE: cosine of z(s) with z(unpruned) from the StructureEncoder. Graph
                 features and one batched GNN forward; no model forward at all.
- `adaptive_bn`  EagleEye: prune, recalibrate batch norm on a few training batches, then the
                 validation mAP (val queries against the train set as database); for a
                 classifier (``task="classification"``) the validation top-1 accuracy;
                 ``select="neighbour_map"`` (a label-free study): the neighbour mAP against
                 the unpruned net's codes (`hashing.labelfree`), no label read.
- `code_agreement` prune, recalibrate BN, fraction of hash bits equal to the unpruned net's on
                 a probe set (the signal the `effect` encoder objective learns from); for a
                 classifier the fraction of probe items with the unpruned net's top-1 class.
- `branch_damage` prune, recalibrate BN, 1 - the residual branches' damage: per residual add,
                 1 - linear CKA of the branch operand (before the add) against the unpruned net's,
                 weighted by the branch's share of the add (`pruning.signals`). Not a study ranker:
                 a training target of the `effect` encoder (`encoder.target: agreement+branch`).
- `ft_steps`     prune, fine-tune `steps` optimiser steps with the study's hash loss, then the
                 validation mAP. The strongest signal measured (docs/results/signals.md) and the
                 slowest (seconds per candidate): not a study ranker, a training target of the
                 `effect` encoder (`encoder.target: ft_steps`), which spreads it over the space.
- `l1_retained`  fraction of the total L1 channel-importance mass the strategy keeps.
- `random`       seeded uniform scores (the floor every ranker must beat).
Every ranker records the wall time of its last `score` call in `last_seconds`. `make_ranker`'s
`task` ("retrieval", the default, or "classification") says what the network's output is.
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.pruning.probe import FunctionalProbe, check_task, torch_threads

RANKERS = ("similarity", "adaptive_bn", "code_agreement", "l1_retained", "random")


class Ranker(Protocol):
    name: str
    last_seconds: float

    def score(self, strategies: Sequence[Any]) -> np.ndarray: ...


class _Timed:
    name = "ranker"
    last_seconds = 0.0

    def score(self, strategies: Sequence[Any]) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.asarray(self._score(list(strategies)), dtype=np.float64)
        self.last_seconds = time.perf_counter() - t0
        return out

    def _score(self, strategies: list[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class SimilarityRanker(_Timed):
    """ACP-SSE score: cos(z(s), z(unpruned)), all strategies in batched GNN forwards."""

    name = "similarity"

    def __init__(self, encoder: Any, graph: Any, batch_size: int = 512) -> None:
        from acpsearch.encoder.model import GraphBatcher

        self.encoder = encoder.eval()
        self.batcher = GraphBatcher(graph)
        self.batch_size = batch_size

    def _score(self, strategies: list[Any]) -> np.ndarray:
        return self.batcher.similarity(self.encoder, strategies, self.batch_size).numpy()


class AdaptiveBNRanker(_Timed):
    """EagleEye adaptive-BN evaluation: validation mAP (a classifier: validation top-1 accuracy)
    of the pruned, BN-recalibrated net."""

    name = "adaptive_bn"

    def __init__(
        self,
        model: nn.Module,
        splits: Any,
        example_input: torch.Tensor,
        calib_batches: int = 20,
        batch_size: int = 128,
        topk: int | None = None,
        seed: int = 0,
        threads: int | None = None,
        device: Any = None,
        task: str = "retrieval",
        select: str = "val_map",
    ) -> None:
        from acpsearch.pruning.probe import FunctionalProbe

        self.task = check_task(task)
        if select not in ("val_map", "neighbour_map"):
            raise SpecError(f"finetune.select: must be val_map or neighbour_map, got {select!r}")
        Xtr, self.ytr = splits.train
        self.Xval, self.yval = splits.val
        gen = torch.Generator().manual_seed(seed)
        calib = Xtr[torch.randperm(len(Xtr), generator=gen)[: calib_batches * batch_size]]
        self.Xtr = Xtr
        self.topk = topk
        self.neighbours = None
        if select == "neighbour_map" and self.task == "retrieval":
            from acpsearch.hashing.labelfree import NeighbourScore

            self.neighbours = NeighbourScore(splits, reference=model)  # the unpruned net's neighbourhoods
        self.probe = FunctionalProbe(
            model, example_input, calib, self.Xval[:1], calib_batch_size=batch_size, threads=threads, device=device
        )

    def _score(self, strategies: list[Any]) -> np.ndarray:
        from acpsearch.hashing import mean_average_precision
        from acpsearch.pruning.probe import model_codes, model_outputs

        out = np.empty(len(strategies))
        with torch_threads(self.probe.threads):
            for i, s in enumerate(strategies):
                net = self.probe.pruned(s)
                if self.task == "classification":  # validation top-1 accuracy
                    pred = model_outputs(net, self.Xval).argmax(dim=1)
                    out[i] = float((pred == self.yval.long()).float().mean()) if len(pred) else 0.0
                    continue
                q = model_codes(net, self.Xval)
                db = model_codes(net, self.Xtr)
                if self.neighbours is not None:
                    out[i] = self.neighbours.codes_score(q, db)
                    continue
                out[i] = mean_average_precision(q, db, self.yval, self.ytr, topk=self.topk)
        return out


class CodeAgreementRanker(_Timed):
    """Fraction of hash bits the pruned, BN-recalibrated net shares with the unpruned net (a
    classifier: fraction of probe items with the unpruned net's top-1 class)."""

    name = "code_agreement"

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        calib_X: torch.Tensor,
        probe_X: torch.Tensor,
        calib_batch_size: int = 128,
        threads: int | None = None,
        device: Any = None,
        task: str = "retrieval",
    ) -> None:
        self.probe = self._probe_class()(
            model,
            example_input,
            calib_X,
            probe_X,
            calib_batch_size=calib_batch_size,
            threads=threads,
            device=device,
            task=task,
        )

    @staticmethod
    def _probe_class() -> type[FunctionalProbe]:
        return FunctionalProbe

    def _score(self, strategies: list[Any]) -> np.ndarray:
        return self.probe.agreement(strategies)


class BranchRanker(CodeAgreementRanker):
    """1 - share-weighted residual-branch damage of the pruned, BN-recalibrated net (read before
    each residual add, where a gutted branch shows before the skip connection hides it); the same
    probe data and recalibration as code agreement."""

    name = "branch_damage"

    @staticmethod
    def _probe_class() -> type[FunctionalProbe]:
        from acpsearch.pruning.signals import SignalProbe

        return SignalProbe

    def _score(self, strategies: list[Any]) -> np.ndarray:
        from acpsearch.pruning.signals import SignalProbe

        assert isinstance(self.probe, SignalProbe)  # made by _probe_class
        return self.probe.branch(strategies)


class ShortFinetuneRanker(_Timed):
    """Validation mAP of the pruned net after `steps` optimiser steps of fine-tuning (the hash
    loss and optimiser settings of `recipe`: train_hash_net keyword arguments), evaluated once, at
    the end. Every strategy starts from the same base weights and the same seed."""

    name = "ft_steps"

    def __init__(
        self,
        model: nn.Module,
        splits: Any,
        example_input: torch.Tensor,
        steps: int = 40,
        recipe: dict[str, Any] | None = None,
        threads: int | None = None,
        device: Any = None,
    ) -> None:
        if steps < 1:
            raise SpecError(f"encoder.ft_steps: must be >= 1, got {steps}")
        self.model, self.splits, self.example_input = model, splits, example_input
        self.steps, self.threads = int(steps), threads
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.recipe = {"loss": "csq", "lr": 1e-3, "batch_size": 128, "seed": 0, **(recipe or {})}

    def _score(self, strategies: list[Any]) -> np.ndarray:
        from acpsearch.hashing import train_hash_net
        from acpsearch.pruning import prune

        per_epoch = math.ceil(len(self.splits.train[0]) / int(self.recipe["batch_size"]))
        epochs = math.ceil(self.steps / per_epoch)
        out = np.empty(len(strategies))
        with torch_threads(self.threads):
            for i, s in enumerate(strategies):
                net = prune(self.model, s, self.example_input).to(self.device)
                res = train_hash_net(
                    net,
                    self.splits,
                    epochs=epochs,
                    max_batches=self.steps,
                    eval_every=epochs,
                    progress=False,
                    num_threads=self.threads,
                    **self.recipe,
                )
                out[i] = float(res.best_val_map)
        return out


class L1RetainedRanker(_Timed):
    """Share of the total channel-importance mass (under `criterion`) that the kept channels hold."""

    name = "l1_retained"

    def __init__(self, graph: Any, criterion: str = "l1") -> None:
        from acpsearch.pruning import channel_importance

        self.graph = graph
        self.imp = {
            grp.name: np.sort(np.asarray(channel_importance(graph, grp.name, criterion), dtype=np.float64))[::-1]
            for grp in graph.groups
        }
        self.csum = {n: np.concatenate([[0.0], np.cumsum(v)]) for n, v in self.imp.items()}
        self.total = sum(float(v.sum()) for v in self.imp.values())

    def _score(self, strategies: list[Any]) -> np.ndarray:
        out = np.empty(len(strategies))
        for i, s in enumerate(strategies):
            kept = s.kept
            out[i] = sum(self.csum[n][int(kept.get(n, len(self.imp[n])))] for n in self.imp) / max(self.total, 1e-12)
        return out


class RandomRanker(_Timed):
    """Seeded uniform scores."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = _random.Random(seed)

    def _score(self, strategies: list[Any]) -> np.ndarray:
        return np.array([self.rng.random() for _ in strategies])


def make_ranker(name: str, task: str = "retrieval", **ctx: Any) -> Ranker:
    """Build a ranker by name from context (encoder, graph, model, splits, example_input, ...);
    `task` (retrieval or classification) is what the model's output is."""
    check_task(task)
    if name == "similarity":
        return SimilarityRanker(ctx["encoder"], ctx["graph"])
    if name == "adaptive_bn":
        return AdaptiveBNRanker(
            ctx["model"],
            ctx["splits"],
            ctx["example_input"],
            calib_batches=ctx.get("calib_batches", 20),
            threads=ctx.get("threads"),
            device=ctx.get("device"),
            task=task,
            select=ctx.get("select", "val_map"),
        )
    if name in ("code_agreement", "branch_damage"):
        return (CodeAgreementRanker if name == "code_agreement" else BranchRanker)(
            ctx["model"],
            ctx["example_input"],
            ctx["calib_X"],
            ctx["probe_X"],
            threads=ctx.get("threads"),
            device=ctx.get("device"),
            task=task,
        )
    if name == "ft_steps":
        return ShortFinetuneRanker(
            ctx["model"],
            ctx["splits"],
            ctx["example_input"],
            steps=ctx.get("steps", 40),
            recipe=ctx.get("recipe"),
            threads=ctx.get("threads"),
            device=ctx.get("device"),
        )
    if name == "l1_retained":
        return L1RetainedRanker(ctx["graph"], ctx.get("criterion", "l1"))
    if name == "random":
        return RandomRanker(ctx.get("seed", 0))
    raise SpecError(f"search.rerank: unknown ranker {name!r}; known: {', '.join(RANKERS)}")
