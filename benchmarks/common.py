"""Setup shared by the benchmark scripts: paths, argument parsing, threads and seeds, the base
networks, results files and progress lines.

Run a benchmark from the repository root as a module, e.g. ``python -m benchmarks.converter --help``
(with the package importable: an installed checkout, or ``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"
# the ResNet-20 / CSQ / 32-bit Fashion-MNIST base written by `python -m benchmarks.base_models`
BASE = CACHE / "resnet20_csq32_fmnist.pt"
# the CIFAR-10-style protocol of every Fashion-MNIST benchmark: per class 100 queries, 500 training and
# 100 validation images, the rest is the retrieval database
PROTOCOL = {"query_per_class": 100, "train_per_class": 500, "val_per_class": 100, "seed": 0}


def protocol_arg(text: str | None) -> dict[str, int]:
    """The split protocol of a `--protocol QUERY,TRAIN,VAL` option (per class); PROTOCOL without one."""
    if not text:
        return dict(PROTOCOL)
    q, t, v = (int(x) for x in text.split(","))
    return {"query_per_class": q, "train_per_class": t, "val_per_class": v, "seed": 0}


def parser(doc: str | None, *, full: bool = True) -> argparse.ArgumentParser:
    """An argument parser described by a script's docstring (all of it, or its first line)."""
    text = doc or ""
    if full:
        return argparse.ArgumentParser(description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(description=text.strip().splitlines()[0] if text.strip() else None)


def set_threads(n: int | None) -> None:
    """Torch's intra-op threads (None: leave torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


def seed_all(seed: int) -> None:
    """Seed python's random, numpy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_base(path: Path | str) -> nn.Module:
    """A base network from an acpsearch checkpoint (zoo networks only)."""
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint

    return model_from_checkpoint(read_checkpoint(path))


def fmnist_splits(protocol: dict[str, int] | None = None, data_dir: str | None = None) -> Any:
    """Fashion-MNIST split by the benchmarks' protocol (PROTOCOL unless given)."""
    from acpsearch.hashing import load_dataset, make_splits

    return make_splits(load_dataset("fashion-mnist", data_dir), **(protocol or PROTOCOL))


def write_json(path: Path, doc: Any, indent: int | None = 2) -> Path:
    """Write a results document atomically (temporary file + rename), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=indent) + "\n")
    tmp.replace(path)
    return path


def log(msg: str, *, err: bool = False) -> None:
    """One progress line with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr if err else sys.stdout, flush=True)


def stats(xs: list[float]) -> dict[str, float]:
    """Mean, standard error of the mean (nan for one value) and n of a list of per-seed results."""
    import math
    import statistics

    mean = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return {"mean": mean, "se": se, "n": len(xs)}


def standing(a: dict[str, float], ref: dict[str, float]) -> str:
    """`ref`'s standing against `a` (both `stats`): win / tie / loss by mean; a difference within
    two standard errors of the difference (or with an unknown one) is a tie."""
    import math

    diff = ref["mean"] - a["mean"]
    se = math.sqrt((a["se"] or 0.0) ** 2 + (ref["se"] or 0.0) ** 2)
    if math.isnan(se) or abs(diff) <= 2 * se:
        return "tie"
    return "win" if diff > 0 else "loss"


def eta(done: int, total: int, t0: float) -> str:
    """'elapsed Ns, ETA Ms' for a loop that started at time.perf_counter() == t0."""
    elapsed = time.perf_counter() - t0
    left = elapsed / done * (total - done) if done else float("nan")
    return f"elapsed {elapsed:.0f}s, ETA {left:.0f}s"


def uniform_strategy(g: Any, budget: float) -> Any:
    """The uniform-L1 baseline: the largest uniform keep ratio (0.01 steps) under `budget` x FLOPs."""
    from acpsearch.pruning import PruningStrategy

    full = g.cost().flops
    keep = 1.0
    while keep > 0.01:
        s = PruningStrategy.uniform(g, keep=round(keep, 4), criterion="l1")
        if g.cost(s).flops <= budget * full:
            return s
        keep -= 0.01
    raise SystemExit(f"uniform_l1: no uniform ratio meets budget {budget}")


def magnitude_strategy(g: Any, budget: float) -> Any:
    """Torch-Pruning-style global magnitude (one L1 ranking over every group) under `budget` x FLOPs."""
    from acpsearch.pruning import PruningStrategy

    full = g.cost().flops
    s = PruningStrategy.global_magnitude(g, lambda s: g.cost(s).flops <= budget * full, criterion="l1")
    if s is None:
        raise SystemExit(f"tp_global_mag: no allocation meets budget {budget}")
    return s
