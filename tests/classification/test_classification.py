"""acpsearch.classification: zoo classifiers, losses, accuracy, splits and training on sklearn digits."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import acpsearch as acp
from acpsearch.classification import (
    LOSS_NAMES,
    ClassificationSplits,
    CrossEntropyLoss,
    DistillationLoss,
    accuracy_report,
    classification_splits,
    create_classifier,
    distillation_kl,
    evaluate_classifier,
    get_loss,
    top1_accuracy,
    topk_accuracy,
    train_classifier,
)
from acpsearch.errors import DataError, SpecError
from acpsearch.hashing import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# -------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["resnet20", "vgg11", "alexnet", "mobilenetv2"])
def test_classifier_head_is_the_output_layer_and_survives_pruning(name: str) -> None:
    torch.manual_seed(0)
    net = create_classifier(name, 10, in_channels=1, image_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    assert net(x).shape == (2, 10)
    g = acp.ChannelGraph.from_model(net, x)
    assert g.hash_layer == "classifier"  # detected as the output layer
    assert acp.ChannelGraph.from_model(net, x, hash_layer="classifier").hash_layer == "classifier"
    features = net.classifier.in_features
    for group in g.groups:  # the classifier only ever consumes a group (its inputs), never produces one
        if "classifier" in group.modules:
            assert group.channels == features != 10
    s = acp.PruningStrategy.uniform(g, keep=0.5)
    pruned = acp.prune(net, s, x)
    assert pruned(x).shape == (2, 10)
    assert pruned.classifier.out_features == 10
    assert pruned.classifier.in_features < features
    assert acp.measure_cost(pruned, x) == g.cost(s)


def test_create_classifier_refuses_bad_arguments() -> None:
    with pytest.raises(SpecError, match="known: resnet20"):
        create_classifier("resnet21", 10)
    with pytest.raises(SpecError, match="classes"):
        create_classifier("resnet20", 1)


# -------------------------------------------------------------------------------------------- losses
def test_label_smoothing_follows_the_formula() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 2])
    eps = 0.3
    logp = torch.log_softmax(logits, dim=1)
    nll = -logp[torch.arange(2), labels].mean()
    uniform = -logp.mean(dim=1).mean()
    expected = (1 - eps) * nll + eps * uniform
    assert float(CrossEntropyLoss(eps)(logits, labels)) == pytest.approx(float(expected), abs=1e-6)
    assert float(CrossEntropyLoss(0.0)(logits, labels)) == pytest.approx(float(nll), abs=1e-6)
    assert float(CrossEntropyLoss(eps)(logits, labels)) != pytest.approx(float(nll), abs=1e-3)


def test_distillation_equals_a_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[3.0, 0.0, 1.0]])
    T = 2.0

    def softmax(v: list[float]) -> list[float]:
        e = [math.exp(a / T) for a in v]
        return [a / sum(e) for a in e]

    p, q = softmax([3.0, 0.0, 1.0]), softmax([1.0, 2.0, 0.0])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(distillation_kl(s, t, T)) == pytest.approx(T * T * kl, rel=1e-5)
    ce = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(2.0) + 1.0))
    alpha = 0.25
    mixed = DistillationLoss(temperature=T, alpha=alpha)(s, torch.tensor([0]), t)
    assert float(mixed) == pytest.approx((1 - alpha) * ce + alpha * T * T * kl, rel=1e-5)
    assert float(distillation_kl(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_loss_registry_lists_the_choices() -> None:
    assert LOSS_NAMES == ("cross-entropy", "distillation")
    assert isinstance(get_loss("cross-entropy", label_smoothing=0.1), CrossEntropyLoss)
    assert isinstance(get_loss("distillation", temperature=2.0, alpha=0.5), DistillationLoss)
    with pytest.raises(SpecError, match="known: cross-entropy, distillation"):
        get_loss("focal")


# ------------------------------------------------------------------------------------------- metrics
def test_top1_and_top5_on_a_hand_made_example() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 2, 2])
    assert top1_accuracy(logits, labels) == pytest.approx(0.5)  # rows 0 and 2
    assert topk_accuracy(torch.tensor(logits), torch.tensor(labels), 2) == pytest.approx(0.75)  # + row 1
    assert topk_accuracy(logits, labels, 3) == 1.0
    assert set(accuracy_report(logits, labels)) == {"top1"}
    wide = torch.zeros(6, 20)
    for i in range(6):
        wide[i, i] = 10.0 - i  # row i ranks its classes i, 0, 1, ...: label 19 is never in the top 5
        wide[i, :i] += torch.linspace(5.0, 1.0, 20)[:i]
    y = torch.tensor([0, 0, 0, 0, 19, 5])
    report = accuracy_report(wide, y)
    assert report["top1"] == pytest.approx(1 / 6)  # only row 0
    assert report["top5"] == pytest.approx(5 / 6)  # rows 0-3 and 5 have their label among the top 5
    with pytest.raises(DataError):
        top1_accuracy(np.zeros(3), np.zeros(3))


# -------------------------------------------------------------------------------------------- splits
def test_splits_are_disjoint_stratified_and_seeded(digits) -> None:
    a = classification_splits(digits, seed=0)
    rows = {k: set(v.tolist()) for k, v in a.indices.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert len(rows["train"] | rows["val"] | rows["test"]) == len(digits)
    assert a.test_source == "held-out"
    labels = digits.labels.numpy()
    total = np.bincount(labels, minlength=10)
    for part, fraction in (("test", 0.2), ("val", 0.1 * 0.8)):
        counts = np.bincount(labels[a.indices[part].numpy()], minlength=10)
        assert np.all(np.abs(counts - fraction * total) <= 1.5), (part, counts)
    again = classification_splits(digits, seed=0)
    other = classification_splits(digits, seed=1)
    for k in ("train", "val", "test"):
        assert torch.equal(a.indices[k], again.indices[k])
        assert torch.equal(getattr(a, k)[0], getattr(again, k)[0])
    assert not torch.equal(a.indices["test"], other.indices["test"])
    # normalised with the training part's statistics
    assert abs(float(a.train[0].mean())) < 1e-4 and a.mean and len(a.std) == 1


def test_per_class_caps_and_bad_inputs(digits) -> None:
    s = classification_splits(digits, train_per_class=5, val_per_class=2, test_per_class=3, seed=3)
    assert s.sizes() == {"train": 50, "val": 20, "test": 30}
    assert np.all(np.bincount(s.train[1].numpy(), minlength=10) == 5)
    with pytest.raises(DataError, match="val_fraction"):
        classification_splits(digits, val_fraction=1.5)
    with pytest.raises(DataError, match="train_per_class"):
        classification_splits(digits, train_per_class=0)


def test_a_standard_test_split_is_kept(digits) -> None:
    n = len(digits)
    # the loader records where cifar10's test_batch starts; here a digits-sized stand-in with 300
    s = classification_splits(replace(digits, name="cifar10", test_start=n - 300), seed=0)
    assert s.test_source == "standard"
    assert s.indices["test"].tolist() == list(range(n - 300, n))
    assert int(s.indices["train"].max()) < n - 300
    # a list-file data set: its test list is the test split, its train list the rest
    parts = {"query": np.arange(0, 200), "train": np.arange(200, 1000), "database": np.arange(1000, n)}
    s = classification_splits(replace(digits, name="listfile", parts=parts), seed=0)
    assert s.test_source == "standard" and s.indices["test"].tolist() == list(range(200))
    assert set(s.indices["train"].tolist()) | set(s.indices["val"].tolist()) == set(range(200, 1000))
    # the size of a data set says nothing: a cut-down cifar10 without a recorded boundary holds out
    s = classification_splits(replace(digits, name="cifar10"), seed=0)
    assert s.test_source == "held-out"


def test_the_builtin_loaders_record_the_test_boundary(tmp_path) -> None:
    import pickle

    from acpsearch.hashing import load_dataset

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = 4 if i < 5 else 6
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [j % 2 for j in range(n)]}
        (root / name).write_bytes(pickle.dumps(batch))
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.test_start == 20 and ds.standard_test().tolist() == list(range(20, 26))
    s = classification_splits(ds, val_fraction=0.25, seed=0)
    assert s.test_source == "standard" and s.indices["test"].tolist() == list(range(20, 26))
    assert load_dataset("digits").standard_test() is None


# ------------------------------------------------------------------------------------------ training
def test_resnet20_learns_digits(digits) -> None:
    s = classification_splits(digits, seed=0)
    net = create_classifier("resnet20", s.num_classes, in_channels=1, image_size=8)
    result = train_classifier(net, s, epochs=3, lr=3e-3, batch_size=64, seed=0)
    # measured: val top-1 0.97, test top-1 0.96 after 3 epochs (chance is 0.1)
    assert result.best_val_top1 > 0.85
    assert evaluate_classifier(result.model, *s.test)["top1"] > 0.85
    assert len(result.history) == result.epochs_run == 3


def test_training_with_smoothing_augmentation_and_a_teacher_runs(digits) -> None:
    s = classification_splits(digits, train_per_class=10, val_per_class=3, test_per_class=3, seed=0)
    teacher = create_classifier("resnet20", 10, in_channels=1, image_size=8)
    student = create_classifier("resnet20", 10, in_channels=1, image_size=8)
    r = train_classifier(
        student, s, epochs=1, lr=1e-3, batch_size=32, label_smoothing=0.1, augment=True, teacher=teacher, distill=0.5
    )
    assert math.isfinite(r.history[0]["loss"])
    with pytest.raises(SpecError, match="teacher"):
        train_classifier(student, s, epochs=1, distill=0.5)


def test_the_best_epoch_is_chosen_by_validation_accuracy() -> None:
    # validation labels are the opposite of the training labels: the more the model learns, the
    # worse it does on validation, so the best epoch by validation is an early one, not the last
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 2, 2, generator=gen)
    y = (x.flatten(1).sum(1) > 0).long()
    splits = ClassificationSplits(
        train=(x[:150], y[:150]), val=(x[150:], 1 - y[150:]), test=(x[:0], y[:0]), num_classes=2
    )
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    result = train_classifier(net, splits, epochs=6, lr=0.05, batch_size=16, seed=0)
    vals = [h["val_top1"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmax(vals))
    assert result.best_epoch < 6 and vals[-1] < max(vals)
    assert result.best_val_top1 == max(vals)
    assert evaluate_classifier(result.model, *splits.val)["top1"] == pytest.approx(max(vals))
