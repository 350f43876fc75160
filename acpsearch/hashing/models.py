"""Hash-network zoo for small images (8x8 to 32x32, 1 or 3 channels), written without torchvision.

Every network ends in ``hash_layer``, an ``nn.Linear(feature_dim, bits)``. ``forward`` returns the
*raw* (pre-activation) K-dim output: the losses apply ``tanh`` (CSQ, HashNet with its growing
scale) or use it directly (DPSH), and the binary code is ``sign(output)`` either way.

The modules are kept plain (Conv2d / BatchNorm2d / ReLU / Linear, residual adds in ``forward``)
and ``forward`` has no data-dependent Python control flow, so ``torch.fx`` can trace them for the
channel graph. Pooling that would shrink a feature map below 1x1 is dropped at construction time
(a static decision from ``image_size``), and the heads use adaptive average pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing.binary import bnn_resnet20


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor` (MobileNetV2 rule, never below 90%)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


# --------------------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; a 1x1 conv + BN projection where shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        y: torch.Tensor = self.relu2(out + self.shortcut(x))
        return y


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. 2016 for CIFAR: stages of 16/32/64 channels, strides 1/2/2."""

    def __init__(self, depth: int, bits: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise SpecError(f"model: ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.hash_layer = nn.Linear(64, bits)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        out: torch.Tensor = self.hash_layer(self.flatten(self.pool(x)))
        return out


# ------------------------------------------------------------------------------------------------ VGG
_VGG_CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with batch norm for small images: conv stack, adaptive pool, one 512-unit FC, hash layer.

    Max-pools that would take the map below 1x1 are left out (decided from `image_size`)."""

    def __init__(self, cfg: list[int | str], bits: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            layers += [*_conv_bn(cin, int(v)), nn.ReLU(inplace=True)]
            cin = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, 512)
        self.fc_relu = nn.ReLU(inplace=True)
        self.hash_layer = nn.Linear(512, bits)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        out: torch.Tensor = self.hash_layer(self.fc_relu(self.fc(x)))
        return out


# -------------------------------------------------------------------------------------------- AlexNet
class SmallAlexNet(nn.Module):
    """AlexNet shape (5 convs 64-192-384-256-256, two FC layers) for small images.

    Differences from the 224x224 original, chosen so it trains from scratch on 8-32 px inputs:
    3x3/5x5 stride-1 convs, 2x2 max-pools (dropped where the map would vanish), batch norm after
    each conv, 1024-unit FC layers over a 2x2 adaptive average pool."""

    def __init__(self, bits: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        size = image_size
        layers: list[nn.Module] = []
        spec: list[tuple[int, int, bool]] = [
            (64, 5, True),
            (192, 5, True),
            (384, 3, False),
            (256, 3, False),
            (256, 3, True),
        ]
        cin = in_channels
        for cout, k, pool in spec:
            layers += [*_conv_bn(cin, cout, kernel=k), nn.ReLU(inplace=True)]
            if pool and size >= 2:
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(256 * 4, 1024)
        self.relu1 = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(0.3)
        self.fc2 = nn.Linear(1024, 1024)
        self.relu2 = nn.ReLU(inplace=True)
        self.hash_layer = nn.Linear(1024, bits)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        x = self.relu2(self.fc2(self.drop1(self.relu1(self.fc1(x)))))
        out: torch.Tensor = self.hash_layer(x)
        return out


# ---------------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual if shapes match.

    `use_res` is fixed at construction, so fx sees a constant, not a data-dependent branch."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, kernel=1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, kernel=3, stride=stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, kernel=1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            res: torch.Tensor = x + self.conv(x)
            return res
        out: torch.Tensor = self.conv(x)
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and first stages.

    Channel counts go through `_make_divisible(c * width_mult, 8)`, so all are multiples of 8."""

    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(
        self, bits: int, in_channels: int = 3, image_size: int = 32, width_mult: float = 1.0, last_channels: int = 1280
    ) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(last_channels * max(1.0, width_mult))
        layers: list[nn.Module] = [*_conv_bn(in_channels, cin, 3, 1), nn.ReLU6(inplace=True)]
        size = image_size
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                stride = s if (i == 0 and size >= 2) else 1
                if stride == 2:
                    size = (size + 1) // 2
                layers.append(InvertedResidual(cin, cout, stride, t))
                cin = cout
        layers += [*_conv_bn(cin, last, kernel=1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.hash_layer = nn.Linear(last, bits)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.hash_layer(self.flatten(self.pool(self.features(x))))
        return out


# --------------------------------------------------------------------------------------- any backbone
class HashHead(nn.Module):
    """HashNet-style wrapper: `backbone` features (flattened) -> `hash_layer` Linear(feature_dim, bits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, bits: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.flatten = nn.Flatten(1)
        self.hash_layer = nn.Linear(feature_dim, bits)
        nn.init.normal_(self.hash_layer.weight, std=0.01)
        nn.init.zeros_(self.hash_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.hash_layer(self.flatten(self.backbone(x)))
        return out


def with_hash_head(
    backbone: nn.Module, bits: int, example_input: torch.Tensor | None = None, feature_dim: int | None = None
) -> HashHead:
    """Put a hash head on any backbone; `feature_dim` is inferred from one forward of `example_input`."""
    if feature_dim is None:
        if example_input is None:
            raise SpecError("with_hash_head: pass feature_dim or example_input to infer it")
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            feature_dim = int(backbone(example_input[:1]).flatten(1).shape[1])
        backbone.train(was_training)
    return HashHead(backbone, int(feature_dim), bits)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


_ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet20": lambda bits, in_channels, image_size, **kw: CifarResNet(20, bits, in_channels, image_size, **kw),
    "resnet32": lambda bits, in_channels, image_size, **kw: CifarResNet(32, bits, in_channels, image_size, **kw),
    "resnet56": lambda bits, in_channels, image_size, **kw: CifarResNet(56, bits, in_channels, image_size, **kw),
    "vgg11": lambda bits, in_channels, image_size, **kw: VGG(_VGG_CFG["vgg11"], bits, in_channels, image_size, **kw),
    "vgg16": lambda bits, in_channels, image_size, **kw: VGG(_VGG_CFG["vgg16"], bits, in_channels, image_size, **kw),
    "alexnet": lambda bits, in_channels, image_size, **kw: SmallAlexNet(bits, in_channels, image_size, **kw),
    "mobilenetv2": lambda bits, in_channels, image_size, **kw: MobileNetV2(bits, in_channels, image_size, **kw),
    "bnn_resnet20": lambda bits, in_channels, image_size, **kw: bnn_resnet20(bits, in_channels, image_size, **kw),
}

MODEL_NAMES: tuple[str, ...] = tuple(_ZOO)


def create_model(name: str, bits: int, in_channels: int = 3, image_size: int = 32, **kwargs: Any) -> nn.Module:
    """Build a zoo hash network; `forward` returns the raw (N, bits) output whose sign is the code."""
    key = str(name).lower()
    if key not in _ZOO:
        raise SpecError(f"model: unknown zoo model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if not isinstance(bits, int) or bits < 1:
        raise SpecError(f"model.bits: must be a positive integer, got {bits!r}")
    if in_channels < 1:
        raise SpecError(f"model.in_channels: must be >= 1, got {in_channels!r}")
    if not 4 <= image_size <= 512:
        raise SpecError(f"model.image_size: must be between 4 and 512, got {image_size!r}")
    try:
        return _ZOO[key](bits, in_channels, image_size, **kwargs)
    except TypeError as exc:
        raise SpecError(f"model.kwargs: {name}: {exc}") from None
