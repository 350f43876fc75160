"""Does a different fine-tuning recipe change which 50%-FLOPs structure wins?

Fine-tunes fixed pruned structures of the search-quality base with one recipe and prints val and
test mAP: `acp` (acpsearch's 50% winner from benchmarks/results/search_quality.json), `tp`
(Torch-Pruning global magnitude at the same budget) or `uniform` (uniform L1). The recipe is
chosen on VALIDATION mAP, the test column only reports.

    .venv/bin/python -m benchmarks.experiments.finetune_recipe --structure acp --batch-size 32 --epochs 4 [--augment]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from acpsearch.graph import ChannelGraph
from acpsearch.hashing import evaluate, load_dataset, make_splits, train_hash_net
from acpsearch.pruning import PruningStrategy, prune
from benchmarks import search_quality as sq
from benchmarks.common import BASE, RESULTS, load_base, parser, set_threads


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--base", type=Path, default=BASE)
    ap.add_argument("--results", type=Path, default=RESULTS / "search_quality.json")
    ap.add_argument("--key", default="resnet20@0.5", help="net@budget block of the search-quality results")
    ap.add_argument("--structure", choices=["acp", "tp", "uniform"], required=True)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--augment", action="store_true", help="random crop + horizontal flip (the base recipe)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distill", type=float, default=0.0, help="weight of the code distillation from the base")
    args = ap.parse_args(argv)
    set_threads(1)
    base = load_base(args.base)
    block = json.loads(args.results.read_text())["runs"][args.key]
    budget = float(block["budget"])
    splits = make_splits(load_dataset("fashion-mnist"))
    ex = torch.zeros(1, *splits.input_shape)
    g = ChannelGraph.from_model(base, ex)
    if args.structure == "acp":
        net = prune(base, PruningStrategy(g, block["methods"]["acpsearch"]["ratios"], criterion="l1"), ex)
    elif args.structure == "tp":
        net = sq.tp_global_magnitude(base, ex, budget)
    else:
        net = prune(base, PruningStrategy.uniform(g, keep=sq.uniform_keep(g, budget), criterion="l1"), ex)
    t0 = time.perf_counter()
    res = train_hash_net(
        net,
        splits,
        loss="csq",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
        num_threads=1,
        augment=args.augment,
        hflip=args.augment,
        teacher=load_base(args.base) if args.distill else None,
        distill=args.distill,
    )
    ev = evaluate(res.model, splits)
    print(
        json.dumps(
            {
                "structure": args.structure,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "epochs": args.epochs,
                "augment": args.augment,
                "distill": args.distill,
                "seed": args.seed,
                "val_map": round(res.best_val_map, 4),
                "test_map": round(float(ev["map_all"]), 4),
                "val_per_epoch": [round(h["val_map"], 4) for h in res.history],
                "seconds": round(time.perf_counter() - t0),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
