"""Per-layer latency table, measured once on this machine and cached, for latency budgets.

Why a table and not FLOPs: on CPUs latency is not proportional to MACs (odd channel counts,
memory-bound small layers: candidates at equal MACs were measured at 65-120 ms). Measuring every
candidate is too slow for a search, so each conv / linear layer of the graph is timed alone on
a grid of (kept input fraction, kept output fraction) with its real kernel, stride, padding,
groups and input size, at the deployment batch size. A candidate's latency = sum over layers of
the bilinearly interpolated table, calibrated so that the full width predicts the measured
full-model forward exactly: + a constant offset when the forward takes longer than the table's
sum (untimed norms, activations, adds, pooling), or x a scale < 1 when layers timed alone carry
more call overhead than the fused forward.
The table is made monotone (cumulative max along both axes) so that latency, like FLOPs, grows
with every keep ratio, which the define-by-run space relies on.

Cache: JSON under $ACPSEARCH_CACHE (default ~/.cache/acpsearch)/latency/, keyed by the layers'
shapes, batch size, thread count, torch version and CPU model, so a table is measured once per
machine and network. An entry that cannot be read or does not describe this graph (damaged,
truncated, another shape) is measured again and rewritten. A cache directory that cannot be
created or written is bad input (SpecError naming ACPSEARCH_CACHE, exit 2), found before the
measurement starts: the user chose that place, so acpsearch does not silently measure every time.
Entries are written to a temporary file and renamed, so a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from acpsearch.errors import SpecError
from acpsearch.graph.rules import module_rule

TIMED_TYPES = ("conv", "conv_dw", "linear", "hash")
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("ACPSEARCH_CACHE", Path.home() / ".cache" / "acpsearch")) / "latency"


def _cache_error(where: Path, exc: OSError) -> SpecError:
    return SpecError(
        f"ACPSEARCH_CACHE: cannot write the latency cache in {str(where)!r} "
        f"({exc.strerror or exc}); set ACPSEARCH_CACHE to a writable directory"
    )


def _writable_cache_dir() -> Path:
    """The latency cache directory, created; SpecError naming ACPSEARCH_CACHE if it cannot be written."""
    d = cache_dir()
    probe = d / f".probe.{os.getpid()}.tmp"
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _cache_error(d, exc) from None
    return d


def _write_entry(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _cache_error(path.parent, exc) from None


def _time(fn: Any, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1000.0


class LatencyTable:
    """Measured per-layer latencies of one ChannelGraph; `predict_batch(g, ratios)` in ms."""

    def __init__(
        self,
        nodes: list[int],
        fractions: list[float],
        tables: list[list[list[float]]],
        full_ms: float,
        batch_size: int,
        meta: dict[str, Any],
    ) -> None:
        self.nodes = nodes
        self.fractions = np.asarray(fractions, dtype=np.float64)
        t = np.asarray(tables, dtype=np.float64).reshape(len(nodes), len(fractions), len(fractions))
        # monotone in both kept fractions (measurement noise must not make pruning "cost" time)
        self.tables = np.maximum.accumulate(np.maximum.accumulate(t, axis=1), axis=2)
        self.full_ms = float(full_ms)
        # Calibrate to the measured full model: layers timed alone carry call overheads the fused
        # forward does not (scale < 1), or the forward has untimed ops (offset > 0).
        table_full = float(self.tables[:, -1, -1].sum())
        self.scale = min(1.0, self.full_ms / table_full) if table_full > 0 else 1.0
        self.offset_ms = max(0.0, self.full_ms - table_full)
        self.batch_size = int(batch_size)
        self.meta = meta

    # ------------------------------------------------------------------ measurement
    @classmethod
    def build(
        cls,
        g: Any,
        batch_size: int = 32,
        fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
        repeats: int = 5,
        cache: bool = True,
    ) -> LatencyTable:
        """Measure (or read from the cache) the table for graph `g` at `batch_size`."""
        nodes = [nd for nd in g.nodes if nd.type in TIMED_TYPES and nd.module is not None]
        key = cls._key(g, nodes, batch_size, fractions)
        path = cache_dir() / f"{key}.json"
        if cache:
            cached = cls._read_entry(path, [nd.index for nd in nodes], fractions, batch_size)
            if cached is not None:
                return cached
            _writable_cache_dir()  # before measuring: an unusable cache is exit 2 now, not after minutes
        modules = dict(g.model.named_modules())
        tables = []
        t_start = time.perf_counter()
        with torch.no_grad():
            for nd in nodes:
                m = modules[nd.module]
                tab = np.zeros((len(fractions), len(fractions)))
                for i, fi in enumerate(fractions):
                    for j, fo in enumerate(fractions):
                        layer, x = _standalone(m, nd, fi, fo, batch_size)
                        tab[i, j] = _time(lambda layer=layer, x=x: layer(x), repeats)
                tables.append(tab.tolist())
            model = g.model.eval()
            x = _example(g, batch_size)
            full_ms = _time(lambda: model(x), repeats)
        meta = {
            "cpu": _cpu_model(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "build_seconds": round(time.perf_counter() - t_start, 2),
            "key": key,
        }
        table = cls([nd.index for nd in nodes], list(fractions), tables, full_ms, batch_size, meta)
        if cache:
            _writable_cache_dir()
            _write_entry(path, table.to_dict())
        return table

    @classmethod
    def _read_entry(
        cls, path: Path, nodes: list[int], fractions: tuple[float, ...], batch_size: int
    ) -> LatencyTable | None:
        """The cached table at `path`, or None when there is none or it is damaged (then it is re-measured):
        unreadable, not JSON, or JSON of another shape (a list, missing keys, other nodes or sizes)."""
        try:
            doc = json.loads(path.read_text())
            tab = cls.from_dict(doc)
            if (
                list(tab.nodes) != list(nodes)
                or tab.batch_size != int(batch_size)
                or not np.allclose(tab.fractions, np.asarray(fractions, dtype=np.float64))
                or not np.all(np.isfinite(tab.tables))
                or not np.isfinite(tab.full_ms)
                or not isinstance(tab.meta, dict)
            ):
                return None
            return tab
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None  # a damaged cache entry is re-measured

    @staticmethod
    def _key(g: Any, nodes: list[Any], batch_size: int, fractions: tuple[float, ...]) -> str:
        sig = [
            (
                nd.type,
                nd.kernel,
                nd.stride,
                nd.groups,
                nd.in_channels,
                nd.out_channels,
                list(nd.in_shape),
                list(nd.out_shape),
            )
            for nd in nodes
        ]
        blob = json.dumps([sig, batch_size, list(fractions), torch.get_num_threads(), torch.__version__, _cpu_model()])
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "fractions": self.fractions.tolist(),
            "tables": self.tables.tolist(),
            "full_ms": self.full_ms,
            "batch_size": self.batch_size,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        return cls(d["nodes"], d["fractions"], d["tables"], d["full_ms"], d["batch_size"], d["meta"])

    # ------------------------------------------------------------------ prediction
    def kept_fractions(self, g: Any, ratios: np.ndarray, round_to: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Kept (input, output) channel fractions (n, len(nodes)) of the timed nodes."""
        kept = g.kept_counts(np.asarray(ratios, dtype=np.float64), round_to).astype(np.float64)
        fm, fc = g.form_matrix.astype(np.float64), g.form_const.astype(np.float64)
        C = g.channels.astype(np.float64)
        idx = np.asarray(self.nodes, dtype=np.int64)
        fin, fout = g.node_in_form[idx], g.node_out_form[idx]
        full_in = np.maximum(fm[fin] @ C + fc[fin], 1.0)
        full_out = np.maximum(fm[fout] @ C + fc[fout], 1.0)
        kin = (kept @ fm[fin].T + fc[fin]) / full_in
        kout = (kept @ fm[fout].T + fc[fout]) / full_out
        return kin, kout

    def predict_batch(self, g: Any, ratios: np.ndarray, round_to: int = 4) -> np.ndarray:
        """Predicted latency in ms of each ratio row (n, n_groups)."""
        kin, kout = self.kept_fractions(g, ratios, round_to)
        f = self.fractions
        kin = np.clip(kin, f[0], 1.0)
        kout = np.clip(kout, f[0], 1.0)
        i = np.clip(np.searchsorted(f, kin, side="right") - 1, 0, len(f) - 2)
        j = np.clip(np.searchsorted(f, kout, side="right") - 1, 0, len(f) - 2)
        wi = (kin - f[i]) / (f[i + 1] - f[i])
        wj = (kout - f[j]) / (f[j + 1] - f[j])
        node = np.arange(len(self.nodes))[None, :]
        T = self.tables
        lat = (
            (1 - wi) * (1 - wj) * T[node, i, j]
            + wi * (1 - wj) * T[node, i + 1, j]
            + (1 - wi) * wj * T[node, i, j + 1]
            + wi * wj * T[node, i + 1, j + 1]
        )
        return np.asarray(self.scale * lat.sum(axis=1) + self.offset_ms, dtype=np.float64)

    def predict(self, g: Any, strategy: Any) -> float:
        row = np.array([[strategy.ratios.get(grp.name, 1.0) for grp in g.groups]])
        return float(self.predict_batch(g, row, getattr(strategy, "round_to", 4))[0])


def _example(g: Any, batch_size: int) -> torch.Tensor:
    shape = list(g.example_shape)
    shape[0] = batch_size
    x = torch.randn(shape)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _standalone(m: nn.Module, nd: Any, fin: float, fout: float, batch_size: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh layer like `m` with the kept channel fractions (its rule's rebuild), and an input of its real size."""
    rule = module_rule(m)
    c_in = int(nd.in_shape[rule.in_axis]) if rule is not None else 0
    c_out = int(nd.out_shape[rule.out_axis]) if rule is not None else 0
    if rule is not None:
        cin, cout = rule.timed_channels(m, fin, fout, bool(nd.in_groups), bool(nd.out_groups), c_in, c_out)
        layer = rule.rebuild(m, cin, cout)
    if rule is None or layer is None:
        raise TypeError(f"latency: cannot time module type {type(m).__name__} ({nd.module})")
    layer = layer.eval()
    shape = [batch_size, *nd.in_shape[1:]]
    shape[rule.in_axis] = cin
    x = torch.randn(shape)
    if x.ndim == 4 and rule.in_axis == 1:
        layer = layer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    return layer, x


# --- comparing whole networks --------------------------------------------------------------------
def compare_latency(
    models: dict[str, nn.Module],
    input_shape: list[int] | tuple[int, ...],
    batch: int = 32,
    rounds: int = 7,
    repeats: int = 5,
    warmup: int = 3,
    threads: int = 1,
) -> dict[str, Any]:
    """Latency of several networks measured INTERLEAVED, so that machine noise (another process,
    frequency scaling) hits all of them alike instead of deciding which one looks faster.

    Every network gets `warmup` untimed forwards first; then `rounds` rounds, in each of which every
    network runs `repeats` timed forwards of the same input (`batch` images, `threads` threads,
    channels_last), the order alternating from round to round (A B, B A, A B, ...). A network's
    round time is the median of its repeats; its latency is the median over rounds, reported with
    the spread of the round times (min, max, interquartile range).

    Returns {"batch", "threads", "rounds", "order": [[names of round 0], ...],
             "models": {name: {"median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "rounds_ms"}}}."""
    if not models:
        raise ValueError("compare_latency: no models")
    rounds = max(1, int(rounds))
    shape = [int(batch), *[int(v) for v in list(input_shape)[1:]]]
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    nets = {
        name: m.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for name, m in models.items()
    }
    names = list(nets)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    order: list[list[str]] = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    nets[name](x)
            for r in range(rounds):
                seq = names if r % 2 == 0 else names[::-1]
                order.append(list(seq))
                for name in seq:
                    ts = []
                    for _ in range(max(1, int(repeats))):
                        t0 = time.perf_counter()
                        nets[name](x)
                        ts.append(time.perf_counter() - t0)
                    per_round[name].append(float(np.median(ts)) * 1000.0)
    finally:
        torch.set_num_threads(old_threads)
    stats = {}
    for name, ms in per_round.items():
        a = np.asarray(ms)
        stats[name] = {
            "median_ms": round(float(np.median(a)), 3),
            "min_ms": round(float(a.min()), 3),
            "max_ms": round(float(a.max()), 3),
            "q1_ms": round(float(np.percentile(a, 25)), 3),
            "q3_ms": round(float(np.percentile(a, 75)), 3),
            "rounds_ms": [round(v, 3) for v in ms],
        }
    return {"batch": int(batch), "threads": int(threads), "rounds": rounds, "order": order, "models": stats}
