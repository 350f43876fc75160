"""Peak memory of encoding a list-file image set: decoded into memory vs streamed from disk.

Generates N PNGs (default 5,000 RGB images of 64x64, DeepHash-pytorch list files: train / database
/ test), then runs the same work twice, each in a fresh child process so that each peak is its own:
load_dataset("listfile", ...) -> make_splits (normalisation statistics of the training list) ->
encode the database and the queries with a small conv net. `memory` decodes every image into one
float32 tensor (data.stream: false); `stream` keeps them on disk and decodes per batch (ImageSource
+ DataLoader, workers 0 so that the decoding happens in the measured process). Reported: the child's
peak RSS (resource.getrusage ru_maxrss), its RSS after the imports (the baseline) and the growth
above it, and the ratios memory / stream. Results: docs/results/stream_memory.md.

    PYTHONPATH=. python -m benchmarks.stream_memory --images 5000 --side 64 --out /tmp/stream-mem
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, parser, set_threads


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, lists: dict[str, str], batch: int) -> dict[str, float]:
    import torch
    from torch import nn

    from acpsearch.hashing import encode, load_dataset, make_splits

    set_threads(1)
    base = _rss_mib()
    t0 = time.perf_counter()
    ds = load_dataset("listfile", **lists, stream=mode == "stream", workers=0)
    sp = make_splits(ds, seed=0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 32),
    )
    db = encode(net, sp.database[0], batch_size=batch)
    q = encode(net, sp.query[0], batch_size=batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "mode": mode,
        "baseline_mib": round(base, 1),
        "peak_mib": round(peak, 1),
        "growth_mib": round(peak - base, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "database": int(db.shape[0]),
        "queries": int(q.shape[0]),
        "codes_sum": float(db.sum() + q.sum()),
    }


def generate(out: Path, n: int, side: int) -> dict[str, str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        k = i % 10
        p = img / f"{i:05d}.png"
        if not p.exists():
            arr = np.clip(rng.normal(25 * k, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(p)
        vec = ["0"] * 10
        vec[k] = "1"
        if i % 5 == 0:
            vec[(k + 3) % 10] = "1"
        lines.append(f"img/{i:05d}.png {' '.join(vec)}\n")
    n_test, n_train = max(10, n // 50), max(10, n // 5)
    parts = {
        "test_list": lines[:n_test],
        "train_list": lines[n_test : n_test + n_train],
        "database_list": lines[n_test + n_train :],
    }
    paths = {}
    for key, rows in parts.items():
        (out / f"{key}.txt").write_text("".join(rows))
        paths[key] = str(out / f"{key}.txt")
    return paths


def main() -> None:
    ap = parser(__doc__, full=False)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="/tmp/acpsearch-stream-memory")
    ap.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    ap.add_argument("--lists", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.lists), args.batch)))
        return
    t0 = time.perf_counter()
    lists = generate(Path(args.out), args.images, args.side)
    gen_s = time.perf_counter() - t0
    rows = {}
    for mode in ("memory", "stream"):
        res = subprocess.run(
            [sys.executable, "-m", "benchmarks.stream_memory", "--child", mode, "--lists", json.dumps(lists)]
            + ["--batch", str(args.batch)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
            check=True,
            capture_output=True,
            text=True,
        )
        rows[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    m, s = rows["memory"], rows["stream"]
    assert m["codes_sum"] == s["codes_sum"], "streamed codes differ from in-memory codes"
    report = {
        "images": args.images,
        "side": args.side,
        "generate_seconds": round(gen_s, 1),
        **{k: rows[k] for k in rows},
        "peak_ratio": round(m["peak_mib"] / s["peak_mib"], 2),
        "growth_ratio": round(m["growth_mib"] / max(s["growth_mib"], 1e-9), 2),
        "float32_images_mib": round(args.images * 3 * args.side**2 * 4 / 2**20, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
