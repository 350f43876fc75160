"""Test-only architectures, written the way the major model zoos write them (torchvision / timm /
official repos), shrunk to tiny widths. No torchvision import. Every model ends in a hash layer
of BITS outputs (a Linear, or a Conv for SqueezeNet) and accepts (N, 3, 16, 16) inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BITS = 12
INPUT = (2, 3, 16, 16)


# ------------------------------------------------------------------ ResNet (CIFAR, functional ops)
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity  # in-place add, as torchvision writes it
        return F.relu(out)


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 8, width: int = 8, bits: int = BITS, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, w in enumerate([width, 2 * width, 4 * width]):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hash_layer = nn.Linear(cin, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.pool(x), 1)
        return self.hash_layer(x)


# ------------------------------------------------------------------ ResNet-50 style bottleneck / ResNeXt
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetBottleneck(nn.Module):
    def __init__(
        self, layers=(1, 1, 1, 1), planes: int = 8, groups: int = 1, base_width: int = 64, bits: int = BITS
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, planes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], planes
        for i, n in enumerate(layers):
            p = planes * 2**i
            for j in range(n):
                blocks.append(Bottleneck(cin, p, 2 if (j == 0 and i > 0) else 1, groups, base_width))
                cin = p * 4
        self.body = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.body(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnext() -> nn.Module:
    return ResNetBottleneck(layers=(1, 1, 1, 1), planes=8, groups=4, base_width=8)


# ------------------------------------------------------------------ Wide-ResNet (pre-activation, dropout)
class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.3) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=True)
        self.dropout = nn.Dropout(drop)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(self, widen: int = 2, bits: int = BITS) -> None:
        super().__init__()
        w = [8, 8 * widen, 16 * widen, 32 * widen]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=True)
        self.layer1 = nn.Sequential(WideBlock(w[0], w[1], 1), WideBlock(w[1], w[1], 1))
        self.layer2 = nn.Sequential(WideBlock(w[1], w[2], 2))
        self.layer3 = nn.Sequential(WideBlock(w[2], w[3], 2))
        self.bn1 = nn.BatchNorm2d(w[3], momentum=0.9)
        self.linear = nn.Linear(w[3], bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


# ------------------------------------------------------------------ DenseNet (concat)
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 4, blocks=(2, 2), init: int = 8, bits: int = BITS) -> None:
        super().__init__()
        feats = [nn.Conv2d(3, init, 3, 1, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True)]
        c = init
        for i, n in enumerate(blocks):
            feats.append(DenseBlock(n, c, growth))
            c += n * growth
            if i != len(blocks) - 1:
                feats.append(Transition(c, c // 2))
                c //= 2
        feats.append(nn.BatchNorm2d(c))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Linear(c, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


# ------------------------------------------------------------------ MobileNetV2 / V3
class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act=nn.ReLU6) -> None:
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU6, nn.ReLU, nn.Hardswish, nn.SiLU) else act())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        cfg = [(1, 8, 1, 1), (4, 8, 2, 2), (4, 16, 2, 2)]
        feats: list[nn.Module] = [ConvBNAct(3, 8, 3, 1)]
        c = 8
        for t, cout, n, s in cfg:
            for i in range(n):
                feats.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        feats.append(ConvBNAct(c, 32, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: conv 1x1 reduce / expand, gate multiplies the input."""

    def __init__(self, cin: int, squeeze: int, act=nn.ReLU, gate=nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, cin, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class V3Block(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act, stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=act))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, max(8, exp // 4), gate=nn.Hardsigmoid))
        layers.append(ConvBNAct(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res:
            result += x
        return result


class MobileNetV3(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        HS, RE = nn.Hardswish, nn.ReLU
        cfg = [
            (8, 3, 8, 8, True, RE, 2),
            (8, 3, 24, 12, False, RE, 2),
            (12, 3, 32, 12, False, RE, 1),
            (12, 5, 48, 16, True, HS, 2),
            (16, 5, 64, 16, True, HS, 1),
        ]
        layers: list[nn.Module] = [ConvBNAct(3, 8, 3, 1, act=HS)]
        for c in cfg:
            layers.append(V3Block(*c))
        layers.append(ConvBNAct(16, 48, 1, act=HS))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(48, 64), nn.Hardswish(inplace=True), nn.Dropout(0.2), nn.Linear(64, bits)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


# ------------------------------------------------------------------ EfficientNet (MBConv + SE + SiLU + stochastic depth)
class StochasticDepth(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * noise / keep


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, sd: float) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        exp = cin * expand
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=nn.SiLU))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=nn.SiLU))
        layers.append(SqueezeExcitation(exp, max(1, cin // 4), act=nn.SiLU))
        layers.append(ConvBNAct(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(3, 8, 3, 2, act=nn.SiLU),
            MBConv(8, 8, 3, 1, 1, 0.0),
            MBConv(8, 12, 3, 2, 4, 0.05),
            MBConv(12, 12, 5, 1, 4, 0.1),
            ConvBNAct(12, 32, 1, act=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(32, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ------------------------------------------------------------------ RegNet (group width, SE)
class ResBottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        w_b = cout
        g = w_b // group_width
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = ConvBNAct(cin, cout, 1, stride, act=None)
        self.f = nn.Sequential(
            ConvBNAct(cin, w_b, 1, act=nn.ReLU),
            ConvBNAct(w_b, w_b, 3, stride, groups=g, act=nn.ReLU),
            SqueezeExcitation(w_b, max(1, int(round(se_ratio * cin)))),
            ConvBNAct(w_b, cout, 1, act=None),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, 2, act=nn.ReLU)
        self.trunk = nn.Sequential(
            ResBottleneckBlock(8, 16, 2, 4), ResBottleneckBlock(16, 16, 1, 4), ResBottleneckBlock(16, 32, 2, 8)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.trunk(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


# ------------------------------------------------------------------ ShuffleNetV2 (split + shuffle)
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, bias=False),
                nn.BatchNorm2d(bf),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False),
            nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False),
            nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False),
            nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.fc = nn.Linear(64, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage3(self.stage2(self.conv1(x))))
        x = x.mean([2, 3])  # global pool
        return self.fc(x)


# ------------------------------------------------------------------ SqueezeNet (conv hash head)
class Fire(nn.Module):
    def __init__(self, inp: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inp, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8, 8),
            Fire(16, 4, 8, 8),
            Fire(16, 8, 16, 16),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(32, bits, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# ------------------------------------------------------------------ GoogLeNet inception
class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(cin, c3r, kernel_size=1), BasicConv2d(c3r, c3, kernel_size=3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(cin, c5r, kernel_size=1), BasicConv2d(c5r, c5, kernel_size=3, padding=1)
        )
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, pp, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)


class GoogLeNet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, 16, kernel_size=3, stride=2, padding=1)
        self.inception3a = Inception(16, 8, 8, 12, 4, 4, 4)
        self.inception3b = Inception(28, 12, 8, 16, 4, 8, 8)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(44, 16, 8, 16, 4, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(48, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


# ------------------------------------------------------------------ ConvNeXt (channels-last LN, layer scale)
class LayerNormCF(nn.Module):
    """ConvNeXt's LayerNorm for channels_first tensors (official repo)."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, ls: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(ls * torch.ones(dim) + 0.1 * torch.rand(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return inp + x


class ConvNeXt(nn.Module):
    def __init__(self, dims=(8, 16), depths=(1, 1), bits: int = BITS) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNormCF(dims[0])))
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(LayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)]) for d, n in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.stages)):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x.mean([-2, -1])))


# ------------------------------------------------------------------ VGG (flatten into linear) + tuple output
class VGGTuple(nn.Module):
    """VGG-style features flattened into an MLP; returns (features, code) like many hash nets."""

    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 24), nn.ReLU(True)
        )
        self.hash = nn.Linear(24, bits)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x)
        x = torch.flatten(x, 1)
        feat = self.classifier(x)
        return feat, torch.tanh(self.hash(feat))


class VGGLiteralView(nn.Module):
    """Old-style code with a literal view size: the converter must freeze, not break, it."""

    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=4, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 1)
        x = F.relu(self.conv2(x))
        return self.fc(x.view(-1, 16 * 4 * 4))


# ------------------------------------------------------------------ SENet-style SE with Linear layers
class SELinear(nn.Module):
    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(c, c // r, bias=False), nn.ReLU(inplace=True), nn.Linear(c // r, c, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.se1 = SELinear(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.se2 = SELinear(16)
        self.gn = nn.GroupNorm(4, 16)
        self.prelu = nn.PReLU(16)
        self.hash = nn.Linear(16, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.se1(x)
        y = self.se2(self.bn2(self.conv2(x)))
        x = self.prelu(self.gn(F.relu(x + y)))
        return self.hash(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ------------------------------------------------------------------ binary network (one-bit hashing)
class BinaryConv2d(nn.Conv2d):
    """XNOR-style conv: sign() of input and weights, scaled by the weights' mean magnitude."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bw = torch.sign(self.weight) * self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(torch.sign(x), bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BinaryBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = BinaryConv2d(c, c, 3, padding=1, bias=False)
        self.act = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv(self.bn(x)))


class BinaryNet(nn.Module):
    def __init__(self, bits: int = BITS) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(BinaryBlock(16), BinaryBlock(16))
        self.down = BinaryConv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.hash = nn.Linear(32, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.down(x)))
        return self.hash(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ------------------------------------------------------------------ models the converter must refuse / freeze
class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean([2, 3]))


ARCHS = {
    "resnet_cifar": lambda: ResNetCifar(depth=14, width=8),
    "resnet_bottleneck": lambda: ResNetBottleneck(),
    "resnext": resnext,
    "wide_resnet": WideResNet,
    "densenet": DenseNet,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3": MobileNetV3,
    "efficientnet": EfficientNet,
    "regnet": RegNet,
    "shufflenet_v2": ShuffleNetV2,
    "squeezenet": SqueezeNet,
    "googlenet": GoogLeNet,
    "convnext": ConvNeXt,
    "vgg_tuple": VGGTuple,
    "vgg_literal_view": VGGLiteralView,
    "senet": SENet,
    "binary_net": BinaryNet,
}


def make(name: str) -> nn.Module:
    """Factory for checkpoints (model_cfg = {"factory": "archs:make", "kwargs": {"name": ...}})."""
    torch.manual_seed(0)
    m = ARCHS[name]()
    # non-trivial norm statistics so that pruning the wrong channels would show in the outputs
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()
