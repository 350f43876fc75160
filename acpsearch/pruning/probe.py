"""Functional probe of a pruning strategy: forward passes of the pruned net only, no fine-tuning.

`FunctionalProbe` prunes the base network physically, recalibrates its batch-norm statistics
on a few training batches (EagleEye's adaptive BN: after pruning, the stored statistics no
longer match the activations, which makes raw pruned accuracy a poor predictor), then reads
- `agreement`: mean fraction of hash bits the pruned net gives identically to the unpruned net
  (when the code length is pruned too: `neighbour_agreement`, the overlap of Hamming k-NN sets)
  on a fixed probe set (~0.3 s per ResNet-20 candidate on 1000 images here), and/or
- `map`: validation mAP of the pruned net (val queries against the train set as database),
  the EagleEye adaptive-BN score.
The `effect` encoder objective learns from `agreement`; rankers use both directly.

`task` says what the network's output is. ``retrieval`` (the default): a hash layer's output,
compared as +1/-1 codes (bit agreement). ``classification``: class logits, compared as top-1
predictions: `agreement` is the fraction of probe items whose predicted class equals the unpruned
net's (`prediction_agreement`). The alternative, ``exp(-KL)`` of the T-softened logits
(`softened_kl_agreement`), ranked pruned digits classifiers by their fine-tuned accuracy no better
in a 20-strategy check (see docs/classification.md), so agreement of predictions is the signal.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from acpsearch.errors import SpecError
from acpsearch.pruning.prune import prune

TASKS = ("retrieval", "classification")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` intra-op threads, then restore. The encoder's ops are small: on a
    shared 2-core machine one thread was 14x faster than two (fwd+bwd of 193 graphs: 29 ms vs
    415 ms under load), because spinning worker threads fight other processes for the cores."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def output_code(out: Any) -> Tensor:
    """The code tensor of a hash net's forward output ((N, K) or a tuple ending with it)."""
    return cast(Tensor, out[-1] if isinstance(out, (tuple, list)) else out)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def model_codes(model: nn.Module, X: Tensor, batch_size: int = 512) -> Tensor:
    """+1/-1 codes of `model` on X (eval mode); ties at 0 map to +1. The batches go to the model's
    device; the codes come back on the CPU."""
    model.eval()
    dev = _device_of(model)
    outs = [output_code(model(X[i : i + batch_size].to(dev))).cpu() for i in range(0, len(X), batch_size)]
    out = torch.cat(outs)
    return torch.where(out >= 0, 1.0, -1.0)


@torch.no_grad()
def model_outputs(model: nn.Module, X: Tensor, batch_size: int = 512) -> Tensor:
    """Raw outputs of `model` on X (eval mode; a classifier's logits), on the CPU."""
    model.eval()
    dev = _device_of(model)
    outs = [output_code(model(X[i : i + batch_size].to(dev))).float().cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(outs)


def prediction_agreement(logits: Tensor, ref_logits: Tensor) -> float:
    """Fraction of rows whose top-1 class equals the reference's."""
    return float((logits.argmax(dim=1) == ref_logits.argmax(dim=1)).float().mean())


def softened_kl_agreement(logits: Tensor, ref_logits: Tensor, temperature: float = 4.0) -> float:
    """``exp(-mean KL(softmax(ref / T) || softmax(logits / T)))``: 1.0 for identical logits."""
    log_p = torch.log_softmax(ref_logits / temperature, dim=1)
    log_q = torch.log_softmax(logits / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return float(torch.exp(-kl))


def _neighbour_weights(codes: Tensor, k: int) -> Tensor:
    """(N, N) expected membership of item j in item i's k Hamming nearest neighbours among the
    other items: 1 strictly inside, need/tied for the items tied at the k-th distance (a random
    tie break's expectation), 0 outside; each row sums to k."""
    c = codes.float()
    n = c.shape[0]
    d = (c.shape[1] - c @ c.T) / 2
    d.fill_diagonal_(float("inf"))
    kth = d.kthvalue(k, dim=1).values[:, None]
    strict = (d < kth).float()
    tied = (d == kth).float()
    need = k - strict.sum(dim=1, keepdim=True)
    return strict + tied * need / tied.sum(dim=1, keepdim=True).clamp(min=1.0) if n > 1 else strict


def neighbour_agreement(codes: Tensor, ref_codes: Tensor, k: int = 10, ref_weights: Tensor | None = None) -> float:
    """Length-invariant agreement of two codings of the same items: the mean overlap of each
    item's k Hamming nearest neighbours under `codes` and under `ref_codes` (ties shared out as
    their expectation), in [0, 1]; 1.0 for identical codes. The two codes may have different
    lengths (a shortened code against the base), where bitwise agreement is undefined."""
    k = max(1, min(int(k), codes.shape[0] - 1))
    w_ref = _neighbour_weights(ref_codes, k) if ref_weights is None else ref_weights
    w = _neighbour_weights(codes, k)
    return float((torch.minimum(w, w_ref).sum(dim=1) / k).mean())


def check_task(task: str) -> str:
    """`task` if it is one of TASKS (retrieval, classification); otherwise a one-line SpecError."""
    if task not in TASKS:
        raise SpecError(f"task: must be one of {', '.join(TASKS)}, got {task!r}")
    return task


@torch.no_grad()
def recalibrate_bn(model: nn.Module, X: Tensor, batch_size: int = 128, batches: int | None = None) -> nn.Module:
    """Reset every batch-norm's running statistics and re-estimate them (cumulative average) on X."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exact mean over the calibration batches
    model.train()
    dev = _device_of(model)
    n = len(X) if batches is None else min(len(X), batches * batch_size)
    for i in range(0, n, batch_size):
        model(X[i : i + batch_size].to(dev))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
    return model


class FunctionalProbe:
    """Scores strategies by forward passes of the physically pruned, BN-recalibrated base net."""

    def __init__(
        self,
        model: nn.Module,
        example_input: Tensor,
        calib_X: Tensor,
        probe_X: Tensor,
        calib_batch_size: int = 128,
        calib_batches: int | None = None,
        threads: int | None = None,
        device: Any = None,
        task: str = "retrieval",
        neighbours: int = 10,
    ) -> None:
        # `device` (None: the CPU): where the pruned nets are recalibrated and run (a Ray actor's
        # GPU); the base net stays on the CPU, where pruning slices it
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.eval()
        self.example_input = example_input
        self.calib_X = calib_X
        self.probe_X = probe_X
        self.calib_batch_size = calib_batch_size
        self.calib_batches = calib_batches
        self.threads = threads
        self.task = check_task(task)
        self.neighbours = int(neighbours)  # k of the neighbour agreement (a graph whose code is pruned)
        self._ref_weights: Tensor | None = None
        # Reference outputs (codes or logits) from the unpruned net recalibrated on the SAME
        # batches, so that only the pruning differs (the unpruned strategy scores exactly 1.0).
        with torch_threads(threads):
            ref = recalibrate_bn(copy.deepcopy(self.model).to(self.device), calib_X, calib_batch_size, calib_batches)
            self.base_codes = self._outputs(ref)
        self.seconds: list[float] = []

    def _outputs(self, net: nn.Module) -> Tensor:
        return model_outputs(net, self.probe_X) if self.task == "classification" else model_codes(net, self.probe_X)

    def _agree(self, out: Tensor, by_neighbours: bool = False) -> float:
        if self.task == "classification":
            return prediction_agreement(out, self.base_codes)
        if by_neighbours:
            if self._ref_weights is None:
                k = max(1, min(self.neighbours, len(self.base_codes) - 1))
                self._ref_weights = _neighbour_weights(self.base_codes, k)
            return neighbour_agreement(out, self.base_codes, self.neighbours, self._ref_weights)
        return float((out == self.base_codes).float().mean())

    def pruned(self, strategy: Any) -> nn.Module:
        """Physically pruned copy of the base net with recalibrated batch-norm statistics."""
        net = prune(self.model, strategy, self.example_input).to(self.device)
        return recalibrate_bn(net, self.calib_X, self.calib_batch_size, self.calib_batches)

    def agreement(self, strategies: Sequence[Any]) -> np.ndarray:
        """Per strategy: the fraction of probe-set code bits equal to the unpruned net's
        (retrieval), or of probe items with the unpruned net's top-1 class (classification).
        Where the code length itself is searched (the strategies' graph has a `code_group`), codes
        of different lengths are compared by `neighbour_agreement` instead, for every strategy."""
        out = np.empty(len(strategies))
        by_nn = any(getattr(getattr(s, "graph", None), "code_group", None) is not None for s in strategies)
        with torch_threads(self.threads):
            for i, s in enumerate(strategies):
                t0 = time.perf_counter()
                out[i] = self._agree(self._outputs(self.pruned(s)), by_nn)
                self.seconds.append(time.perf_counter() - t0)
        return out
