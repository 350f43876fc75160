"""A finalist's cut with `finetune.sparsity`: the unpruned network trained briefly with the group
penalty on the channels the finalist removes (acpsearch.search.sparsity), then cut by the channel
choice made before the penalty (the pruning record of the base network's weights)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch


def cut(
    base: Any, graph: Any, strategy: Any, record: dict[str, Any], ex: torch.Tensor, spec: Any, splits: Any, device: Any
) -> tuple[Any, dict[str, float] | None]:
    """(the pruned network on `device`, the sparsity result or None without finetune.sparsity)."""
    from acpsearch.pruning import apply_record, prune
    from acpsearch.search.sparsity import sparsify

    sp = spec.finetune.sparsity
    if sp is None:
        net = prune(base, strategy, ex)
        made: dict[str, Any] = getattr(net, "acp_pruning_record", {})
        if made.get("groups") != record["groups"]:  # the record moved some code bits
            net = apply_record(base, record, ex)
        return net.to(device), None
    # the record's channels: the strategy's choice on the base network's weights (a joint study's
    # code bits possibly moved off coinciding class centres)
    kept = {name: np.asarray(ent["kept"], dtype=np.intp) for name, ent in record["groups"].items()}
    work = copy.deepcopy(base).to(device)
    res = sparsify(
        work,
        graph,
        kept,
        splits,
        loss=spec.train.loss,
        steps=int(sp.steps),
        weight=float(sp.weight),
        lr=float(sp.lr),
        batch_size=int(spec.finetune.batch_size),
        seed=int(spec.search.seed),
    )
    net = apply_record(work.to("cpu").eval(), record, ex)  # traced on the CPU, like `prune`
    return net.to(device), {k: round(float(v), 6) for k, v in res.items()}
