"""Can a search beat the global-magnitude allocation at a mild budget? Prepares candidate folders
(structure_sweep.py's format: structures.pt + meta.json, every candidate its own method so that
`structure_sweep.py run --seeds S` fine-tunes each with S seeds) around the allocation that
`search.anchor: magnitude` adds to a study.

    --kind region4   the allocation (exact counts, and bisected in multiples of 4) + 160 strategies of
                     the budget's DynamicSpace narrowed to one grid step around it (round_to 4),
                     ranked by code agreement after BN recalibration (the `effect` encoder's signal):
                     top 4, 3 random, bottom 2
    --kind region1   the same neighbourhood with exact counts (round_to 1, step 0.05): top 4
    --kind whole1    110 strategies of the whole space (round_to 1): top 4 by code agreement
    --kind criteria  allocations by l1 / l2 / bn_scale / fpgm importance, and the l1 allocation with
                     its channels picked by l2 / bn_scale / fpgm

Results of the session that added the anchor: benchmarks/results/anchor_neighbourhood.jsonl
(kinds region4, region1, whole1) and structure_sweep_anchor.jsonl (criteria, folder .gpu/xc);
docs/results/journal.md (2026-11-26) and docs/results/magnitude_anchor.md.

    .venv/bin/python -m benchmarks.experiments.anchor_neighbourhood --kind region4 --dir .gpu/x50
    python3 -m benchmarks.structure_sweep run --dir .gpu/x50 --data .gpu/fmnist --recipes ft4 --seeds 5 \\
        --jobs 12 --out $OUT/x50.jsonl     # every candidate is its own method
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import BASE, PROTOCOL, load_base, parser, set_threads


def main(argv: list[str] | None = None) -> int:
    from acpsearch.graph import ChannelGraph
    from acpsearch.hashing import load_dataset, make_splits
    from acpsearch.pruning import PruningStrategy, measure_cost, prune
    from acpsearch.pruning.probe import FunctionalProbe
    from acpsearch.search.space import Budget, DynamicSpace
    from benchmarks import structure_sweep as ss

    ap = parser(__doc__)
    ap.add_argument("--kind", required=True, choices=["region4", "region1", "whole1", "criteria"])
    ap.add_argument("--base", type=Path, default=BASE)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    set_threads(args.threads)
    base = load_base(args.base)
    splits = make_splits(load_dataset("fashion-mnist"), **PROTOCOL)
    ex = torch.zeros(1, *splits.input_shape)
    g = ChannelGraph.from_model(base, ex)
    full = g.cost()

    def fits(s: Any) -> bool:
        return g.cost(s).flops <= args.budget * full.flops

    anchor = PruningStrategy.global_magnitude(g, fits, criterion="l1", min_keep=0.2, round_to=1)
    assert anchor is not None
    cands: dict[str, Any] = {}
    if args.kind == "criteria":
        for crit in ("l1", "l2", "bn_scale", "fpgm"):
            cands[f"gm_{crit}"] = PruningStrategy.global_magnitude(g, fits, criterion=crit, min_keep=0.2)
        for crit in ("l2", "bn_scale", "fpgm"):
            cands[f"gm_l1_ch_{crit}"] = PruningStrategy(g, anchor.ratios, criterion=crit, round_to=1)
    else:
        Xtr, Xval = splits.train[0], splits.val[0]
        gen = torch.Generator().manual_seed(0)
        n_calib, n_probe = (2560, 1000) if args.kind == "region4" else (1280, 500)
        probe = FunctionalProbe(base, ex, Xtr[torch.randperm(len(Xtr), generator=gen)[:n_calib]], Xval[:n_probe])
        if args.kind == "region4":
            space = DynamicSpace(g, Budget(flops=args.budget), step=0.1, min_keep=0.2).narrow([anchor.ratios])
            n, prefix = 160, "reg_"
            cands["gmag_rt1"] = anchor
            # the allocation bisected with the space's rounding (multiples of 4) inside the budget
            cands["gmag_rt4"] = PruningStrategy.global_magnitude(g, fits, criterion="l1", min_keep=0.2, round_to=4)
        elif args.kind == "region1":
            space = DynamicSpace(g, Budget(flops=args.budget), step=0.05, min_keep=0.2, round_to=1)
            space = space.narrow([anchor.ratios], margin=0.1, min_step=0.025)
            n, prefix = 110, "region_"
        else:
            space = DynamicSpace(g, Budget(flops=args.budget), step=0.1, min_keep=0.2, round_to=1)
            n, prefix = 110, "whole_"
        unique: dict[tuple[Any, ...], Any] = {}
        for s in space.sample_many(n, random.Random(0)):
            unique.setdefault(tuple(sorted(s.kept.items())), s)
        pool = list(unique.values())
        t0 = time.perf_counter()
        agree = probe.agreement(pool)
        print(
            f"{len(pool)} strategies, code agreement {agree.min():.4f}-{agree.max():.4f} "
            f"({time.perf_counter() - t0:.0f} s); the allocation: {probe.agreement([anchor])[0]:.4f}"
        )
        order = np.argsort(-agree)
        for i in range(4):
            cands[f"{prefix}top{i}"] = pool[order[i]]
        if args.kind == "region4":
            for i, j in enumerate(random.Random(1).sample(list(order[4:-2]), 3)):
                cands[f"reg_rand{i}"] = pool[j]
            for i in range(2):
                cands[f"reg_bot{i}"] = pool[order[-1 - i]]
    nets: dict[str, torch.nn.Module] = {}
    meta: dict[str, Any] = {
        "budget": args.budget,
        "model": "resnet20",
        "base": "base.pt",
        "methods": {},
        "candidates": {},
        "top": 1,
        "base_eval": {},
        "kind": args.kind,
    }
    for name, s in cands.items():
        net = prune(base, s, ex)
        cost = measure_cost(net, ex)
        nets[name] = net
        meta["candidates"][name] = {
            "method": name,
            "flops_ratio": cost.flops / full.flops,
            "params_ratio": cost.params / full.params,
            "kept": dict(s.kept),
            "criterion": s.criterion,
            "round_to": s.round_to,
            "agreement": float(probe.agreement([s])[0]) if args.kind != "criteria" else None,
        }
        meta["methods"][name] = [name]
    ss._write_folder(args.dir, args.base, nets, meta)
    shutil.rmtree(args.dir / "fmnist")  # one shared data copy travels (structure_sweep run --data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
