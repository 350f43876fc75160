"""Stress the two-worker scenario: do `acpsearch worker` processes ever crash?

One run = a fresh SQLite storage with --studies tiny studies (ResNet-20, 16 bits, sklearn digits:
the reliability test's scenario), and two `acpsearch worker --json` processes that share them
through a two-node Ray cluster started once for all runs (or --address). A run passes when both
workers exit 0, every study is done exactly once, and no crash log was written. A worker killed by
a signal (exit -11 is SIGSEGV) is a crash: its stderr and crash log (the Python stack of every
thread, written by acpsearch's faulthandler set-up) are printed and kept in --out.

    .venv/bin/python -m benchmarks.worker_stress --runs 20 --out benchmarks/results/worker_stress.json

Progress goes to stderr, one line per run with elapsed time and ETA. Exit status 1 if any run failed.
Not part of the test suite: 20 runs take ~25 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import parser, write_json

ACPSEARCH = [sys.executable, "-c", "from acpsearch.cli import main; main()"]
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "ACPSEARCH_TORCH_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
PROTOCOL = {"query_per_class": 10, "train_per_class": 60, "val_per_class": 15, "seed": 0}


def train_base(path: Path) -> Path:
    """The reliability tests' tiny base: ResNet-20, 16 bits, 3 epochs of CSQ on digits."""
    from acpsearch.checkpoint import save_checkpoint
    from acpsearch.hashing import create_model, load_dataset, make_splits, train_hash_net

    splits = make_splits(load_dataset("digits"), **PROTOCOL)
    kw = {"bits": 16, "in_channels": 1, "image_size": 8}
    model = train_hash_net(
        create_model("resnet20", **kw), splits, epochs=3, lr=0.003, batch_size=64, progress=False
    ).model
    save_checkpoint(path, model, {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8], meta={"dataset": "digits"})
    return path


def spec(name: str, base: Path, seed: int) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"zoo": "resnet20", "bits": 16, "checkpoint": str(base)},
        "data": {"dataset": "digits", "protocol": PROTOCOL},
        "train": {"loss": "csq", "epochs": 3, "lr": 0.003, "batch_size": 64},
        "budget": {"flops": 0.5},
        "space": {"step": 0.1, "min_keep": 0.2, "criterion": "l1"},
        "encoder": {"objective": "sacp", "epochs": 3, "strategies": 32},
        "search": {"candidates": 16, "sampler": "random", "workers": 1, "seed": seed},
        "finetune": {"top": 1, "epochs": 1, "lr": 0.001, "early_stop": None},
    }


def one_run(root: Path, base: Path, address: str, studies: int) -> dict[str, Any]:
    url = f"sqlite:///{root / 'shared.db'}"
    art = root / "art"
    names = []
    for i in range(studies):
        p = root / f"s{i}.yaml"
        p.write_text(yaml.safe_dump(spec(f"shared-{i}", base, i)))
        out = subprocess.run(
            [*ACPSEARCH, "submit", str(p), "--storage", url], env=ENV, capture_output=True, text=True, timeout=300
        )
        if out.returncode != 0:
            raise SystemExit(f"submit failed: {out.stderr.strip()}")
        names.append(f"shared-{i}")
    args = ["worker", "--storage", url, "--address", address, "--workers", "1", "--json", "--artifacts", str(art)]
    procs = [
        subprocess.Popen(
            [*ACPSEARCH, *args],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    codes = [p.returncode for p in procs]
    done: list[str] = []
    inits: list[int | None] = []
    for code, (stdout, _) in zip(codes, outs):
        rep = json.loads(stdout) if code == 0 and stdout.strip() else {}
        done += [r["name"] for r in rep.get("ran", []) if r["state"] == "done"]
        inits.append(rep.get("ray_inits"))
    crashes = {p.name: p.read_text(errors="replace") for p in sorted(art.glob("crash-*.log"))} if art.is_dir() else {}
    ok = codes == [0, 0] and sorted(done) == sorted(names) and not crashes
    return {
        "ok": ok,
        "exit_codes": codes,
        "studies_done": sorted(done),
        "ray_inits": inits,
        "crash_logs": crashes,
        "stderr": [o[1][-4000:] for o in outs] if not ok else [],
    }


def main() -> int:
    ap = parser(__doc__, full=False)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--studies", type=int, default=3, help="studies per run (the two workers share them)")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: start a two-node one)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    os.environ.update({k: ENV[k] for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")})
    cluster = None
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="worker-stress-") as tmp:
        base = train_base(Path(tmp) / "base.pt")
        address = args.address
        if address is None:
            from ray.cluster_utils import Cluster

            cluster = Cluster(
                initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False}
            )
            cluster.add_node(num_cpus=1)
            address = cluster.address
        try:
            for i in range(args.runs):
                root = Path(tmp) / f"run{i}"
                root.mkdir()
                r = one_run(root, base, address, args.studies)
                results.append(r)
                el = time.perf_counter() - t0
                eta = el / (i + 1) * (args.runs - i - 1)
                print(
                    f"run {i + 1}/{args.runs}: {'ok' if r['ok'] else 'FAILED'} exit codes {r['exit_codes']} "
                    f"ray.init per worker {r['ray_inits']}  [elapsed {el:.0f} s, ETA {eta:.0f} s]",
                    file=sys.stderr,
                    flush=True,
                )
                if not r["ok"]:
                    for text in [*r["crash_logs"].values(), *r["stderr"]]:
                        print(text[-4000:], file=sys.stderr)
        finally:
            if cluster is not None:
                cluster.shutdown()
    failed = sum(not r["ok"] for r in results)
    summary = {
        "runs": len(results),
        "failed": failed,
        "studies_per_run": args.studies,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    print(f"{len(results)} runs, {failed} failed, {summary['seconds']:.0f} s", file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, summary, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
