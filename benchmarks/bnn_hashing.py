"""Binary hash networks on Fashion-MNIST: does ODH beat CSQ on the same one-bit network?

Rows (32 bits by default, every row trained --epochs epochs with the same lr and batch size, the
best epoch chosen by VALIDATION mAP (val queries vs the training set); the test split is only
reported):

    float_csq        resnet20 (real-valued) + CSQ (Hadamard centres)
    bnn_csq          bnn_resnet20 + CSQ
    bnn_hashnet      bnn_resnet20 + HashNet (pairwise)
    bnn_odh          bnn_resnet20 + ODH (learned centres from a teacher's class matrix, two stages)
    abl_fixed_2st    ablation: ODH's proxy loss and two stages, but fixed Hadamard centres
    abl_adapt_1st    ablation: learned centres, stage 1 only (no aggregation stage)

CSQ / HashNet rows train with the crop-and-flip augmentation; ODH rows with ODH's weak / strong
views (crop, flip, noise). The ODH teacher is a real-valued --teacher-model classifier trained
--teacher-epochs epochs on the same training split (selected on validation top-1), once per seed
and shared by the two rows that learn centres. Seeds change the split, the initial weights and the
batch order. A gain of ODH over bnn_csq is claimed only when the difference of the seed means
exceeds two standard errors of that difference (sqrt(sd_a^2/n + sd_b^2/n)).

    PYTHONPATH=. python -m benchmarks.bnn_hashing --quick                    # CPU smoke, ~1-2 min
    PYTHONPATH=. python -m benchmarks.bnn_hashing --device cuda --jobs 6 --threads 2 --epochs 30
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, eta, log, parser, seed_all, set_threads, write_json

ROWS: dict[str, dict[str, Any]] = {
    "float_csq": {"model": "resnet20", "loss": "csq"},
    "bnn_csq": {"model": "bnn_resnet20", "loss": "csq"},
    "bnn_hashnet": {"model": "bnn_resnet20", "loss": "hashnet"},
    "bnn_odh": {"model": "bnn_resnet20", "loss": "odh", "adaptive": True, "two_stage": True},
    "abl_fixed_2st": {"model": "bnn_resnet20", "loss": "odh", "adaptive": False, "two_stage": True},
    "abl_adapt_1st": {"model": "bnn_resnet20", "loss": "odh", "adaptive": True, "two_stage": False},
}


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes; they share the GPU)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30, help="epochs of every row")
    p.add_argument("--teacher-epochs", type=int, default=None, help="ODH teacher classifier (default epochs // 4)")
    p.add_argument("--teacher-model", default="resnet20", help="zoo classifier of the ODH teacher")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--query-per-class", type=int, default=100)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--database", type=int, default=None, help="cap on the retrieval database (default: all)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the system's)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows")
    p.add_argument("--quick", action="store_true", help="CPU smoke: 2 seeds, 2 epochs, a small split")
    p.add_argument("--out", default=str(RESULTS / "bnn_hashing.json"))
    p.add_argument("--md", default=None, help="markdown table (default: --out with .md)")
    return p


def apply_quick(args: argparse.Namespace) -> None:
    args.seeds, args.epochs, args.teacher_epochs = min(args.seeds, 2), 2, 1
    args.query_per_class, args.train_per_class, args.val_per_class, args.database = 5, 20, 5, 500
    args.batch_size = 64


# --- work done in the job processes -------------------------------------------------------------
_SPLITS: dict[tuple[Any, ...], Any] = {}


def _splits(cfg: dict[str, Any], seed: int) -> Any:
    key = (seed, cfg["query_per_class"], cfg["train_per_class"], cfg["val_per_class"], cfg["database"])
    if key not in _SPLITS:
        from acpsearch.hashing import load_dataset, make_splits

        sp = make_splits(
            load_dataset("fashion-mnist", cfg["data_dir"]),
            cfg["query_per_class"],
            cfg["train_per_class"],
            cfg["val_per_class"],
            seed=seed,
        )
        if cfg["database"]:
            x, y = sp.database
            sp = dataclasses.replace(sp, database=(x[: cfg["database"]], y[: cfg["database"]]))
        _SPLITS[key] = sp
    return _SPLITS[key]


def _device(cfg: dict[str, Any]) -> Any:
    import torch

    return torch.device("cuda" if cfg["device"] == "cuda" else "cpu")


def teacher_job(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The ODH teacher of one seed: a classifier's class matrix (as a list) and its val top-1."""
    set_threads(cfg["threads"])
    seed_all(seed)
    from acpsearch.classification import class_matrix, train_teacher

    t0 = time.perf_counter()
    sp = _splits(cfg, seed)
    model, res = train_teacher(
        cfg["teacher_model"],
        sp,
        epochs=cfg["teacher_epochs"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        seed=seed,
        device=_device(cfg),
        hflip=True,
    )
    w = class_matrix(model)
    return {"seed": seed, "W": w.tolist(), "val_top1": res.best_val_top1, "seconds": time.perf_counter() - t0}


def row_job(cfg: dict[str, Any], row: str, seed: int, w: list[list[float]] | None) -> dict[str, Any]:
    """Train and evaluate one row for one seed."""
    set_threads(cfg["threads"])
    seed_all(seed)
    import torch

    from acpsearch.hashing import OdhConfig, create_model, evaluate, train_hash_net, train_odh

    spec = ROWS[row]
    t0 = time.perf_counter()
    sp = _splits(cfg, seed)
    c, h, _w = sp.input_shape
    net = create_model(spec["model"], cfg["bits"], in_channels=c, image_size=h).to(_device(cfg))
    common = {"epochs": cfg["epochs"], "lr": cfg["lr"], "batch_size": cfg["batch_size"], "seed": seed}
    extra: dict[str, Any] = {}
    if spec["loss"] == "odh":
        odh_cfg = OdhConfig(adaptive=spec["adaptive"], two_stage=spec["two_stage"])
        matrix = torch.tensor(w) if w is not None else None
        out = train_odh(net, sp, matrix, odh_cfg, progress=False, hflip=True, **common)
        res = out.train
        extra = {"min_centre_distance": out.centre_distance[res.best_epoch - 1], "stage1_epochs": out.stage1_epochs}
    else:
        res = train_hash_net(net, sp, loss=spec["loss"], progress=False, augment=True, hflip=True, **common)
    m = evaluate(res.model, sp)
    return {
        "row": row,
        "seed": seed,
        **spec,
        "map_all": m["map_all"],
        "map_topk": m["map_topk"],
        "topk": m["topk"],
        "val_map": res.best_val_map,
        "best_epoch": res.best_epoch,
        "epochs": res.epochs_run,
        "seconds": round(time.perf_counter() - t0, 1),
        **extra,
    }


# --- the driver -----------------------------------------------------------------------------------
def _stats(vals: list[float]) -> tuple[float, float]:
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]], rows: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        if not mine:
            continue
        entry = {"n": len(mine), "model": ROWS[row]["model"], "loss": ROWS[row]["loss"]}
        for key in ("map_all", "map_topk", "val_map", "seconds"):
            entry[key], entry[key + "_sd"] = _stats([float(r[key]) for r in mine])
        table[row] = entry
    verdict: dict[str, Any] = {}
    a, b = table.get("bnn_odh"), table.get("bnn_csq")
    if a and b:
        diff = a["map_all"] - b["map_all"]
        se = math.sqrt(a["map_all_sd"] ** 2 / a["n"] + b["map_all_sd"] ** 2 / b["n"])
        verdict["odh_minus_bnn_csq"] = diff
        verdict["two_se"] = 2 * se
        verdict["odh_gain_claimed"] = bool(diff > 2 * se and a["n"] > 1 and b["n"] > 1)
    f = table.get("float_csq")
    if f and b:
        verdict["float_minus_bnn_csq"] = f["map_all"] - b["map_all"]
    return {"rows": table, "verdict": verdict}


def markdown(doc: dict[str, Any]) -> str:
    a = doc["args"]
    lines = [
        f"# Binary hash networks on Fashion-MNIST ({a['bits']} bits, {a['epochs']} epochs per row)",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Protocol per class: {a['query_per_class']} queries / {a['train_per_class']} train / "
        f"{a['val_per_class']} val; database: {doc['database_size']} images; seeds: {a['seeds']}; "
        f"device: {a['device']}. Selection: best epoch by validation mAP. Test mAP is mean +- sd over seeds.",
        "",
        "| row | network | loss | test mAP@all | test mAP@1000 | val mAP | s / run | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, e in doc["summary"]["rows"].items():
        lines.append(
            f"| {row} | {e['model']} | {e['loss']} | {e['map_all']:.4f} +- {e['map_all_sd']:.4f} | "
            f"{e['map_topk']:.4f} +- {e['map_topk_sd']:.4f} | {e['val_map']:.4f} | {e['seconds']:.0f} | {e['n']} |"
        )
    v = doc["summary"]["verdict"]
    lines.append("")
    if "odh_minus_bnn_csq" in v:
        claim = "a gain (beyond two standard errors)" if v["odh_gain_claimed"] else "NOT a gain: did not reproduce"
        diff, two_se = v["odh_minus_bnn_csq"], v["two_se"]
        lines.append(f"ODH - binary CSQ: {diff:+.4f} mAP@all (two standard errors: {two_se:.4f}): {claim}.")
    if "float_minus_bnn_csq" in v:
        lines.append(f"Float - binary (both CSQ): {v['float_minus_bnn_csq']:+.4f} mAP@all.")
    if doc.get("teachers"):
        t = ", ".join(f"{x['val_top1']:.3f}" for x in doc["teachers"])
        lines.append(f"ODH teachers ({a['teacher_model']}, {a['teacher_epochs']} epochs): val top-1 {t}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    args = build_parser().parse_args(argv)
    if args.quick:
        apply_quick(args)
    if args.teacher_epochs is None:
        args.teacher_epochs = max(1, args.epochs // 4)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; known: {', '.join(ROWS)}")
    cfg = {k: getattr(args, k) for k in vars(args)}
    out = Path(args.out)
    md = Path(args.md) if args.md else out.with_suffix(".md")
    seeds = list(range(args.seeds))
    needs_teacher = [r for r in rows if ROWS[r].get("adaptive")]
    total = len(rows) * len(seeds) + (len(seeds) if needs_teacher else 0)
    doc: dict[str, Any] = {
        "command": "python -m benchmarks.bnn_hashing " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": cfg,
        "runs": [],
        "teachers": [],
    }
    doc["database_size"] = int(_splits(cfg, 0).database[0].shape[0])
    t0 = time.perf_counter()
    done = 0
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        pending: dict[cf.Future[dict[str, Any]], str] = {}
        # with a teacher, a seed's rows are queued when its teacher is done: seed by seed, complete
        for s in seeds:
            if needs_teacher:
                pending[pool.submit(teacher_job, cfg, s)] = "teacher"
            else:
                for r in rows:
                    pending[pool.submit(row_job, cfg, r, s, None)] = r
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                kind = pending.pop(fut)
                res = fut.result()
                done += 1
                if kind == "teacher":
                    doc["teachers"].append({k: v for k, v in res.items() if k != "W"})
                    for r in rows:
                        w = res["W"] if r in needs_teacher else None
                        pending[pool.submit(row_job, cfg, r, res["seed"], w)] = r
                    where = f"[{done}/{total}, {eta(done, total, t0)}]"
                    log(f"teacher seed {res['seed']}: val top-1 {res['val_top1']:.4f}  {where}")
                else:
                    doc["runs"].append(res)
                    log(
                        f"{kind} seed {res['seed']}: test mAP@all {res['map_all']:.4f}, val {res['val_map']:.4f}, "
                        f"{res['seconds']:.0f}s  [{done}/{total}, {eta(done, total, t0)}]"
                    )
                doc["summary"] = summarise(doc["runs"], rows)
                doc["seconds"] = round(time.perf_counter() - t0, 1)
                write_json(out, doc)  # partial results as they come
    md.write_text(markdown(doc))
    log(f"wrote {out} and {md} in {time.perf_counter() - t0:.0f}s")
    return doc


if __name__ == "__main__":
    main()
