"""Contrastive objectives for the structure encoder; all work on L2-normalised embeddings.

- `info_nce`: the SACP / ACP-SSE objective. One anchor (the unpruned graph), positives that
  must be closer to it than every negative.
- `soft_info_nce`: our `effect` objective, a listwise (ListNet-style) contrastive loss. The
  softmax over similarities to the anchor is matched to a softmax over a measured functional
  signal, so cosine similarity learns to ORDER strategies by their effect rather than to
  separate two hand-made classes. With a one-hot target it reduces to InfoNCE.
"""

from __future__ import annotations

import torch
from torch import Tensor


def info_nce(anchor: Tensor, positives: Tensor, negatives: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean over positives of -log(e^{s(a,p)/t} / (e^{s(a,p)/t} + sum_n e^{s(a,n)/t})).

    anchor (d,), positives (P, d), negatives (N, d); all rows unit length.
    """
    pos = positives @ anchor / temperature  # (P,)
    neg = negatives @ anchor / temperature  # (N,)
    logits = torch.cat([pos.unsqueeze(1), neg.unsqueeze(0).expand(pos.shape[0], -1)], dim=1)
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def soft_info_nce(
    anchor: Tensor, items: Tensor, signal: Tensor, temperature: float = 0.1, target_temperature: float = 0.5
) -> Tensor:
    """Cross-entropy between softmax(signal standardised / target_temperature) and softmax(sim / temperature).

    anchor (d,), items (B, d) unit rows, signal (B,) higher = closer in effect to the unpruned net.
    Standardising the signal per batch makes the loss invariant to the signal's units.
    """
    sims = items @ anchor / temperature
    sig = signal.float()
    sig = (sig - sig.mean()) / sig.std().clamp_min(1e-6)
    target = torch.softmax(sig / target_temperature, dim=0)
    return -(target * torch.log_softmax(sims, dim=0)).sum()


def pairwise_rank_loss(anchor: Tensor, items: Tensor, signal: Tensor, temperature: float = 0.1) -> Tensor:
    """RankNet-style logistic loss over all ordered pairs with different signal (a second term that
    keeps the order right also in the tail, where the listwise softmax puts little weight)."""
    sims = items @ anchor / temperature
    diff_s = sims.unsqueeze(1) - sims.unsqueeze(0)
    diff_y = signal.unsqueeze(1) - signal.unsqueeze(0)
    mask = diff_y > 0
    if not bool(mask.any()):
        return sims.sum() * 0.0
    return torch.nn.functional.softplus(-diff_s[mask]).mean()
