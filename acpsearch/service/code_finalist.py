"""The code bits of a joint study's finalist (`budget.bits`: the hash layer's outputs are a group of
the channel graph, so a strategy keeps some of them).

A CSQ base was trained towards class centres; a finalist with fewer bits must keep training
towards the base's centres restricted to its kept bits, as `acpsearch shorten` does, not towards
centres drawn anew for the shorter length (which its code has never seen: fine-tuning then starts
from scratch on the head). And the kept bits must not make two class centres coincide (Hadamard
centres repeat columns): when the strategy's own choice (the space criterion's order) would, the
kept bits are moved to distinct columns by the same guard as `acpsearch shorten`. The count kept,
and so the cost, never changes. Pair losses (DPSH, HashNet) have no centres: nothing to do."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from torch import nn


def centre_aware_code(
    graph: Any, strategy: Any, record: dict[str, Any], loss: str, num_classes: int
) -> tuple[dict[str, Any], nn.Module | None]:
    """(the pruning record, guarded where needed; the CSQ loss on the kept base centres), or
    (record unchanged, None) when the code keeps every bit, has no group, or the loss has no centres."""
    from acpsearch.codelength import base_centres, code_loss, guard_keep
    from acpsearch.pruning.criteria import channel_importance

    grp = graph.code_group
    if grp is None or loss.lower() != "csq":
        return record, None
    ent = record["groups"][grp]
    full, kept = int(ent["channels"]), [int(i) for i in ent["kept"]]
    if len(kept) >= full:
        return record, None
    centres = base_centres("csq", full, num_classes)
    assert centres is not None  # csq
    imp = np.asarray(channel_importance(graph, grp, strategy.criterion, strategy.seed), dtype=np.float64)
    order = sorted(kept, key=lambda j: (-imp[j], j)) + sorted(
        (j for j in range(full) if j not in set(kept)), key=lambda j: (-imp[j], j)
    )
    keep, guarded = guard_keep(order, centres, len(kept))
    if guarded:
        record = copy.deepcopy(record)
        record["groups"][grp]["kept"] = keep
    return record, code_loss("csq", len(keep), num_classes, centres[:, keep])
