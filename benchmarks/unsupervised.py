"""Unsupervised hashing on Fashion-MNIST: LSH, PCAH, ITQ, BiHalf, the label-free tags alone, and the
faithful LAGNH (public-code variant) with tags and without, at 16/32/64 bits, mAP@1000 and mAP@all.

Every method sees the same features (the training-normalised pixels, flattened) and is fitted on the
5,000 training images without labels; the 1,000 queries are ranked against the 63,000-image
database by Hamming distance and scored with the labels. The tags are the multi-granularity k-means
memberships (10 + 20 + 40 clusters of the training features; no detector is available offline).
"The tags alone" ranks by tag overlap (Hamming distance of the 70-bit tag vectors).

    python -m benchmarks.unsupervised --quick                      # CPU smoke, about 2 minutes
    python -m benchmarks.unsupervised --device cuda --seeds 3 --lagnh-epochs 100   # GPU

Partial results are written after every row to --out (default benchmarks/results/unsupervised.json).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import PROTOCOL, RESULTS, eta, fmnist_splits, log, parser, set_threads, write_json


def _args(argv: list[str] | None) -> Any:
    p = parser(__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seeds", type=int, default=3, help="seeds of every learned row")
    p.add_argument("--bits", default="16,32,64")
    p.add_argument("--methods", default="lsh,pcah,itq,bihalf,tags,lagnh,lagnh-notags")
    p.add_argument("--variant", default="code", choices=["code", "paper"], help="LAGNH variant")
    p.add_argument("--lagnh-epochs", type=int, default=100)
    p.add_argument("--lagnh-batch", type=int, default=1024)
    p.add_argument("--lagnh-hidden", type=int, default=1024)
    p.add_argument("--lagnh-embed", type=int, default=512)
    p.add_argument("--lagnh-lr", type=float, default=1e-4)
    p.add_argument("--bihalf-epochs", type=int, default=60)
    p.add_argument("--database", type=int, default=None, help="cap on database images (default: all 63,000)")
    p.add_argument("--quick", action="store_true", help="smoke: 32 bits, 1 seed, few epochs, 10,000 database images")
    p.add_argument("--out", default=str(RESULTS / "unsupervised.json"))
    a = p.parse_args(argv)
    a.out_path = Path(a.out)
    if a.quick:
        a.bits, a.seeds, a.lagnh_epochs, a.bihalf_epochs = "32", 1, 3, 10
        a.lagnh_hidden, a.lagnh_embed, a.lagnh_batch = 256, 128, 512
        a.database = a.database or 10_000
    return a


def _lagnh_rows(a: Any, feats: dict[str, Any], tags: dict[str, Any], bits: int, seed: int, use_tags: bool) -> Any:
    from acpsearch.hashing.unsupervised import LAGNHConfig, fit_lagnh
    from acpsearch.hashing.unsupervised.table import score

    cfg = LAGNHConfig(
        bits=bits,
        variant=a.variant,
        use_tags=use_tags,
        embed=a.lagnh_embed,
        hidden=a.lagnh_hidden,
        epochs=a.lagnh_epochs,
        batch=a.lagnh_batch,
        lr=a.lagnh_lr,
        seed=seed,
    )
    start = time.perf_counter()
    every = max(1, a.lagnh_epochs // 5)

    def progress(epoch: int, losses: dict[str, float]) -> None:
        if (epoch + 1) % every == 0:
            parts = " ".join(f"{k}={v:.3g}" for k, v in losses.items())
            log(f"    lagnh epoch {epoch + 1}/{a.lagnh_epochs} {parts} ({eta(epoch + 1, a.lagnh_epochs, start)})")

    t = tags if use_tags else {k: None for k in tags}
    model = fit_lagnh(feats["train"][0], t["train"], cfg, device=a.device, progress=progress)
    train_s = time.perf_counter() - start
    out = {}
    for mode in ("inductive", "batch"):
        cq = model.encode(feats["query"][0], t["query"], mode=mode)
        cd = model.encode(feats["database"][0], t["database"], mode=mode)
        out[mode] = score(cq, cd, feats["query"][1], feats["database"][1], 1000)
    row = {**out["inductive"], "batch_encoding": out["batch"], "train_seconds": round(train_s, 1)}
    row["final_losses"] = model.history[-1] if model.history else {}
    return row


def main(argv: list[str] | None = None) -> None:
    a = _args(argv)
    set_threads(a.threads)
    from acpsearch.hashing.unsupervised import fit_aux
    from acpsearch.hashing.unsupervised.table import DETERMINISTIC, baseline_rows, score, split_features, summarise

    t0 = time.perf_counter()
    bits = [int(b) for b in a.bits.split(",")]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    seeds = list(range(a.seeds))
    feats = split_features(fmnist_splits())
    if a.database:
        feats["database"] = (feats["database"][0][: a.database], feats["database"][1][: a.database])
    log("features: " + ", ".join(f"{k} {v[0].shape}" for k, v in feats.items()))
    doc: dict[str, Any] = {
        "args": {k: v for k, v in vars(a).items() if k != "out_path"},
        "protocol": PROTOCOL,
        "runs": [],
        "summary": [],
    }
    base = [m for m in methods if m in ("lsh", "pcah", "itq", "bihalf")]
    lagnh = [m for m in methods if m.startswith("lagnh")]
    runs_of = {m: 1 if m in DETERMINISTIC else len(seeds) for m in base}
    total = sum(runs_of.values()) * len(bits) + ("tags" in methods) * len(seeds)
    total += len(lagnh) * len(bits) * len(seeds)
    done = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        doc["runs"].append(row)
        doc["summary"] = summarise(doc["runs"])
        write_json(a.out_path, doc)
        log(
            f"{row['method']:>13} {row['bits']:>3} bits seed {row['seed']}: mAP@1000 {row['map_topk']:.4f} "
            f"mAP@all {row['map_all']:.4f}  [{done}/{total}, {eta(done, total, t0)}]"
        )

    if base:
        baseline_rows(feats, base, bits, seeds, topk=1000, device=a.device, on_row=record)
    tag_sets: dict[int, dict[str, Any]] = {}
    for seed in seeds if ("tags" in methods or lagnh) else []:
        aux = fit_aux(feats["train"][0], seed=seed)
        tag_sets[seed] = {k: aux.transform(v[0]) for k, v in feats.items()}
        if "tags" in methods:
            tq, td = tag_sets[seed]["query"], tag_sets[seed]["database"]
            row = {"method": "tags", "bits": aux.n_tags, "seed": seed}
            row.update(score(2 * tq - 1, 2 * td - 1, feats["query"][1], feats["database"][1], 1000))
            record(row)
    for m in lagnh:
        for b in bits:
            for seed in seeds:
                row = {"method": m, "bits": b, "seed": seed}
                row.update(_lagnh_rows(a, feats, tag_sets[seed], b, seed, use_tags=m == "lagnh"))
                record(row)
    _verdict(doc)
    write_json(a.out_path, doc)
    log(f"done in {time.perf_counter() - t0:.0f}s -> {a.out_path}")


def _verdict(doc: dict[str, Any]) -> None:
    """LAGNH vs ITQ per bit length: better only beyond two standard deviations (of the difference)."""
    by = {(s["method"], s["bits"]): s for s in doc["summary"]}
    verdicts = []
    for (method, b), s in by.items():
        itq = by.get(("itq", b))
        if not method.startswith("lagnh") or itq is None:
            continue
        for key in ("map_topk", "map_all"):
            diff = s[key] - itq[key]
            sd = (s[key + "_std"] ** 2 + itq[key + "_std"] ** 2) ** 0.5
            better = s["seeds"] > 1 and itq["seeds"] > 1 and diff > 2 * sd
            verdicts.append(
                {"method": method, "bits": b, "metric": key, "diff": diff, "two_sd": 2 * sd, "better": better}
            )
            word = "better" if better else "not better"
            log(f"{method} vs itq {b} bits {key}: {diff:+.4f} (2 sd {2 * sd:.4f}) -> {word}")
    doc["verdict_vs_itq"] = verdicts


if __name__ == "__main__":
    main()
