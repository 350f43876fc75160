"""Latency of an exported file in its own runtime, next to the eager model (`acpsearch bench`)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.export.runtime import load_exported


def benchmark(
    runners: dict[str, Callable[[torch.Tensor], Any]],
    x: torch.Tensor,
    rounds: int = 50,
    warmup: int = 5,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    """Median latency (ms) of each runner on `x`, one intra-op thread, after `warmup` calls each.
    Rounds are interleaved and the order alternates every round (A B, B A, ...), so drift and noise
    on a shared machine hit every runner alike instead of deciding the order."""
    if rounds < 1:
        raise SpecError(f"--rounds: must be >= 1, got {rounds}")
    if warmup < 0:
        raise SpecError(f"--warmup: must be >= 0, got {warmup}")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        names = list(runners)
        with torch.no_grad():
            for name in names:
                for _ in range(warmup):
                    runners[name](x)
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    t0 = time.perf_counter()
                    runners[name](x)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(prev)
    return {
        n: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "rounds": len(t)}
        for n, t in times.items()
    }


def bench_file(
    path: str | os.PathLike[str],
    eager: nn.Module | None = None,
    batch: int = 1,
    rounds: int = 50,
    warmup: int = 5,
    input_shape: list[int] | None = None,
) -> dict[str, Any]:
    """Latency of an exported file in its own runtime (one thread), next to `eager` when given."""
    if batch < 1:
        raise SpecError(f"--batch: must be >= 1, got {batch}")
    run, meta, fmt = load_exported(path, threads=1)
    shape = input_shape or meta.get("input_shape") or meta.get("checkpoint_input_shape")
    if not shape:
        raise SpecError(f"file {str(path)!r}: no input_shape in its metadata; give --checkpoint")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *[int(v) for v in shape[1:]]), generator=gen)
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}
    if eager is not None:
        eager = eager.eval()
        runners["eager"] = eager
    runners[fmt] = run
    res = benchmark(runners, x, rounds=rounds, warmup=warmup)
    return {
        "file": str(path),
        "format": fmt,
        "batch": batch,
        "threads": 1,
        "rounds": rounds,
        "warmup": warmup,
        "runtime": {
            "torchscript": "torch.jit",
            "onnx": "onnxruntime (CPUExecutionProvider)",
            "pt2": "torch.export (ExportedProgram.module())",
            "acpsearch": "eager PyTorch",
        }[fmt],
        "latency": res,
    }
