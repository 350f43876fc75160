"""Binary (one-bit) layers and the binary hash backbone ``bnn_resnet20``.

``BinaryConv2d`` is an ``nn.Conv2d`` subclass (so the channel graph treats it as one conv node):
its forward binarises the **input** with ``sign`` (gradient: straight-through, clipped to
``|x| <= 1``, or IR-Net's tanh-shaped estimator with ``grad="ede"``) and the **weight** to
``alpha * sign(W)`` with ``alpha = mean |W|`` per output channel (XNOR-Net / Bi-Real scale; the
latent real weight ``W`` is what the optimiser updates). ``torch.sign(0) = 0``: a zeroed input
channel contributes nothing in float emulation (real binary hardware would map 0 to +1).

``BinaryResNet`` is the CIFAR ResNet-20 topology (16/32/64 channels, 3 x 3 blocks) with two
binary convs per block, as IR-Net's CIFAR networks: the stem conv, the 1x1 projection
shortcuts and the hash layer stay real. Each block's middle channels are free to prune.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.errors import SpecError

GRADS = ("ste", "ede")


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; backward: gradient where |x| <= 1 (clipped straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return cast(torch.Tensor, grad * (x.abs() <= 1).to(grad.dtype))


class _SignEDE(torch.autograd.Function):
    """sign(x) forward; backward: IR-Net's error-decay estimator ``k t (1 - tanh(t x)^2)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, k: float, t: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.k, ctx.t = k, t
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * ctx.k * ctx.t * (1 - torch.tanh(ctx.t * x) ** 2), None, None


def binary_sign(x: torch.Tensor, grad: str = "ste", k: float = 10.0, t: float = 0.1) -> torch.Tensor:
    """sign(x) with a straight-through gradient (``ste``) or IR-Net's EDE gradient (``ede``)."""
    if grad == "ede":
        return cast(torch.Tensor, _SignEDE.apply(x, k, t))  # type: ignore[no-untyped-call]
    return cast(torch.Tensor, _SignSTE.apply(x))  # type: ignore[no-untyped-call]


class BinaryConv2d(nn.Conv2d):
    """Conv2d on sign(input) and alpha * sign(weight), alpha = mean |W| per output channel.

    ``grad``: ``"ste"`` (clipped straight-through) or ``"ede"`` (IR-Net; ``ede_k`` / ``ede_t``
    are plain attributes a schedule may change between epochs). Pruning input channels changes
    mean |W|; the pruner rescales the kept latent weights so alpha stays what it was (see
    ``acpsearch.pruning.prune``)."""

    acp_binary = True  # the cost model counts its multiply-accumulates as binary operations

    def __init__(self, *args: Any, grad: str = "ste", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if grad not in GRADS:
            raise SpecError(f"model.grad: must be one of {', '.join(GRADS)}, got {grad!r}")
        self.grad = grad
        self.ede_k, self.ede_t = 10.0, 0.1

    def binary_weight(self) -> torch.Tensor:
        """alpha * sign(W), alpha = mean |W| over (in, kh, kw) per output channel."""
        w = self.weight
        alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return alpha * binary_sign(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = binary_sign(x, self.grad, self.ede_k, self.ede_t)
        return F.conv2d(xb, self.binary_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, grad={self.grad}"  # type: ignore[no-untyped-call]


class BinaryBlock(nn.Module):
    """Two binary 3x3 convs (each followed by BN), Hardtanh; real 1x1 conv + BN shortcut where
    the shape changes. The middle channels (conv1 out = conv2 in) are a free channel group."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, grad: str = "ste") -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(cin, mid, 3, stride=stride, padding=1, bias=False, grad=grad)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.Hardtanh(inplace=True)
        self.conv2 = BinaryConv2d(mid, cout, 3, stride=1, padding=1, bias=False, grad=grad)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.Hardtanh(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        y: torch.Tensor = self.act2(out + self.shortcut(x))
        return y


class BinaryResNet(nn.Module):
    """ResNet-(6n+2) for small images with binary block convs (real stem, shortcuts, hash layer).

    ``width_mult`` scales every channel count (16/32/64 at 1.0); BNN kernels pack 32 or 64
    channels per word, so pruning studies may prefer ``width_mult=2`` and ``round_to >= 32``."""

    def __init__(
        self,
        depth: int,
        bits: int,
        in_channels: int = 3,
        image_size: int = 32,
        width_mult: float = 1.0,
        grad: str = "ste",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise SpecError(f"model: ResNet depth must be 6n+2, got {depth}")
        if not isinstance(width_mult, (int, float)) or not 0.25 <= float(width_mult) <= 8:
            raise SpecError(f"model.width_mult: must be a number in [0.25, 8], got {width_mult!r}")
        n = (depth - 2) // 6
        widths = [max(4, round(c * float(width_mult))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.Hardtanh(inplace=True)
        stages = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BinaryBlock(cin, cout, cout, stride, grad))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.hash_bn = nn.BatchNorm1d(cin)
        self.hash_layer = nn.Linear(cin, bits)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        out: torch.Tensor = self.hash_layer(self.hash_bn(self.flatten(self.pool(x))))
        return out


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def bnn_resnet20(bits: int, in_channels: int = 3, image_size: int = 32, **kwargs: Any) -> BinaryResNet:
    """The zoo's ``bnn_resnet20``: ResNet-20 with 18 binary convs (kwargs: width_mult, grad)."""
    return BinaryResNet(20, bits, in_channels, image_size, **kwargs)
