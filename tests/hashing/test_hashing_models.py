"""Zoo models: forward + backward at several sizes and channel counts, fx-traceable, hash layer,
multiples of 8 in MobileNetV2, one-line errors, HashHead on any backbone."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from acpsearch.errors import SpecError
from acpsearch.hashing import MODEL_NAMES, HashHead, create_model, with_hash_head

EXPECTED = {"resnet20", "resnet32", "resnet56", "vgg11", "vgg16", "alexnet", "mobilenetv2", "bnn_resnet20"}


def test_zoo_names():
    assert set(MODEL_NAMES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3), (28, 3)])
def test_forward_backward(name, size, channels):
    torch.manual_seed(0)
    net = create_model(name, bits=12, in_channels=channels, image_size=size)
    x = torch.randn(3, channels, size, size)
    out = net(x)
    assert out.shape == (3, 12)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert net.hash_layer.weight.grad is not None and net.hash_layer.weight.grad.abs().sum() > 0
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0  # gradient reaches the stem


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fx_traceable_and_equivalent(name):
    net = create_model(name, bits=16, in_channels=1, image_size=28).eval()
    gm = fx.symbolic_trace(net)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(gm(x), net(x), atol=1e-5)
    assert isinstance(net.hash_layer, nn.Linear) and net.hash_layer.out_features == 16


def test_resnet_depths_and_residual_adds():
    counts = {}
    for name, depth in (("resnet20", 20), ("resnet32", 32), ("resnet56", 56)):
        net = create_model(name, bits=8)
        convs = [m for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
        counts[name] = len(convs) + 1  # + the hash layer
        assert counts[name] == depth
        adds = [n for n in fx.symbolic_trace(net).graph.nodes if n.op == "call_function" and "add" in str(n.target)]
        assert len(adds) == (depth - 2) // 2


def test_mobilenetv2_channels_are_multiples_of_8():
    for wm in (1.0, 0.5, 0.75):
        net = create_model("mobilenetv2", bits=32, image_size=32, width_mult=wm)
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 52
        for m in convs:
            assert m.out_channels % 8 == 0, (wm, m)
        assert net.hash_layer.in_features % 8 == 0


def test_vgg_has_batch_norm_and_drops_pools_on_tiny_images():
    net = create_model("vgg16", bits=8, image_size=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3  # 8 -> 4 -> 2 -> 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in create_model("vgg16", bits=8).modules()) == 5


def test_unknown_model_is_one_line_spec_error():
    with pytest.raises(SpecError) as exc:
        create_model("resnet18", bits=32)
    msg = str(exc.value)
    assert "\n" not in msg and "resnet18" in msg
    for name in EXPECTED:
        assert name in msg


def test_bad_bits_is_spec_error():
    with pytest.raises(SpecError, match="bits"):
        create_model("resnet20", bits=0)


def test_hash_head_on_any_backbone():
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
    net = with_hash_head(backbone, bits=24, example_input=torch.randn(1, 3, 16, 16))
    assert isinstance(net, HashHead) and net.hash_layer.in_features == 32
    out = net(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 24)
    out.sum().backward()
    assert backbone[0].weight.grad is not None
    fx.symbolic_trace(net)
    assert HashHead(nn.Flatten(), 12, 8)(torch.randn(2, 3, 2, 2)).shape == (2, 8)
    with pytest.raises(SpecError):
        with_hash_head(backbone, bits=8)
