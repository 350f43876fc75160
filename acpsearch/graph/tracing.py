"""torch.fx tracing for the channel analysis: leaves, recorded values, error locations."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from acpsearch.graph.rules import is_leaf, module_rule
from acpsearch.graph.state import flatten_nodes

# what the converter, the pruner and the cost meter run the network on: one tensor, or the
# positional inputs as a tuple / list of tensors (checked at run time with a one-line error)
ExampleInput = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


class Tracer(fx.Tracer):
    """Leaves: standard torch.nn modules plus the module types whose rule is a leaf (subclasses of
    conv / linear / norm: custom binary convs stay single nodes; registered custom layers);
    containers and other custom modules are traced through, so their free parameters appear as
    get_attr nodes the analysis can bind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls: list[tuple[str, str]] = []  # (qualified name, class) of the modules being traced
        self.failed_in: tuple[str, str] | None = None  # the innermost module whose forward failed

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_leaf(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            name = self.path_of_module(m)
        except Exception:  # noqa: BLE001 - a module outside the hierarchy: fx reports it itself
            name = "?"
        self._calls.append((name, type(m).__name__))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost one: outer modules re-raise the same error
                self.failed_in = self._calls[-1]
            raise
        finally:
            self._calls.pop()
        self.failed_in = None  # a failure the forward caught itself is not where tracing stopped
        return out


class Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's concrete value (shapes, ints)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def user_frame(tb: Any) -> str:
    """`file.py:line` of the innermost traceback frame outside torch and acpsearch (the user's code)."""
    skip = (
        os.path.dirname(torch.__file__),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        os.path.dirname(os.__file__),
    )
    found = ""
    for frame in traceback.extract_tb(tb):
        path = os.path.abspath(frame.filename)
        if not path.startswith(skip) and not frame.filename.startswith("<"):
            found = f"{os.path.basename(path)}:{frame.lineno}"
    return found


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for single small forwards (shape recording, verification): on a
    shared 2-core box OpenMP spin-waiting made multi-threaded small convs up to 100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def record_shapes(rec: Recorder, inputs: tuple[Any, ...]) -> Any:
    """Run the traced graph once (no grad) to get every value's shape. (Meta tensors were tried:
    their Python decompositions import torch._dynamo on first use, ~4 s.)"""
    with one_thread(), torch.no_grad():
        return rec.run(*inputs)


def flat_values(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in flat_values(e)]
    if isinstance(v, dict):
        return [x for e in v.values() for x in flat_values(e)]
    return [v]


def find_hash_layer(gm: fx.GraphModule, output_node: fx.Node) -> str | None:
    outs = flatten_nodes(output_node.args)
    if not outs:
        return None
    frontier = [outs[-1]]
    seen: set[fx.Node] = set()
    while frontier:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            rule = module_rule(gm.get_submodule(str(n.target)))
            if rule is not None and rule.kind in ("conv", "linear"):
                return str(n.target)
        frontier.extend(flatten_nodes((n.args, n.kwargs)))
    return None
