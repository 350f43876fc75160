"""The unsupervised baselines table on a data set's retrieval protocol.

Features are the normalised pixels of the protocol splits, flattened (the same features for every
method). Every method is fitted on the training split only, with no labels; labels are used only to
score the query-vs-database ranking (mAP@k and mAP@all, ``acpsearch.hashing.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from acpsearch.errors import SpecError
from acpsearch.hashing.data import Splits
from acpsearch.hashing.data.stream import is_source, iter_batches
from acpsearch.hashing.metrics import mean_average_precision
from acpsearch.hashing.unsupervised.baselines import BASELINE_NAMES, fit_itq, fit_lsh, fit_pcah
from acpsearch.hashing.unsupervised.bihalf import fit_bihalf

DETERMINISTIC = ("pcah",)  # one seed is enough: the fit does not depend on it


class Hasher(Protocol):
    def encode(self, x: np.ndarray) -> np.ndarray: ...


def part_features(x: Any, chunk: int = 1024) -> np.ndarray:
    """(n, d) float32 flattened images of a split part (a tensor or a streamed image source)."""
    if not is_source(x):
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        return t.reshape(t.shape[0], -1).numpy().astype(np.float32, copy=False)
    n = len(x)
    rows = [list(range(i, min(n, i + chunk))) for i in range(0, n, chunk)]
    parts = [torch.as_tensor(b[0] if isinstance(b, (tuple, list)) else b) for b in iter_batches(x, rows)]
    return torch.cat(parts).reshape(n, -1).numpy().astype(np.float32, copy=False)


def split_features(splits: Splits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train', 'query', 'database'}: (features, labels) as numpy."""
    return {
        k: (part_features(getattr(splits, k)[0]), np.asarray(getattr(splits, k)[1]))
        for k in ("train", "query", "database")
    }


def fit_baseline(method: str, x: np.ndarray, bits: int, seed: int, device: str = "cpu") -> Hasher:
    """Fit one baseline by name on training features."""
    if method == "lsh":
        return fit_lsh(x, bits, seed)
    if method == "pcah":
        return fit_pcah(x, bits, seed)
    if method == "itq":
        return fit_itq(x, bits, seed)
    if method == "bihalf":
        return fit_bihalf(x, bits, seed, device=device)
    raise SpecError(f"--methods: unknown method {method!r}, expected some of {', '.join(BASELINE_NAMES)}")


def score(codes_q: np.ndarray, codes_db: np.ndarray, y_q: np.ndarray, y_db: np.ndarray, topk: int) -> dict[str, float]:
    """mAP@topk and mAP@all of a query-vs-database Hamming ranking."""
    return {
        "map_topk": mean_average_precision(codes_q, codes_db, y_q, y_db, topk=topk),
        "map_all": mean_average_precision(codes_q, codes_db, y_q, y_db, topk=None),
    }


def baseline_rows(
    feats: dict[str, tuple[np.ndarray, np.ndarray]],
    methods: Sequence[str] = BASELINE_NAMES,
    bits: Sequence[int] = (16, 32, 64),
    seeds: Sequence[int] = (0,),
    topk: int = 1000,
    device: str = "cpu",
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, bits, seed): {method, bits, seed, map_topk, map_all, seconds}."""
    for m in methods:
        if m not in BASELINE_NAMES:
            raise SpecError(f"--methods: unknown method {m!r}, expected some of {', '.join(BASELINE_NAMES)}")
    (xt, _), (xq, yq), (xd, yd) = feats["train"], feats["query"], feats["database"]
    rows: list[dict[str, Any]] = []
    for method in methods:
        for b in bits:
            for seed in seeds[:1] if method in DETERMINISTIC else seeds:
                start = time.monotonic()
                h = fit_baseline(method, xt, int(b), int(seed), device)
                row = {"method": method, "bits": int(b), "seed": int(seed)}
                row.update(score(h.encode(xq), h.encode(xd), yq, yd, topk))
                row["seconds"] = round(time.monotonic() - start, 2)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (method, bits), in first-seen order."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["method"]), int(r["bits"])), []).append(r)
    out = []
    for (method, b), rs in groups.items():
        entry: dict[str, Any] = {"method": method, "bits": b, "seeds": len(rs)}
        for key in ("map_topk", "map_all"):
            vals = np.array([float(r[key]) for r in rs])
            entry[key] = float(vals.mean())
            entry[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return out
