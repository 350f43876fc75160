"""Structure encoder (ACP-SSE): GCN embedding of (channel graph, pruning strategy), trained
contrastively without fine-tuned accuracies. Plain library: no Optuna, no Ray."""

from acpsearch.encoder.losses import info_nce, pairwise_rank_loss, soft_info_nce
from acpsearch.encoder.model import GraphBatcher, StructureEncoder
from acpsearch.encoder.training import (
    OBJECTIVES,
    EncoderTrainResult,
    grid_values,
    random_ratios,
    rank_average,
    train_encoder,
)
from acpsearch.pruning.probe import FunctionalProbe, model_codes, recalibrate_bn

__all__ = [
    "StructureEncoder",
    "GraphBatcher",
    "info_nce",
    "soft_info_nce",
    "pairwise_rank_loss",
    "FunctionalProbe",
    "model_codes",
    "recalibrate_bn",
    "train_encoder",
    "EncoderTrainResult",
    "OBJECTIVES",
    "random_ratios",
    "rank_average",
    "grid_values",
]
