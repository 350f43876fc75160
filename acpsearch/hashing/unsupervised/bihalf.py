"""BiHalf (Li & van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit Entropy", AAAI 2021)
as a deep baseline on frozen features: a small MLP whose output passes the BiHalf layer.

- BiHalf layer, training forward: per bit, the half of the batch with the larger values gets +1,
  the other half -1 (a per-bit batch median split, so every bit is balanced and has maximal
  entropy). Backward: the straight-through gradient plus ``gamma * (U - B) / numel`` pulling the
  continuous U towards its codes B (gamma = 6, as in the authors' code).
- Loss: the codes of two halves of a batch should have the cosine similarities the features have:
  ``MSE(cos(b_a, b_b), cos(x_a, x_b))`` over the pairs (a_i, b_i).
- At test time a code is sign(U): per item, independent of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.hashing.unsupervised.baselines import flat_features, to_codes


class _BiHalf(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, gamma: float) -> torch.Tensor:
        n = u.shape[0]
        _, order = u.sort(dim=0, descending=True)
        b = torch.full_like(u, -1.0)
        b.scatter_(0, order[: (n + 1) // 2], 1.0)
        ctx.save_for_backward(u, b)
        ctx.gamma = gamma
        return b

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, b = ctx.saved_tensors
        return grads[0] + ctx.gamma * (u - b) / u.numel(), None


def bihalf(u: torch.Tensor, gamma: float = 6.0) -> torch.Tensor:
    """The BiHalf layer (training forward): per-bit batch median split to +-1."""
    out: torch.Tensor = _BiHalf.apply(u, gamma)  # type: ignore[no-untyped-call]
    return out


@dataclass
class BiHalfHasher:
    """A trained BiHalf MLP; ``encode`` gives sign(U)."""

    mean: np.ndarray
    net: nn.Module
    losses: list[float]

    @property
    def bits(self) -> int:
        last = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        return int(last.out_features)

    def encode(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        flat = flat_features(x) - self.mean
        self.net.eval()
        device = next(self.net.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, flat.shape[0], batch):
                xb = torch.as_tensor(flat[i : i + batch], dtype=torch.float32, device=device)
                out.append(self.net(xb).cpu().numpy())
        return to_codes(np.concatenate(out))


def fit_bihalf(
    x: np.ndarray,
    bits: int,
    seed: int = 0,
    epochs: int = 60,
    batch: int = 256,
    hidden: int = 512,
    lr: float = 1e-3,
    gamma: float = 6.0,
    device: str = "cpu",
) -> BiHalfHasher:
    """Train the BiHalf MLP (d -> hidden -> bits) on the centred training features."""
    flat = flat_features(x)
    mean = flat.mean(0)
    data = torch.as_tensor(flat - mean, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(data.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, bits)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    half = max(1, min(batch, data.shape[0]) // 2)
    for _ in range(epochs):
        perm = torch.randperm(data.shape[0], generator=gen).to(device)
        total, steps = 0.0, 0
        for i in range(0, data.shape[0] - 2 * half + 1, 2 * half):
            xb = data[perm[i : i + 2 * half]]
            b = bihalf(net(xb), gamma)
            target = F.cosine_similarity(xb[:half], xb[half:])
            loss = F.mse_loss(F.cosine_similarity(b[:half], b[half:]), target)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        losses.append(total / max(1, steps))
    net.eval()
    return BiHalfHasher(mean=mean, net=net, losses=losses)
