"""Functional signals that look inside residual blocks, for ranking pruned candidates.

The `effect` signal (`FunctionalProbe.agreement`) compares hash codes at the network's output,
after every skip connection: a residual branch cut to a few channels barely moves the sum it is
added to, so its damage hardly shows before fine-tuning. The signals here read the network
before the adds:

- `branch_damage`: per residual add, 1 - linear CKA between the pruned and the unpruned
  network's *branch* operand (the one computed through more layers; the other is the shortcut),
  weighted by the branch's share of the add's variance in the unpruned network. Linear CKA
  compares representations of different widths, so pruned output channels need no alignment.
- `naswot_score`: log-determinant of the ReLU activation-pattern kernel (Mellor et al.'s
  NASWOT): how differently the net's units split the probe images.

`SignalProbe` computes them, the code agreement and the output-side control (CKA of the add's
result) from one pruned, BN-recalibrated network per candidate.
"""

from __future__ import annotations

import copy
import operator
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from acpsearch.graph.tracing import Tracer
from acpsearch.pruning.probe import FunctionalProbe, recalibrate_bn, torch_threads

_ADDS = (operator.add, operator.iadd, torch.add)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same n items ((n, d1) and
    (n, d2), widths may differ): 1.0 for representations equal up to rotation and scale."""
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    kx = x @ x.T
    ky = y @ y.T
    hsic = float((kx * ky).sum())
    norm = float(torch.sqrt((kx * kx).sum() * (ky * ky).sum()))
    return hsic / norm if norm > 0 else 0.0


def _ancestors(n: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [n]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack.extend(m.all_input_nodes)
    return seen


def residual_adds(gm: fx.GraphModule) -> list[tuple[str, int]]:
    """(node name, index of the branch operand) of every add of two computed tensors in a traced
    net, in graph order. The branch is the operand with more nodes of its own since the operands'
    common ancestors (an identity shortcut has none, a 1x1 conv + BN shortcut two)."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in _ADDS or len(n.args) < 2:
            continue
        a, b = n.args[0], n.args[1]
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            continue
        anc_a, anc_b = _ancestors(a), _ancestors(b)
        common = anc_a & anc_b
        out.append((n.name, 0 if len(anc_a - common) >= len(anc_b - common) else 1))
    return out


def trace(model: nn.Module) -> fx.GraphModule:
    """The net traced with the channel analysis' tracer (its leaves stay single nodes)."""
    return fx.GraphModule(model, Tracer().trace(model))


class _AddTap(fx.Interpreter):
    """Runs a traced net and keeps, per residual add, (branch, shortcut) pooled to at most
    `pool` x `pool` positions and flattened per item."""

    def __init__(self, gm: fx.GraphModule, adds: list[tuple[str, int]], pool: int) -> None:
        super().__init__(gm)
        self.adds = dict(adds)
        self.pool = pool
        self.got: dict[str, tuple[Tensor, Tensor]] = {}

    def _flat(self, t: Tensor) -> Tensor:
        if t.dim() == 4 and (t.shape[-1] > self.pool or t.shape[-2] > self.pool):
            t = F.adaptive_avg_pool2d(t, self.pool)
        return t.detach().flatten(1).float().cpu()

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.adds:
            args, _ = self.fetch_args_kwargs_from_env(n)
            i = self.adds[n.name]
            self.got[n.name] = (self._flat(args[i]), self._flat(args[1 - i]))
        return super().run_node(n)


@torch.no_grad()
def residual_operands(model: nn.Module, X: Tensor, pool: int = 7) -> dict[str, tuple[Tensor, Tensor]]:
    """Per residual add (by node name): the (branch, shortcut) operands of `model` (eval mode) on X,
    spatially average-pooled to at most pool x pool, as (n, features) CPU tensors."""
    model.eval()
    gm = trace(model)
    dev = next(iter(model.parameters())).device
    tap = _AddTap(gm, residual_adds(gm), pool)
    tap.run(X.to(dev))
    return tap.got


def branch_shares(ops: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Per add: the branch's share of the summed (centred) energy of branch and shortcut."""
    out = {}
    for k, (b, s) in ops.items():
        eb = float(((b - b.mean(0)) ** 2).sum())
        es = float(((s - s.mean(0)) ** 2).sum())
        out[k] = eb / (eb + es) if eb + es > 0 else 0.0
    return out


def branch_damage(
    ref: dict[str, tuple[Tensor, Tensor]], pruned: dict[str, tuple[Tensor, Tensor]], shares: dict[str, float]
) -> dict[str, float]:
    """1 - linear CKA of each add's branch (pruned vs reference), and summaries: `weighted` (by the
    reference branch's share), `mean`, `max` (the worst block), `output` (mean 1 - CKA of the add's
    result, the after-the-add control)."""
    per = {k: 1.0 - linear_cka(ref[k][0], pruned[k][0]) for k in ref if k in pruned}
    if not per:
        return {"weighted": 0.0, "mean": 0.0, "max": 0.0, "output": 0.0}
    w = np.array([shares.get(k, 1.0) for k in per])
    d = np.array(list(per.values()))
    outs = []
    for k in per:
        r, p = ref[k], pruned[k]
        same = r[0].shape == r[1].shape and p[0].shape == p[1].shape
        outs.append(1.0 - linear_cka(r[0] + r[1], p[0] + p[1]) if same else per[k])
    summary = {
        "weighted": float((w * d).sum() / w.sum()) if w.sum() > 0 else float(d.mean()),
        "mean": float(d.mean()),
        "max": float(d.max()),
        "output": float(np.mean(outs)),
    }
    return summary | {f"block:{k}": v for k, v in per.items()}


@torch.no_grad()
def naswot_score(model: nn.Module, X: Tensor) -> float:
    """log|K| of the ReLU activation-pattern kernel on X: K[i, j] counts the units (every ReLU
    module, every position) on which items i and j are both active or both inactive."""
    model.eval()
    relus = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    if not relus:
        return float("nan")
    dev = next(iter(model.parameters())).device
    n = len(X)
    K = torch.zeros(n, n, dtype=torch.float64, device=dev)

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> None:
        c = (out.detach().flatten(1) > 0).double()
        K.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        model(X.to(dev))
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(K)
    return float(logdet) if float(sign) > 0 else float("-inf")


class SignalProbe(FunctionalProbe):
    """FunctionalProbe plus the inside-the-block signals, from one pruned, recalibrated net per
    candidate. Higher is better for every returned signal (damages are returned as 1 - damage)."""

    def __init__(self, *args: Any, pool: int = 7, naswot_items: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = pool
        self.naswot_X = self.probe_X[:naswot_items]
        with torch_threads(self.threads):
            ref = self.pruned(None)
            self.ref_ops = residual_operands(ref, self.probe_X, pool)
        self.shares = branch_shares(self.ref_ops)

    def pruned(self, strategy: Any) -> nn.Module:
        if strategy is None:  # the unpruned net, recalibrated on the same batches
            net = copy.deepcopy(self.model).to(self.device)
            return recalibrate_bn(net, self.calib_X, self.calib_batch_size, self.calib_batches)
        return super().pruned(strategy)

    def branch(self, strategies: Sequence[Any]) -> np.ndarray:
        """Per strategy: 1 - the share-weighted residual-branch damage (the `branch` signal alone;
        1.0 for a network without residual adds)."""
        out = np.empty(len(strategies))
        with torch_threads(self.threads):
            for i, s in enumerate(strategies):
                t0 = time.perf_counter()
                net = self.pruned(s)
                dmg = branch_damage(self.ref_ops, residual_operands(net, self.probe_X, self.pool), self.shares)
                out[i] = 1.0 - dmg["weighted"]
                self.seconds.append(time.perf_counter() - t0)
        return out

    def signals(self, strategies: Sequence[Any]) -> dict[str, np.ndarray]:
        """Per strategy: agreement, branch (1 - share-weighted branch damage), branch_mean,
        branch_worst (1 - the worst block's damage), add_output (1 - damage after the add), naswot."""
        names = ("agreement", "branch", "branch_mean", "branch_worst", "add_output", "naswot")
        out = {k: np.empty(len(strategies)) for k in names}
        with torch_threads(self.threads):
            for i, s in enumerate(strategies):
                t0 = time.perf_counter()
                net = self.pruned(s)
                out["agreement"][i] = self._agree(self._outputs(net))
                dmg = branch_damage(self.ref_ops, residual_operands(net, self.probe_X, self.pool), self.shares)
                out["branch"][i] = 1.0 - dmg["weighted"]
                out["branch_mean"][i] = 1.0 - dmg["mean"]
                out["branch_worst"][i] = 1.0 - dmg["max"]
                out["add_output"][i] = 1.0 - dmg["output"]
                out["naswot"][i] = naswot_score(net, self.naswot_X)
                self.seconds.append(time.perf_counter() - t0)
        return out
