"""Training and encoding of the LAGNH model on frozen features (see ``lagnh.py``).

``fit_lagnh(features, tags, cfg)`` trains on the training split (features (n, d), tags (n, c) from
``aux.fit_aux(...).transform``; ``tags=None`` with ``cfg.use_tags=False``). Each epoch draws random
batches of ``cfg.batch`` training images; per batch one discriminator step and ``cfg.g_steps``
generator steps (a fresh forward each), Adam ``cfg.lr`` for both, as the public code does.

``LAGNHModel.encode(features, tags, mode)`` gives +-1 codes:

- ``inductive`` (default): a fixed anchor set of training images (``cfg.batch`` of them, drawn with
  the seed) is encoded with every chunk of new images; a new image's graph edges and attention
  reach the anchors and itself only, so its code does not depend on the other new images or their
  order.
- ``batch``: the public code's test-time encoding, consecutive batches of 256 images each building
  their own graph; a code then depends on its batch neighbours and the file order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from acpsearch.errors import DataError, SpecError
from acpsearch.hashing.unsupervised.baselines import flat_features, to_codes
from acpsearch.hashing.unsupervised.lagnh import (
    Discriminator,
    LAGNHConfig,
    LAGNHNet,
    discriminator_loss,
    generator_loss,
)

ENCODE_MODES = ("inductive", "batch")
CODE_ENCODE_BATCH = 256


@dataclass
class LAGNHModel:
    """A trained LAGNH network with what encoding needs (feature scaling and the anchor set)."""

    cfg: LAGNHConfig
    net: LAGNHNet
    disc: Discriminator
    mean: np.ndarray
    scale: float
    anchor_x: torch.Tensor
    anchor_y: torch.Tensor | None
    history: list[dict[str, float]] = field(default_factory=list)

    def _inputs(self, features: np.ndarray, tags: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.anchor_x.device
        flat = flat_features(features)
        if flat.shape[1] != self.mean.shape[0]:
            raise DataError(f"lagnh: features have {flat.shape[1]} dimensions, trained on {self.mean.shape[0]}")
        x = torch.as_tensor((flat - self.mean) / self.scale, dtype=torch.float32, device=device)
        if not self.cfg.use_tags:
            return x, None
        if tags is None:
            raise SpecError("lagnh: this model was trained with tags; pass the tags of the images to encode")
        y = torch.as_tensor(np.asarray(tags), dtype=torch.float32, device=device)
        if y.shape != (x.shape[0], _n_tags(self.net)):
            raise DataError(
                f"lagnh: tags of shape {tuple(y.shape)} for {x.shape[0]} images of {_n_tags(self.net)} tags"
            )
        return x, y

    def encode(
        self, features: np.ndarray, tags: np.ndarray | None = None, mode: str = "inductive", chunk: int = 512
    ) -> np.ndarray:
        """+-1 float32 codes (n, bits); see the module docstring for the modes."""
        if mode not in ENCODE_MODES:
            raise SpecError(f"lagnh: encode mode must be one of {', '.join(ENCODE_MODES)}, got {mode!r}")
        x, y = self._inputs(features, tags)
        self.net.eval()
        out: list[np.ndarray] = []
        step = CODE_ENCODE_BATCH if mode == "batch" else chunk
        m = self.anchor_x.shape[0]
        with torch.no_grad():
            for i in range(0, x.shape[0], step):
                xb, yb = x[i : i + step], None if y is None else y[i : i + step]
                if mode == "batch":
                    z = self.net(xb, yb)["z"]
                else:
                    xa = torch.cat([self.anchor_x, xb])
                    ya = None if yb is None or self.anchor_y is None else torch.cat([self.anchor_y, yb])
                    z = self.net(xa, ya, n_anchor=m)["z"][m:]
                out.append(z.cpu().numpy())
        return to_codes(np.concatenate(out)) if out else np.zeros((0, self.cfg.bits), dtype=np.float32)


def _n_tags(net: LAGNHNet) -> int:
    return 0 if net.tag is None else int(net.tag.in_features)


Progress = Callable[[int, dict[str, float]], None]


def fit_lagnh(
    features: np.ndarray,
    tags: np.ndarray | None,
    cfg: LAGNHConfig | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> LAGNHModel:
    """Train LAGNH on the training split; ``progress(epoch, losses)`` is called after each epoch."""
    cfg = (cfg or LAGNHConfig()).check()
    flat = flat_features(features, "lagnh features")
    if cfg.use_tags and tags is None:
        raise SpecError("lagnh: use_tags is on but no tags were given (fit_aux(...).transform(features))")
    n = flat.shape[0]
    y_all = None
    if cfg.use_tags and tags is not None:
        y_np = np.asarray(tags, dtype=np.float32)
        if y_np.ndim != 2 or y_np.shape[0] != n:
            raise DataError(f"lagnh: tags of shape {tuple(y_np.shape)} for {n} training images")
        y_all = torch.as_tensor(y_np, device=device)
    mean = flat.mean(0)
    scale = float(np.sqrt(((flat - mean) ** 2).mean())) or 1.0  # unit variance per feature on average
    x_all = torch.as_tensor((flat - mean) / scale, dtype=torch.float32, device=device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = LAGNHNet(flat.shape[1], 0 if y_all is None else int(y_all.shape[1]), cfg).to(device)
    disc = Discriminator(cfg.bits).to(device)
    opt_g = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr)
    batch = min(cfg.batch, n)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen).to(device)
        sums: dict[str, float] = {}
        steps = 0
        for i in range(0, n - batch + 1, batch):
            idx = perm[i : i + batch]
            xb, yb = x_all[idx], None if y_all is None else y_all[idx]
            d_loss = discriminator_loss(disc, net(xb, yb)["z"].detach(), gen)
            opt_d.zero_grad()
            d_loss.backward()  # type: ignore[no-untyped-call]
            opt_d.step()
            for _ in range(cfg.g_steps):
                terms = generator_loss(net, disc, net(xb, yb), yb)
                opt_g.zero_grad()
                terms["total"].backward()  # type: ignore[no-untyped-call]
                opt_g.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["disc"] = sums.get("disc", 0.0) + float(d_loss.detach())
            steps += 1
        record = {k: v / max(1, steps) for k, v in sums.items()}
        history.append(record)
        if progress is not None:
            progress(epoch, record)
    anchor_idx = torch.randperm(n, generator=gen)[:batch].to(device)
    return LAGNHModel(
        cfg=cfg,
        net=net.eval(),
        disc=disc.eval(),
        mean=mean,
        scale=scale,
        anchor_x=x_all[anchor_idx],
        anchor_y=None if y_all is None else y_all[anchor_idx],
        history=history,
    )
