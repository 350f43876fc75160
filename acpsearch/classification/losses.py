"""Classification losses. Each takes raw logits (N, C) and integer labels (N,).

- ``cross-entropy``  Cross-entropy with optional label smoothing eps (Szegedy et al. 2016): the
  target is (1 - eps) on the true class plus eps / C on every class, so the loss is
  ``(1 - eps) * CE(z, y) + eps * mean_k(-log softmax(z)_k)``. eps = 0 is plain cross-entropy.
- ``distillation``  Knowledge distillation (Hinton et al. 2015): ``(1 - alpha) * CE(s, y) +
  alpha * T^2 * KL(softmax(t / T) || softmax(s / T))``, s the student's logits, t the (frozen)
  teacher's on the same batch, T the temperature. The KL is summed over classes and averaged over
  the batch; T^2 keeps its gradients on the scale of the CE term as T grows. The CE term uses the
  same label smoothing as ``cross-entropy``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from acpsearch.errors import SpecError

LOSS_NAMES = ("cross-entropy", "distillation")


def _check_smoothing(label_smoothing: float) -> float:
    if not 0.0 <= label_smoothing < 1.0:
        raise SpecError(f"train.label_smoothing: must be in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes, batch mean."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy of logits against integer labels, with label smoothing `label_smoothing`."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels.long(), label_smoothing=self.label_smoothing)


class DistillationLoss(nn.Module):
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher || student)`` at temperature T."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not math.isfinite(temperature) or temperature <= 0:
            raise SpecError(f"train.temperature: must be a positive number, got {temperature!r}")
        if not 0.0 <= alpha <= 1.0:
            raise SpecError(f"train.distill: must be in [0, 1], got {alpha!r}")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        kd = distillation_kl(logits, teacher_logits.detach(), self.temperature)
        ce = F.cross_entropy(logits, labels.long(), label_smoothing=self.label_smoothing)
        return (1.0 - self.alpha) * ce + self.alpha * kd


def get_loss(name: str, **kwargs: float) -> nn.Module:
    """Build a classification loss by name (cross-entropy, distillation); kwargs go to its class."""
    key = str(name).lower().replace("_", "-")
    classes: dict[str, type[nn.Module]] = {"cross-entropy": CrossEntropyLoss, "distillation": DistillationLoss}
    if key not in classes:
        raise SpecError(f"loss: unknown classification loss {name!r}; known: {', '.join(LOSS_NAMES)}")
    try:
        return classes[key](**kwargs)
    except TypeError as exc:
        raise SpecError(f"loss: {name}: {exc}") from None
