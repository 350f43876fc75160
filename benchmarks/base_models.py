"""Benchmark: base hash networks on Fashion-MNIST with the CIFAR-10-style protocol.

Protocol: per class 100 queries, 500 training and 100 validation images, the rest (63,000) is the
retrieval database; seed 0. The model is chosen on validation mAP (val vs train), then test
mAP@all and mAP@1000 (queries vs database) are measured. Rows: resnet20 / vgg11 / mobilenetv2 at
16/32/64 bits with CSQ, and resnet20 with HashNet at 32 bits.

Run by hand (not part of the tests), e.g.

    nice -n 10 .venv/bin/python -m benchmarks.base_models --threads 1 --only resnet20-csq32 --epochs 40
    nice -n 10 .venv/bin/python -m benchmarks.base_models --threads 1   # the whole table

(--threads 1: on 2 shared cores two OpenMP threads spent 3x the CPU time per batch waiting for
each other, measured 1.6 vs 0.49 CPU-s per ResNet-20 batch of 128.)

Results are merged into benchmarks/results/base_models.json (one entry per row id) and rendered to
benchmarks/results/base_models.md. The resnet20 / CSQ / 32-bit checkpoint is saved to
benchmarks/cache/<row>_fmnist.pt (e.g. resnet20_csq32_fmnist.pt) for the ranking and search-quality
benchmarks.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import torch

from acpsearch.checkpoint import save_zoo_checkpoint
from acpsearch.hashing import (
    checkpoint_meta,
    create_model,
    evaluate,
    load_dataset,
    make_splits,
    train_hash_net,
)
from benchmarks.common import CACHE, PROTOCOL, RESULTS, ROOT, parser, set_threads, write_json

# row id -> (model, loss, bits, default epochs). 40 epochs for the reference row, fewer elsewhere:
# 2 CPU cores are shared by four workers, the whole table must fit in about an hour.
ROWS: dict[str, tuple[str, str, int, int]] = {  # in run order: the 32-bit rows first
    "resnet20-csq32": ("resnet20", "csq", 32, 40),
    "resnet20-hashnet32": ("resnet20", "hashnet", 32, 15),
    "vgg11-csq32": ("vgg11", "csq", 32, 12),
    "mobilenetv2-csq32": ("mobilenetv2", "csq", 32, 8),
    "resnet20-csq16": ("resnet20", "csq", 16, 20),
    "resnet20-csq64": ("resnet20", "csq", 64, 20),
    "vgg11-csq16": ("vgg11", "csq", 16, 12),
    "vgg11-csq64": ("vgg11", "csq", 64, 12),
    "mobilenetv2-csq16": ("mobilenetv2", "csq", 16, 8),
    "mobilenetv2-csq64": ("mobilenetv2", "csq", 64, 8),
    # the search-alone benchmark's second network, trained to convergence like resnet20-csq32
    "resnet56-csq32": ("resnet56", "csq", 32, 40),
}
ALIASES = {f"{m}-{b}": f"{m}-csq{b}" for m in ("resnet20", "resnet56", "vgg11", "mobilenetv2") for b in (16, 32, 64)}

# Training recipe shared by all rows (not tuned per row). Batch 32 was chosen on VALIDATION mAP
# among resnet20-csq32 trials at 40 epochs (`--trial`): batch 128 val 0.8423, batch 64 val 0.8523,
# batch 32 val 0.8664 -- with 5,000 training images, batch 128 gives only 1,560 optimizer steps.
RECIPE = {"lr": 2e-3, "batch_size": 32, "augment": True, "hflip": True, "warmup_epochs": 1, "weight_decay": 1e-4}


def run_row(row: str, splits, epochs: int, seed: int, save: bool = True) -> dict:
    name, loss, bits, _ = ROWS[row]
    c, h, _w = splits.input_shape
    torch.manual_seed(seed)
    model = create_model(name, bits=bits, in_channels=c, image_size=h)
    params = sum(p.numel() for p in model.parameters())
    print(f"== {row}: {name} {loss} {bits} bits, {epochs} epochs, {params} params", flush=True)
    res = train_hash_net(
        model,
        splits,
        loss=loss,
        epochs=epochs,
        seed=seed,
        progress=False,
        callback=lambda e, v: print(f"   epoch {e}: val mAP {v:.4f}", flush=True) and False,
        **RECIPE,
    )
    metrics = evaluate(res.model, splits, topk=1000)
    train_s = [r["train_seconds"] for r in res.history]
    out = {
        "row": row,
        "model": name,
        "loss": loss,
        "bits": bits,
        "epochs": res.epochs_run,
        "best_epoch": res.best_epoch,
        "params": params,
        "val_map": round(res.best_val_map, 4),
        "map_all": round(metrics["map_all"], 4),
        "map_1000": round(metrics["map_topk"], 4),
        "precision_at_1000": round(metrics["precision_at_n"], 4),
        "train_seconds_per_epoch": round(sum(train_s) / len(train_s), 2),
        "seconds_per_epoch_with_val": round(res.seconds_per_epoch, 2),
        "eval_seconds": metrics["seconds"],
        "seed": seed,
        "recipe": RECIPE,
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in res.history],
    }
    if save:  # every row's model: the search-quality benchmark prunes resnet20-csq32 and vgg11-csq32
        meta = checkpoint_meta(
            splits, loss, res, metrics, bits=bits, lr=RECIPE["lr"], batch_size=RECIPE["batch_size"], seed=seed
        )
        path = save_zoo_checkpoint(CACHE / f"{row.replace('-', '_')}_fmnist.pt", res.model, name, bits, c, h, meta)
        out["checkpoint"] = str(path.relative_to(ROOT))
        print(f"   saved {path}", flush=True)
    print(
        f"   -> mAP@all {out['map_all']}  mAP@1000 {out['map_1000']}  val {out['val_map']}  "
        f"{out['train_seconds_per_epoch']} s/epoch",
        flush=True,
    )
    return out


def write_markdown(results: dict, env: dict) -> None:
    lines = [
        "# Base hash networks on Fashion-MNIST",
        "",
        "Protocol: 100 query / 500 train / 100 val images per class, database = the other 63,000; seed 0. "
        "Model chosen by validation mAP (val vs train); test = 1,000 queries vs 63,000 database images, "
        "Hamming ranking with ties in (shuffled) database order.",
        f"Recipe: Adam lr {RECIPE['lr']}, batch {RECIPE['batch_size']} "
        "(rows with another batch ran the earlier recipe), "
        "1 warm-up epoch + cosine to 0, weight decay "
        f"{RECIPE['weight_decay']}, random crop (pad 3) + horizontal flip. Machine: {env.get('machine', '')}.",
        "",
        "| model | loss | bits | batch | epochs (best) | params | val mAP | test mAP@all | test mAP@1000 | P@1000 "
        "| s/epoch (train) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        r = results.get(row)
        if not r:
            continue
        lines.append(
            f"| {r['model']} | {r['loss']} | {r['bits']} | {r.get('recipe', {}).get('batch_size', '?')} | "
            f"{r['epochs']} ({r['best_epoch']}) | {r['params']:,} | "
            f"{r['val_map']:.4f} | {r['map_all']:.4f} | {r['map_1000']:.4f} | {r['precision_at_1000']:.4f} | "
            f"{r['train_seconds_per_epoch']:.1f} |"
        )
    lines += [
        "",
        f"s/epoch is wall time with {env.get('threads')} torch thread(s) on 2 CPU cores shared with "
        "other jobs (load average 3-12 during the runs), so it is an upper bound, not a speed measurement.",
        "Command: `nice -n 10 .venv/bin/python -m benchmarks.base_models --threads 1 [--only ROW,...] [--epochs N]`",
        "",
    ]
    (RESULTS / "base_models.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, full=False)
    ap.add_argument("--only", default="", help=f"comma-separated row ids: {', '.join(ROWS)} (or e.g. resnet20-32)")
    ap.add_argument("--epochs", type=int, default=None, help="override the epochs of the selected rows")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    ap.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    ap.add_argument(
        "--trial",
        default="",
        help="recipe trial: write only benchmarks/cache/rows/ROW-TRIAL.json, "
        "leave the results table alone (recipes are compared on validation mAP, not test)",
    )
    args = ap.parse_args(argv)
    if args.lr is not None:
        RECIPE["lr"] = args.lr
    if args.batch_size is not None:
        RECIPE["batch_size"] = args.batch_size
    rows = [ALIASES.get(r.strip(), r.strip()) for r in args.only.split(",") if r.strip()] or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown row(s) {unknown}; known: {', '.join(ROWS)}")
    if args.threads:
        set_threads(args.threads)
    ds = load_dataset("fashion-mnist", args.data_dir)
    splits = make_splits(ds, **PROTOCOL)
    print(f"splits {splits.sizes()}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "base_models.json"
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, "
        f"torch {torch.__version__}",
    }
    mine: dict[str, dict] = {}
    for row in rows:
        epochs = args.epochs or ROWS[row][3]
        t0 = time.time()
        out = run_row(row, splits, epochs, args.seed, save=not args.trial)
        out["wall_seconds"] = round(time.time() - t0, 1)
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out["threads"] = torch.get_num_threads()
        mine[row] = out
        (CACHE / "rows").mkdir(parents=True, exist_ok=True)
        (CACHE / "rows" / f"{row}{'-' + args.trial if args.trial else ''}.json").write_text(
            json.dumps(out, indent=1) + "\n"
        )
        if args.trial:
            continue
        # re-read and merge right before writing: several invocations may run side by side
        doc = json.loads(json_path.read_text()) if json_path.exists() else {}
        doc.setdefault("results", {}).update(mine)
        doc.update(protocol=PROTOCOL, dataset="fashion-mnist", env=env)
        write_json(json_path, doc, indent=1)
        write_markdown(doc["results"], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
