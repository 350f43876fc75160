"""ODH (One-bit Deep Hashing, He et al., ACM MM 2024): learned hash centres and its two losses.

- `CentreModule`: semantic self-adaptive centres. A class matrix W (C x d; one row per class, the
  final-layer weights of a classifier) goes through an MLP (d -> d -> K); the centres are
  ``H = sign(sigmoid(MLP(W)) - 0.5)`` in {-1, +1}^(C x K), the sign with a straight-through
  gradient (identity backward), so the MLP learns from the loss on the codes. W is frozen (a
  buffer); its rows are centred over the classes and scaled to norm sqrt(d) first (a trained
  classifier's weights are small, and an MLP on near-zero inputs gives every class its bias's code).
- `hash_proxy_loss`: cross-entropy over the cosine similarities of a code to every centre, divided
  by a temperature tau: ``mean_n sum_c -y_nc log softmax_c(cos(u_n, H_c) / tau)`` (multi-hot y is
  summed, not normalised).
- `hash_distill`: stage 2's aggregation term. The batch is made of groups of n_positive images
  of one class; per group, the codes of both views (strong and weak) are mixed with their mean,
  ``x' = m x + (1 - m) mean`` with m ~ U[1, 2) (pushed away from the mean), and the loss is minus
  the mean pairwise cosine of the mixed codes, averaged over the groups.
- `OdhLoss`: the registry's ``odh`` loss (`acpsearch.hashing.get_loss("odh", ..., centers=...)`):
  the hash proxy loss on tanh of the raw output toward FROZEN centres. Fine-tuning a pruned network
  uses it with the centres stored in the base checkpoint (``meta.odh.centers``); base training with
  learned centres and the two stages is `acpsearch.hashing.odh_train.train_odh`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.errors import SpecError

DEFAULT_TAU = 0.2
META_KEY = "odh"  # checkpoint meta entry: {"centers": [[+-1, ...], ...], "tau": ..., ...}


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, -1 elsewhere; the gradient passes through unchanged (straight-through)."""
    hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    return x + (hard - x).detach()


def prepare_class_matrix(w: torch.Tensor) -> torch.Tensor:
    """The class matrix the centre MLP reads: rows centred over the classes, each scaled to norm
    sqrt(d) (a class whose row is the mean keeps a zero row)."""
    if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] < 1:
        raise SpecError(f"odh: the class matrix must be (classes >= 2, features), got {tuple(w.shape)}")
    w = w.detach().float()
    w = w - w.mean(0, keepdim=True)
    return F.normalize(w, dim=1) * math.sqrt(w.shape[1])


class CentreModule(nn.Module):
    """Learned centres: ``sign_ste(sigmoid(MLP(W)) - 0.5)``, (classes, bits) in {-1, +1}."""

    class_matrix: torch.Tensor  # a buffer: the prepared, frozen class matrix (C, d)

    def __init__(self, class_matrix: torch.Tensor, bits: int, hidden: int | None = None) -> None:
        super().__init__()
        w = prepare_class_matrix(class_matrix)
        d = int(w.shape[1])
        width = int(hidden or d)
        self.register_buffer("class_matrix", w)
        self.mlp = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, int(bits)))

    @property
    def num_classes(self) -> int:
        return int(self.class_matrix.shape[0])

    def forward(self) -> torch.Tensor:
        return sign_ste(torch.sigmoid(self.mlp(self.class_matrix)) - 0.5)


def _targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.ndim == 2:
        return (labels > 0).float()
    return F.one_hot(labels.long(), num_classes).float()


def hash_proxy_loss(codes: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Cross-entropy over ``cos(code, centre_c) / tau``; labels are class ids or multi-hot rows."""
    logits = F.normalize(codes, dim=1) @ F.normalize(centres.to(codes.dtype), dim=1).T / tau
    y = _targets(labels, centres.shape[0]).to(codes.device)
    return -(y * F.log_softmax(logits, dim=1)).sum(1).mean()


def hash_distill(
    strong: torch.Tensor, weak: torch.Tensor, n_positive: int, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Aggregation of groups of `n_positive` consecutive same-class items (both views): minus the
    mean pairwise cosine of codes mixed away from their group mean (m ~ U[1, 2)), over groups."""
    n, k = strong.shape
    groups = n // n_positive
    if groups == 0 or n_positive < 1:
        return strong.sum() * 0.0
    s = strong[: groups * n_positive].reshape(groups, n_positive, k)
    t = weak[: groups * n_positive].reshape(groups, n_positive, k)
    x = torch.cat([s, t], 1)  # (G, 2 n_pos, K)
    m = 1.0 + torch.rand(groups, 2 * n_positive, 1, generator=gen).to(x.device, x.dtype)
    mixed = m * x + (1.0 - m) * x.mean(1, keepdim=True)
    z = F.normalize(mixed, dim=2)
    sim = z @ z.transpose(1, 2)
    iu = torch.triu_indices(2 * n_positive, 2 * n_positive, offset=1, device=x.device)
    return -sim[:, iu[0], iu[1]].mean(1).mean()


def min_centre_distance(centres: torch.Tensor) -> int:
    """The smallest Hamming distance between two centres (bits when there is one centre)."""
    c = centres.detach().float()
    if c.shape[0] < 2:
        return int(c.shape[1])
    dist = (c.shape[1] - c @ c.T) / 2
    dist.fill_diagonal_(float(c.shape[1]))
    return int(round(float(dist.min())))


def check_centres(centers: Any, num_classes: int, bits: int, where: str = "loss: odh") -> torch.Tensor:
    """`centers` as a (num_classes, bits) float tensor of +-1, or a one-line SpecError."""
    try:
        c = torch.as_tensor(centers, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise SpecError(f"{where}: centers must be a (classes, bits) array of +-1") from None
    if tuple(c.shape) != (num_classes, bits):
        raise SpecError(
            f"{where}: the stored centres are {tuple(c.shape)}, the network needs ({num_classes} classes, {bits} bits)"
        )
    if not bool(((c == 1) | (c == -1)).all()):
        raise SpecError(f"{where}: centres must hold only +1 and -1")
    return c


class OdhLoss(nn.Module):
    """The hash proxy loss on tanh(raw output) toward frozen centres (`centers`, (C, K) of +-1)."""

    centers: torch.Tensor  # a buffer: the frozen centres

    def __init__(self, bits: int, num_classes: int, centers: Any = None, tau: float = DEFAULT_TAU) -> None:
        super().__init__()
        if centers is None:
            raise SpecError(
                "loss: odh needs the learned hash centres: train the base network with loss odh "
                "(its checkpoint stores them as meta.odh.centers)"
            )
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise SpecError(f"loss: odh: tau must be a positive number, got {tau!r}")
        self.tau = float(tau)
        self.register_buffer("centers", check_centres(centers, num_classes, bits))

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hash_proxy_loss(torch.tanh(h), self.centers, labels, self.tau)


def odh_meta(centres: torch.Tensor, tau: float, **info: Any) -> dict[str, Any]:
    """The checkpoint's ``meta.odh`` entry: the frozen centres as +-1 integers, tau, and `info`."""
    c = torch.where(centres.detach().cpu() >= 0, 1, -1)
    return {"centers": c.tolist(), "tau": float(tau), **info}


def loss_kwargs_from_meta(loss: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments of `get_loss(loss, ...)` that a checkpoint's meta supplies: the stored
    centres and tau for ``odh`` (fine-tuning reuses them), nothing for the other losses."""
    if str(loss).lower() != "odh":
        return {}
    entry = (meta or {}).get(META_KEY)
    if not isinstance(entry, dict) or "centers" not in entry:
        raise SpecError(
            "train.loss: odh: the base checkpoint stores no ODH centres (meta.odh.centers); "
            "train it with loss odh, or fine-tune with another loss"
        )
    return {"centers": entry["centers"], "tau": float(entry.get("tau", DEFAULT_TAU))}
