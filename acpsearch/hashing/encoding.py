"""Encoding and evaluation of hash networks: a network's input layout and device, its codes for a
tensor or a streamed ImageSource (batch by batch, on the CPU at the end), validation mAP (val
queries against the training split) and test retrieval metrics (query against database)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing.data import Splits, is_source, iter_batches
from acpsearch.hashing.metrics import mean_average_precision, precision_at_n


def raw_output(out: Any) -> torch.Tensor:
    """The hash output of a forward: the tensor itself or the last element of a tuple/list."""
    if isinstance(out, (tuple, list)):
        out = out[-1]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise SpecError("model: forward must return an (N, K) tensor or a tuple ending in one")
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """`model.to(memory_format=...)` in place (torch accepts the keyword; its type stubs do not list it)."""
    kwargs: dict[str, Any] = {"memory_format": memory_format}
    return model.to(**kwargs)


def to_input(x: torch.Tensor, channels_last: bool, device: torch.device | None = None) -> torch.Tensor:
    if device is not None and x.device != device:
        x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def encode(model: nn.Module, X: Any, batch_size: int = 512, channels_last: bool = True) -> torch.Tensor:
    """Binary codes (+1/-1 float, (n, K)) of images X in eval mode; sign(0) counts as +1.

    X is a tensor (N, C, H, W) or an ImageSource (decoded per batch by a DataLoader: memory holds
    the codes and a batch, not the images)."""
    was_training = model.training
    model.eval()
    dev = model_device(model)
    outs = []
    n = int(X.shape[0])
    chunks: list[Any] = (
        [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
        if is_source(X)
        else [slice(i, i + batch_size) for i in range(0, n, batch_size)]
    )
    try:
        for xb in iter_batches(X, chunks):
            h = raw_output(model(to_input(xb, channels_last, dev)))
            outs.append(torch.where(h >= 0, 1.0, -1.0).cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.zeros(0, 0)
    return torch.cat(outs)


def validation_map(model: nn.Module, splits: Splits, batch_size: int = 512, channels_last: bool = True) -> float:
    """mAP of the val queries against the training set as the database (model selection)."""
    if splits.val[0].shape[0] == 0:
        return float("nan")
    qv = encode(model, splits.val[0], batch_size, channels_last)
    dt = encode(model, splits.train[0], batch_size, channels_last)
    return mean_average_precision(qv, dt, splits.val[1], splits.train[1])


def evaluate(
    model: nn.Module,
    splits: Splits,
    topk: int | None = None,
    precision_n: int = 1000,
    batch_size: int = 512,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Test mAP@all and mAP@topk (queries vs database), precision@N, validation mAP.

    `topk=None` uses min(1000, database size), the usual mAP@1000."""
    n_db = int(splits.database[0].shape[0])
    k = min(1000, n_db) if topk is None else int(topk)
    if k < 1:
        raise SpecError(f"topk: must be >= 1, got {topk}")
    model_mode = model.training
    t0 = time.perf_counter()
    q = encode(model, splits.query[0], batch_size, channels_last)
    db = encode(model, splits.database[0], batch_size, channels_last)
    t_enc = time.perf_counter() - t0
    ql, dl = splits.query[1], splits.database[1]
    res = {
        "map_all": mean_average_precision(q, db, ql, dl),
        "map_topk": mean_average_precision(q, db, ql, dl, topk=k),
        "topk": k,
        "precision_at_n": precision_at_n(q, db, ql, dl, n=precision_n),
        "precision_n": int(min(precision_n, n_db)),
        "val_map": validation_map(model, splits, batch_size, channels_last),
        "bits": int(q.shape[1]),
        "n_query": int(q.shape[0]),
        "n_database": n_db,
        "encode_seconds": round(t_enc, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    model.train(model_mode)
    return res


@torch.no_grad()
def probe(model: nn.Module, x: torch.Tensor, channels_last: bool) -> Any:
    was = model.training
    model.eval()
    try:
        return model(to_input(x, channels_last, model_device(model)))
    finally:
        model.train(was)
