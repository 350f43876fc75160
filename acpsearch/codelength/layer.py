"""Where a network's code comes from: its hash layer, the continuous code the losses see, and the
class centres of the code.

The hash layer is the ``nn.Linear`` whose outputs are the network's raw K-dim code: the module
named by the caller (a checkpoint's pruning record or a spec's ``model.hash_layer``), else the
module called ``hash_layer`` (every zoo network and ``HashHead``), else the last ``nn.Linear``
registered in the model. Surgery checks afterwards that the model's output width follows the layer,
so a layer that is not the last one (e.g. followed by a BatchNorm1d) is refused, not mangled."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.hashing.losses import hash_centers

CONTINUOUS_TANH = ("csq", "hashnet")


def find_hash_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """(dotted name, module) of the model's hash layer; one SpecError line when there is none."""
    if name:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise SpecError(f"hash_layer: the model has no module {name!r}") from None
        if not isinstance(mod, nn.Linear):
            raise SpecError(f"hash_layer: {name!r} is a {type(mod).__name__}, not an nn.Linear")
        return name, mod
    own = getattr(model, "hash_layer", None)
    if isinstance(own, nn.Linear):
        return "hash_layer", own
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SpecError(f"hash_layer: model {type(model).__name__} has no nn.Linear hash layer")
    return linears[-1]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the dotted `name` is in `model` (in place)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def continuous(h: torch.Tensor, loss: str) -> torch.Tensor:
    """The continuous code a loss works on: tanh(h) for csq / hashnet, the raw h for dpsh."""
    return torch.tanh(h) if loss.lower() in CONTINUOUS_TANH else h


def base_centres(loss: str, bits: int, num_classes: int) -> torch.Tensor | None:
    """The hash centres a base network was trained towards: CSQ's (as `get_loss` builds them,
    seed 0), None for the pair losses."""
    if loss.lower() != "csq":
        return None
    return hash_centers(num_classes, bits, seed=0)


def empirical_centres(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, K) +-1 class centres of a continuous code: sign of the class mean (multi-hot: items with
    the label); a class without items gets +1s."""
    y = labels.long()
    onehot = (y > 0).float() if y.ndim == 2 else torch.nn.functional.one_hot(y, num_classes).float()
    sums = onehot.T @ z.float()
    return torch.where(sums >= 0, 1.0, -1.0)


def min_centre_distance(centres: torch.Tensor | None) -> int | None:
    """Smallest Hamming distance between two class centres (None without centres or with one class)."""
    if centres is None or centres.shape[0] < 2:
        return None
    c = centres.float()
    d = (c.shape[1] - c @ c.T) / 2
    d.fill_diagonal_(float("inf"))
    return int(d.min().item())


def column_keys(centres: torch.Tensor) -> list[tuple[bytes, bool]]:
    """Per bit: a key equal for duplicate columns (a column and its negation separate the classes
    alike, so they share a key) and whether the column is constant over the classes."""
    c = centres.detach().cpu().numpy().astype(np.int8)
    keys = []
    for j in range(c.shape[1]):
        col = c[:, j] * (1 if c[0, j] >= 0 else -1)
        keys.append((col.tobytes(), bool(np.all(col == col[0]))))
    return keys


def code_loss(loss: str, bits: int, num_classes: int, centres: torch.Tensor | None = None) -> nn.Module:
    """The hash loss at `bits` bits; CSQ takes the given centres (the kept / merged base centres)
    instead of drawing new ones, so a shortened network is trained towards its own columns."""
    from acpsearch.hashing.losses import get_loss

    module = get_loss(loss, bits, num_classes)
    if loss.lower() == "csq":
        if centres is None:
            centres = hash_centers(num_classes, bits, seed=0)
        if tuple(centres.shape) != (num_classes, bits):
            raise SpecError(f"centres: expected shape ({num_classes}, {bits}), got {tuple(centres.shape)}")
        module.centers = centres.detach().clone().float()
    return module
