"""``loss: lagnh``: the LAGNH objective (Cui et al., ACM MM 2021) on an image network, inductive.

This is not the paper's model. The paper's network is transductive: a graph convolutional network
over a batch of frozen features and their tags produces the codes, so an item's code depends on its
batch and a query needs its tags. Here the image network itself maps one image to its code
(``z = f(x)``, code ``sign(z)``), and everything graph-like acts in training only:

- **tag attention**: the tags are projected to the code space (``ybar = Linear(C -> K)``); each
  output attends to the batch's projected tags, ``a_ij = [cos(z_i, ybar_j)]_+`` with rows L2
  normalised, ``z_att = a ybar + z``;
- **augmented batch graph**: ``S = S^v + mu S^a`` with ``S^v_ij = exp(-|z_att_i - z_att_j|^2 / 2 s^2)``
  (``2 s^2``: the batch's mean squared distance) and ``S^a = [cos(tags_i, tags_j)]_+``, rows
  normalised to sum 1; **propagation** ``zt = S z`` (parameter-free);
- **losses**: ``L = BCE(D(zt), 1) + l1 MSE([cos(zt_i, zt_j)]_+, k S^a) + l2 MSE(z, sign z)
  + l3 MLSM(Linear(zt), tags)``; the discriminator ``D`` (K -> 64 -> 32 -> 1) learns to tell
  N(0, I) samples from ``zt`` with its own Adam, one step per network step.

The tags are the training images' auxiliary semantics (label-free; `acpsearch.hashing.unsupervised`),
given to the loss where a supervised loss gets labels: no label reaches this loss. The tag-side
layers train with the network (`generator_parameters`); the discriminator trains itself inside
`forward`. None of it is part of the network, so pruning and encoding see a plain image network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.errors import SpecError


class LAGNHLoss(nn.Module):
    """The inductive LAGNH objective; `forward(h, tags)` with the raw (B, K) output and (B, C) tags."""

    unsupervised = True  # its second argument is auxiliary tags, never labels

    def __init__(
        self,
        bits: int,
        num_classes: int = 0,
        tag_dim: int | None = None,
        lambda_recons: float = 100.0,
        lambda_quant: float = 1.0,
        lambda_tags: float = 1.0,
        fusion: float = 1.0,
        k: float = 1.0,
        disc_lr: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if tag_dim is None or int(tag_dim) < 1:
            raise SpecError("loss: lagnh needs the auxiliary tags' width (tag_dim >= 1)")
        for name, v in (("lambda_recons", lambda_recons), ("lambda_quant", lambda_quant), ("lambda_tags", lambda_tags)):
            if not v >= 0:
                raise SpecError(f"loss: lagnh: {name} must be >= 0, got {v}")
        self.bits, self.tag_dim = int(bits), int(tag_dim)
        self.l1, self.l2, self.l3 = float(lambda_recons), float(lambda_quant), float(lambda_tags)
        self.fusion, self.k = float(fusion), float(k)
        self.tag_proj = nn.Linear(self.tag_dim, self.bits)
        self.tag_head = nn.Linear(self.bits, self.tag_dim)
        self.disc = nn.Sequential(nn.Linear(self.bits, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=disc_lr)
        self._gen = torch.Generator().manual_seed(int(seed) + 7)

    def generator_parameters(self) -> list[nn.Parameter]:
        """What trains with the network (the tag projection and the tag head), not the discriminator."""
        return [*self.tag_proj.parameters(), *self.tag_head.parameters()]

    def propagate(self, h: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(zt, S^a): the batch outputs propagated over the augmented batch graph, and the tag graph."""
        sa = F.relu(F.cosine_similarity(tags[:, None, :], tags[None, :, :], dim=-1))
        ybar = self.tag_proj(tags)
        att = F.relu(F.normalize(h, dim=1) @ F.normalize(ybar, dim=1).T)
        z_att = F.normalize(att, dim=1) @ ybar + h
        d2 = torch.cdist(z_att, z_att).pow(2)
        sv = torch.exp(-d2 / d2.mean().detach().clamp(min=1e-6))
        s = sv + self.fusion * sa
        s = s / s.sum(1, keepdim=True).clamp(min=1e-12)
        return s @ h, sa

    def _disc_step(self, fake: torch.Tensor) -> None:
        real = torch.randn(fake.shape, generator=self._gen).to(fake.device)
        logits = self.disc(torch.cat([real, fake]))
        target = torch.cat([torch.ones(len(real), 1), torch.zeros(len(fake), 1)]).to(fake.device)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.disc_opt.step()

    def forward(self, h: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        if tags.ndim != 2 or tags.shape[1] != self.tag_dim:
            raise SpecError(f"loss: lagnh expects (batch, {self.tag_dim}) tags, got shape {tuple(tags.shape)}")
        tags = tags.to(h.dtype)
        zt, sa = self.propagate(h, tags)
        if self.training:
            with torch.enable_grad():
                self._disc_step(zt.detach())
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            adv = F.binary_cross_entropy_with_logits(self.disc(zt), torch.ones(len(zt), 1, device=zt.device))
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)
        cos = F.relu(F.cosine_similarity(zt[:, None, :], zt[None, :, :], dim=-1))
        recons = F.mse_loss(cos, self.k * sa)
        quant = F.mse_loss(h, torch.sign(h).detach())
        tag_loss = F.multilabel_soft_margin_loss(self.tag_head(zt), (tags > 0).to(h.dtype))
        return adv + self.l1 * recons + self.l2 * quant + self.l3 * tag_loss
