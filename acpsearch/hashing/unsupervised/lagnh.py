"""LAGNH (Cui, Zhu, Li, Cheng, Zhang: "Lightweight Augmented Graph Network Hashing for Unsupervised
Image Retrieval", ACM MM 2021) on frozen features: the network and its losses.

Per batch of n images with features X (n, d) and auxiliary semantics (tags) Y (n, c):

1. cross-modal attention: x̄ = Linear(d -> e)(X), ȳ = Linear(c -> e)(Y),
   alpha_ij = relu(cos(x̄_i, ȳ_j)), x_att_i = norm(alpha)_i ȳ + x̄_i;
2. graph: S^v_ij = exp(-||x_att_i - x_att_j||^2 / 2 sigma^2), S^a = tag similarity,
   S = mu S^v + S^a, normalised to S̃;
3. two-layer GCN: Z1 = relu(S̃ X_att W1), Z = S̃ Z1 W2 (the continuous codes; B = sign Z);
4. losses: adversarial (a discriminator r -> 64 -> 32 -> 1 tells N(0, I) samples from Z; the GCN is
   the generator), reconstruction of the tag graph ``k S^a`` by relu(cos(Z, Z)), quantisation
   ||B - Z||^2, and a tag-prediction term.

``variant`` selects what differs between the paper's text and the authors' public code:

| | ``paper`` | ``code`` |
|---|---|---|
| attention normalisation | alpha_ij / sum_j alpha_ij | L2 rows of alpha |
| S^a | y_i . y_j | relu(cos(y_i, y_j)) |
| S | mu S^v + S^a | S^v (the tag term is zero) |
| S̃ | D^-1/2 S D^-1/2 | D^-1 S (L1 rows) |
| reconstruction, quantisation | Frobenius sums | means (MSE) |
| tag term | BCE of sigmoid(Z W) (Eq. 11 needs some map r -> c) | Linear(r -> c) + multi-label soft margin |
| discriminator : generator steps | 1 : 1 | 1 : 5, fresh forward each |
| dropout on GCN inputs | 0 | 0.5 |
| sigma^2 | median squared distance (the text gives none) | 1 |

``use_tags=False`` is the paper's "no auxiliary semantics" ablation: no attention (x_att = x̄),
S = S^v, the reconstruction target is S^v (detached) and no tag term.

Encoding (see ``lagnh_train.encode_lagnh``) is either the code's transductive batches of 256 or an
inductive mode: each new image joins a fixed anchor set of training images, so its code depends on
it and the anchors only, not on which other images are encoded with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.errors import SpecError

LAGNH_VARIANTS = ("paper", "code")


@dataclass
class LAGNHConfig:
    """Settings; the defaults are the paper's COCO values (the script's for the code variant)."""

    bits: int = 32
    variant: str = "code"
    use_tags: bool = True
    embed: int = 512
    hidden: int = 1024
    epochs: int = 300
    batch: int = 1024
    lr: float = 1e-4
    recons: float = 100.0  # lambda1 (paper) / beta (code)
    quant: float = 1.0  # lambda2
    tag: float = 1.0  # lambda3 (paper) / alpha (code)
    k: float = 1.0
    mu: float = 1.0
    seed: int = 0

    def check(self) -> LAGNHConfig:
        if self.variant not in LAGNH_VARIANTS:
            raise SpecError(f"lagnh.variant: must be one of {', '.join(LAGNH_VARIANTS)}, got {self.variant!r}")
        for name in ("bits", "embed", "hidden", "epochs", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"lagnh.{name}: must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise SpecError(f"lagnh.lr: must be positive, got {self.lr!r}")
        return self

    @property
    def g_steps(self) -> int:
        return 5 if self.variant == "code" else 1

    @property
    def dropout(self) -> float:
        return 0.5 if self.variant == "code" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1, eps=1e-8) @ F.normalize(b, dim=1, eps=1e-8).T


class LAGNHNet(nn.Module):
    """Projections, attention, graph and two-layer GCN; ``forward`` returns Z and the graph parts."""

    def __init__(self, dim: int, n_tags: int, cfg: LAGNHConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.img = nn.Linear(dim, cfg.embed)
        self.tag = nn.Linear(max(1, n_tags), cfg.embed) if cfg.use_tags else None
        self.gc1 = nn.Linear(cfg.embed, cfg.hidden)
        self.gc2 = nn.Linear(cfg.hidden, cfg.bits)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.bits, max(1, n_tags), bias=cfg.variant == "code") if cfg.use_tags else None

    def attend(self, x: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        xb: torch.Tensor = self.img(x)
        if self.tag is None or y is None:
            return xb
        yb = self.tag(y)
        alpha = F.relu(_cos(xb, yb))
        if mask is not None:
            alpha = alpha * mask
        if self.cfg.variant == "code":
            alpha = F.normalize(alpha, p=2, dim=1, eps=1e-8)
        else:
            alpha = alpha / alpha.sum(1, keepdim=True).clamp_min(1e-8)
        out: torch.Tensor = alpha @ yb + xb
        return out

    def tag_graph(self, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.variant == "code":
            return F.relu(_cos(y, y))
        return y @ y.T

    def graph(
        self, xatt: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, n_ref: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S̃, S^v, S^a or an empty tensor) for the batch; ``mask`` zeroes edges before normalising;
        sigma^2 (paper variant) comes from the first ``n_ref`` nodes only."""
        d2 = torch.cdist(xatt, xatt).pow(2)
        if self.cfg.variant == "code":
            sigma2 = torch.tensor(1.0, device=xatt.device)
        else:
            ref = d2[:n_ref, :n_ref]
            off = ref[~torch.eye(ref.shape[0], dtype=torch.bool, device=d2.device)]
            sigma2 = off.detach().median().clamp_min(1e-8) if off.numel() else torch.tensor(1.0, device=d2.device)
        sv = torch.exp(-d2 / (2.0 * sigma2))
        sa = self.tag_graph(y) if (y is not None and self.tag is not None) else torch.zeros(0, device=xatt.device)
        s = self.cfg.mu * sv + sa if (self.cfg.variant == "paper" and sa.numel()) else sv
        if mask is not None:
            s = s * mask
        deg = s.sum(1).clamp_min(1e-8)
        if self.cfg.variant == "code":
            norm = s / deg[:, None]
        else:
            inv = deg.rsqrt()
            norm = inv[:, None] * s * inv[None, :]
        return norm, sv, sa

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, n_anchor: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Z for a batch. With ``n_anchor`` the first n_anchor rows are anchors that see only each
        other, and every later row sees the anchors and itself (inductive encoding)."""
        mask = None if n_anchor is None else anchor_mask(n_anchor, x.shape[0], x.device)
        xatt = self.attend(x, y, mask)
        norm, sv, sa = self.graph(xatt, y, mask, x.shape[0] if n_anchor is None else n_anchor)
        z1 = F.relu(norm @ self.gc1(self.drop(xatt)))
        z = norm @ self.gc2(self.drop(z1))
        return {"z": z, "sv": sv, "sa": sa}


def anchor_mask(n_anchor: int, n: int, device: torch.device) -> torch.Tensor:
    """(n, n) 0/1: anchor rows see the anchors; every other row sees the anchors and itself."""
    mask = torch.zeros(n, n, device=device)
    mask[:, :n_anchor] = 1.0
    mask[:n_anchor, n_anchor:] = 0.0
    idx = torch.arange(n_anchor, n, device=device)
    mask[idx, idx] = 1.0
    return mask


class Discriminator(nn.Module):
    """r -> 64 -> 32 -> 1 (Table 1), logits."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(bits, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(z)
        return out


def generator_loss(
    net: LAGNHNet, disc: Discriminator, out: dict[str, torch.Tensor], y: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The generator's terms (adversarial, reconstruction, quantisation, tag) and their weighted sum."""
    cfg = net.cfg
    z = out["z"]
    logits = disc(z)
    adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    target = cfg.k * out["sa"] if out["sa"].numel() else out["sv"].detach()
    rec_pred = F.relu(_cos(z, z))
    b = torch.sign(z).detach()
    if cfg.variant == "code":
        rec = F.mse_loss(rec_pred, target)
        quant = F.mse_loss(z, b)
    else:
        rec = (rec_pred - target).pow(2).sum()
        quant = (b - z).pow(2).sum()
    tag = torch.zeros((), device=z.device)
    if net.classifier is not None and y is not None and cfg.tag > 0:
        logit_y = net.classifier(z)
        if cfg.variant == "code":
            tag = F.multilabel_soft_margin_loss(logit_y, y)
        else:
            tag = F.binary_cross_entropy_with_logits(logit_y, y, reduction="sum")
    total = adv + cfg.recons * rec + cfg.quant * quant + cfg.tag * tag
    sv_mean = out["sv"].detach().mean()  # how far the visual graph is from identity / all-ones
    return {"total": total, "adv": adv, "recons": rec, "quant": quant, "tag": tag, "sv_mean": sv_mean}


def discriminator_loss(disc: Discriminator, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """BCE: prior samples N(0, I) are real, the codes Z (detached) fake."""
    real = torch.randn(z.shape, generator=gen, device="cpu").to(z.device)
    lr_, lf = disc(real), disc(z.detach())
    return F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_)) + F.binary_cross_entropy_with_logits(
        lf, torch.zeros_like(lf)
    )
