"""Classifiers on the hashing zoo's backbones: the same networks, ending in class logits.

`create_classifier(name, classes)` builds a zoo network (`acpsearch.hashing.create_model`), swaps
its hash layer for ``nn.Identity`` (so ``backbone`` returns the pooled, flattened features) and
puts ``classifier = nn.Linear(features, classes)`` after it. ``forward`` returns raw logits
(N, classes); softmax belongs to the loss.

Pruning: the classifier is the last Linear before the output, so `ChannelGraph.from_model`
detects it as the output layer (as the hash layer of a hash network; pass
``hash_layer="classifier"`` to say so explicitly). Its inputs shrink with the backbone's last
channels, its outputs (one per class) are never pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing import MODEL_NAMES, create_model

CLASSIFIER_NAMES: tuple[str, ...] = MODEL_NAMES  # every zoo network ends in a Linear hash_layer


class ZooClassifier(nn.Module):
    """A zoo backbone (hash layer replaced by ``nn.Identity``) followed by ``classifier``."""

    def __init__(self, backbone: nn.Module, features: int, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(features, classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def num_classes(self) -> int:
        return int(self.classifier.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.backbone(x))
        return out


def create_classifier(name: str, classes: int, in_channels: int = 3, image_size: int = 32) -> ZooClassifier:
    """Build the zoo network `name` as a `classes`-way classifier for (in_channels, image_size^2) input."""
    key = str(name).lower()
    if key not in CLASSIFIER_NAMES:
        raise SpecError(f"model: unknown classifier {name!r}; known: {', '.join(CLASSIFIER_NAMES)}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise SpecError(f"model.classes: must be an integer >= 2, got {classes!r}")
    backbone = create_model(key, 1, in_channels=in_channels, image_size=image_size)
    head = backbone.get_submodule("hash_layer")
    if not isinstance(head, nn.Linear):  # every zoo network ends in an nn.Linear hash_layer
        raise SpecError(f"model: {name}: the zoo network has no Linear hash_layer to replace")
    features = int(head.in_features)
    backbone.hash_layer = nn.Identity()
    return ZooClassifier(backbone, features, classes)
