"""Binary blocks written the way BNN code bases write them (our own small modules, for the
converter / pruner / cost tests):

* ``MaskSign``: a sign whose gradient is a piecewise polynomial built from comparison masks
  (``(x < 0).float()``, ``.type(torch.float32)``), the Bi-Real "ApproxSign" style;
* ``FunctionalBinaryConv``: a plain ``nn.Module`` holding a 4-D latent weight and calling
  ``F.conv2d`` on ``mean|W| * sign(W)`` (clip straight-through), the OSH / Bi-Real style;
* ``StyleNet``: a small two-stage network of blocks with two such binary convs each (the middle
  channels free), real stem, real 1x1 shortcut, real hash layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BITS = 12
INPUT = (4, 3, 12, 12)


class MaskSign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hard = torch.sign(x)
        below = (x < -1).type(torch.float32)
        neg = (x < 0).float()
        above = torch.where(x > 1, torch.ones_like(x), torch.zeros_like(x))
        left = -1 * below + (x * x + 2 * x) * (1 - below)
        mid = left * neg + (-x * x + 2 * x) * (1 - neg)
        soft = mid * (1 - above) + above
        return hard.detach() - soft.detach() + soft


class FunctionalBinaryConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        scale = torch.mean(
            torch.mean(torch.mean(w.abs(), dim=3, keepdim=True), dim=2, keepdim=True), dim=1, keepdim=True
        )
        hard = scale.detach() * torch.sign(w)
        clipped = torch.clamp(w, -1.0, 1.0)
        wb = hard.detach() - clipped.detach() + clipped
        return F.conv2d(x, wb, stride=self.stride, padding=1)


class StyleBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.sign1 = MaskSign()
        self.conv1 = FunctionalBinaryConv(cin, mid, stride)
        self.bn1 = nn.BatchNorm2d(mid)
        self.sign2 = MaskSign()
        self.conv2 = FunctionalBinaryConv(mid, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(self.sign1(x))))
        out = self.bn2(self.conv2(self.sign2(out)))
        return self.act(out + self.short(x))


class StyleNet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.block1 = StyleBlock(8, 12, 16, 1)
        self.block2 = StyleBlock(16, 20, 24, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hash_layer = nn.Linear(24, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.hash_layer(torch.flatten(self.pool(x), 1))


def make_style_net() -> StyleNet:
    torch.manual_seed(0)
    m = StyleNet()
    for mod in m.modules():  # non-trivial norm statistics: pruning the wrong channels would show
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()
