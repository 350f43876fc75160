"""Classification as a downstream task: zoo classifiers, losses, accuracy, splits, training.

A plain library beside `acpsearch.hashing` (it uses the hashing zoo's backbones, data sets and
augmentation; nothing from the service or the CLI): build a classifier with `create_classifier`,
split a data set with `classification_splits`, train with `train_classifier`, score with
`evaluate_classifier`. The networks prune like hash networks: the `classifier` layer is the output.
"""

from __future__ import annotations

from acpsearch.classification.losses import (
    LOSS_NAMES,
    CrossEntropyLoss,
    DistillationLoss,
    distillation_kl,
    get_loss,
)
from acpsearch.classification.metrics import accuracy_report, top1_accuracy, topk_accuracy
from acpsearch.classification.models import CLASSIFIER_NAMES, ZooClassifier, create_classifier
from acpsearch.classification.splits import ClassificationSplits, classification_splits, preprocess_meta
from acpsearch.classification.teacher import class_matrix, teacher_splits, train_teacher
from acpsearch.classification.train import (
    ClassifierTrainResult,
    evaluate_classifier,
    predict_logits,
    train_classifier,
)

__all__ = [
    "LOSS_NAMES",
    "CrossEntropyLoss",
    "DistillationLoss",
    "distillation_kl",
    "get_loss",
    "accuracy_report",
    "top1_accuracy",
    "topk_accuracy",
    "CLASSIFIER_NAMES",
    "ZooClassifier",
    "create_classifier",
    "ClassificationSplits",
    "classification_splits",
    "preprocess_meta",
    "ClassifierTrainResult",
    "evaluate_classifier",
    "predict_logits",
    "train_classifier",
    "class_matrix",
    "teacher_splits",
    "train_teacher",
]
