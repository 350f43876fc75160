"""Deep hashing losses. Each takes the network's *raw* K-dim output and the labels.

- ``csq``  Central Similarity Quantization (Yuan et al., CVPR 2020): every class gets a hash
  centre (rows of a Hadamard matrix and their negations when there are at most 2K classes and K is
  a power of two, else random balanced +-1 vectors kept far apart); tanh outputs are pulled to
  their centre by a binary cross-entropy, plus a small quantization term. Multi-label items use
  the sign of the sum of their label centres (ties broken at random, seeded). The default: it
  trains well from scratch on CPU.
- ``hashnet`` HashNet (Cao et al., ICCV 2017): pairwise logistic likelihood on tanh(scale * h),
  positive and negative pairs re-weighted to balance, and the tanh scale grows with the number
  of steps ((1 + 0.005 * step) ** 0.5) so outputs approach +-1 ("continuation").
- ``dpsh`` DPSH (Li et al., IJCAI 2016): pairwise likelihood on theta = u.u / 2 of the raw outputs
  plus eta * ||u - sign(u)||^2. Pairs are formed inside the batch. Note: trained from scratch it can
  collapse to one code for every input; prefer csq / hashnet for base training.

- ``odh`` ODH (He et al., ACM MM 2024): cross-entropy over cosine similarity to learned centres
  / tau; here with frozen centres (given as ``centers``), see acpsearch.hashing.odh.

All pair-based losses derive similarity from labels: share at least one label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from torch import nn

from acpsearch.errors import SpecError

LOSS_NAMES = ("csq", "hashnet", "dpsh", "lagnh", "odh")
UNSUPERVISED_LOSSES = ("lagnh",)  # trained on auxiliary tags (hashing.lagnh_loss), never on labels


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.ndim == 2:
        return (labels > 0).float()
    return F.one_hot(labels.long(), num_classes).float()


def _similarity(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    y = _one_hot(labels, num_classes)
    return (y @ y.T > 0).float()


def hash_centers(num_classes: int, bits: int, seed: int = 0) -> torch.Tensor:
    """(num_classes, bits) +-1 centres: Hadamard rows (and negations) when possible, else random
    balanced codes (K/2 ones each), drawn to keep a large minimum Hamming distance."""
    if num_classes < 1:
        raise SpecError(f"num_classes: must be >= 1, got {num_classes}")
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        h = hadamard(bits).astype(np.float32)
        centres = np.concatenate([h, -h], 0)[:num_classes]
        return torch.from_numpy(centres)
    rng = np.random.default_rng(seed)
    # Random balanced centres; keep the best of several draws by minimum pairwise distance
    # (the expected distance is K/2; this avoids the occasional close pair).
    best, best_min = None, -1.0
    for _ in range(20):
        c = np.ones((num_classes, bits), dtype=np.float32)
        for i in range(num_classes):
            c[i, rng.permutation(bits)[: bits // 2]] = -1.0
        dist = (bits - c @ c.T) / 2
        np.fill_diagonal(dist, bits)
        m = float(dist.min()) if num_classes > 1 else float(bits)
        if m > best_min:
            best, best_min = c, m
    return torch.from_numpy(best)


class CSQLoss(nn.Module):
    """Central Similarity Quantization loss on tanh(raw output); see module docstring."""

    centers: torch.Tensor  # a buffer: (num_classes, bits) +-1 hash centres

    def __init__(self, bits: int, num_classes: int, lambda_q: float = 1e-4, seed: int = 0) -> None:
        super().__init__()
        self.bits, self.num_classes, self.lambda_q = bits, num_classes, lambda_q
        self.register_buffer("centers", hash_centers(num_classes, bits, seed))
        self._gen = torch.Generator().manual_seed(seed + 1)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Hash centre per item; multi-label: sign of the sum of centres, ties -> random +-1."""
        if labels.ndim == 1:
            return self.centers[labels.long()]
        summed = (labels > 0).float() @ self.centers
        rand = torch.randint(0, 2, summed.shape, generator=self._gen).float() * 2 - 1
        return torch.where(summed == 0, rand.to(summed.device), torch.sign(summed))

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        u = torch.tanh(h)
        c = self.targets(labels).to(u.dtype)
        # BCE between (u+1)/2 and (c+1)/2 as in the reference code; clamped so log() stays finite.
        p = ((u + 1) / 2).clamp(1e-6, 1 - 1e-6)
        center_loss = F.binary_cross_entropy(p, (c + 1) / 2)
        q_loss = (u.abs() - 1).pow(2).mean()
        return center_loss + self.lambda_q * q_loss


class HashNetLoss(nn.Module):
    """HashNet weighted pairwise loss with a growing tanh scale (continuation)."""

    def __init__(
        self, bits: int, num_classes: int, alpha: float | None = None, gamma: float = 0.005, power: float = 0.5
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.alpha = 10.0 / bits if alpha is None else alpha
        self.gamma, self.power = gamma, power
        self.steps = 0

    @property
    def scale(self) -> float:
        return float((1.0 + self.gamma * self.steps) ** self.power)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
        u = torch.tanh(self.scale * h)
        s = _similarity(labels, self.num_classes).to(u.device)
        dot = self.alpha * (u @ u.T)
        # -log p(s | u) = log(1 + exp(dot)) - s * dot, softplus keeps it finite
        nll = F.softplus(dot) - s * dot
        n_pos = s.sum()
        n_neg = s.numel() - n_pos
        total = float(s.numel())
        w = torch.where(s > 0, total / n_pos.clamp(min=1), total / n_neg.clamp(min=1))
        return (nll * w).sum() / total


class DPSHLoss(nn.Module):
    """DPSH pairwise likelihood on raw outputs + quantization, pairs within the batch."""

    def __init__(self, bits: int, num_classes: int, eta: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.eta = num_classes, eta

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = _similarity(labels, self.num_classes).to(h.device)
        theta = 0.5 * (h @ h.T)
        likelihood = (F.softplus(theta) - s * theta).mean()
        quant = (h - torch.sign(h).detach()).pow(2).mean()
        return likelihood + self.eta * quant


def get_loss(name: str, bits: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a hashing loss by name (csq, hashnet, dpsh, lagnh, odh); kwargs go to the loss class."""
    from acpsearch.hashing.lagnh_loss import LAGNHLoss
    from acpsearch.hashing.odh import OdhLoss  # odh: frozen learned centres (acpsearch.hashing.odh)

    key = str(name).lower()
    classes: dict[str, type[nn.Module]] = {
        "csq": CSQLoss,
        "hashnet": HashNetLoss,
        "dpsh": DPSHLoss,
        "lagnh": LAGNHLoss,
        "odh": OdhLoss,
    }
    if key not in classes:
        raise SpecError(f"loss: unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")
    try:
        return classes[key](bits, num_classes, **kwargs)
    except TypeError as exc:
        raise SpecError(f"loss: {name}: {exc}") from None
