"""The downstream side: hash-net zoo, hashing losses, data sets + retrieval protocol, metrics, training."""

from __future__ import annotations

from acpsearch.hashing.data import DATASET_NAMES, Dataset, Splits, load_dataset, make_splits
from acpsearch.hashing.encoding import encode, evaluate, validation_map
from acpsearch.hashing.labelfree import NeighbourScore, neighbour_map
from acpsearch.hashing.losses import LOSS_NAMES, CSQLoss, DPSHLoss, HashNetLoss, get_loss, hash_centers
from acpsearch.hashing.metrics import (
    hamming_distance,
    mean_average_precision,
    precision_at_n,
    precision_recall_curve,
)
from acpsearch.hashing.models import MODEL_NAMES, HashHead, create_model, with_hash_head
from acpsearch.hashing.odh import CentreModule, OdhLoss, hash_distill, hash_proxy_loss
from acpsearch.hashing.odh_train import OdhConfig, OdhResult, train_odh
from acpsearch.hashing.train import TrainResult, checkpoint_meta, train_hash_net

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "Splits",
    "load_dataset",
    "make_splits",
    "LOSS_NAMES",
    "CSQLoss",
    "DPSHLoss",
    "HashNetLoss",
    "get_loss",
    "hash_centers",
    "hamming_distance",
    "mean_average_precision",
    "precision_at_n",
    "precision_recall_curve",
    "MODEL_NAMES",
    "HashHead",
    "create_model",
    "with_hash_head",
    "TrainResult",
    "checkpoint_meta",
    "encode",
    "evaluate",
    "train_hash_net",
    "CentreModule",
    "OdhLoss",
    "OdhConfig",
    "OdhResult",
    "hash_distill",
    "hash_proxy_loss",
    "train_odh",
    "validation_map",
    "NeighbourScore",
    "neighbour_map",
]
