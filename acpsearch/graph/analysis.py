"""Channel analysis: torch.fx trace -> channel variables, parameter bindings, cost terms.

Every tensor in the traced forward gets a *channel descriptor* (`Desc`): which axis is its
channel axis and how that axis is made of segments ``(variable, repeat)`` (see `channels`). The
engine here walks the traced graph and hands every node to its rule (`acpsearch.graph.rules`):
module rules by module type, function rules by function / method name. The rules:

* conv / linear create a new output variable; depthwise convs pass their input variable through;
  grouped convs put a block divisor (``groups``) on their input and output variables;
* elementwise ops (add, mul, sub, div, with broadcasting, incl. free parameters such as layer-scale
  gammas) unify the variables of their operands;
* cat concatenates segments; split into chunks whose sizes a module attribute holds splits the
  variables (each chunk prunes with its slice of the producer); permute/transpose move the
  channel axis; flatten/view/reshape keep it when the channel dim survives whole (flatten
  multiplies ``repeat``);
* anything not understood (channel shuffle, slices along channels, view with literal channel
  sizes, unknown functions or modules) FREEZES the variables involved, i.e. they are never
  pruned, which is always sound. The channel dims of every model output are frozen.

torch-pruning's DependencyGraph is not used: it crashes on grouped convs fed by cat and its
FLOPs counter ignores functional ops; a descriptor analysis over torch.fx handles those cases
and gives the closed-form cost terms the search needs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from acpsearch.errors import UnsupportedModelError
from acpsearch.graph.channels import Analysis, Desc, LayerInfo, ModuleInfo
from acpsearch.graph.cost import MacTerm
from acpsearch.graph.rules import function_rule, module_rule
from acpsearch.graph.state import Analyzer, flatten_nodes, norm_axis
from acpsearch.graph.tracing import (
    ExampleInput,
    Recorder,
    Tracer,
    find_hash_layer,
    flat_values,
    record_shapes,
    user_frame,
)

__all__ = ["Engine", "analyse"]


class Engine(Analyzer):
    """Walks the traced graph and hands every node to its rule."""

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            value = self.values.get(node)
            n_vars = len(self.V.parent)
            try:
                self.visit(node, value)
            except UnsupportedModelError:
                raise
            except Exception:  # noqa: BLE001 - a pattern the rules did not foresee: freeze, never guess
                self.freeze_args(node)
                for v in range(n_vars, len(self.V.parent)):
                    self.V.freeze(v)
                self.desc[node] = self.none_like(value)
            ins = [a for a in flatten_nodes((node.args, node.kwargs)) if isinstance(self.values.get(a), torch.Tensor)]
            if node not in self.producers:
                preds: set[int] = set()
                for a in ins:
                    preds |= self.producers.get(a, set())
                self.producers[node] = preds
            if node.op in ("call_function", "call_method") and ins and all(a in self.param_src for a in ins):
                self.param_src[node] = tuple(p for a in ins for p in self.param_src[a])

    def visit(self, node: fx.Node, value: Any) -> None:
        if node.op == "placeholder":
            self.desc[node] = self.none_like(value)
        elif node.op == "get_attr":
            self.get_attr(node, value)
        elif node.op == "call_module":
            self.call_module(node, value)
        elif node.op in ("call_function", "call_method"):
            self.call_function(node, value)
        elif node.op == "output":
            self.freeze_args(node)

    def get_attr(self, node: fx.Node, value: Any) -> None:
        self.desc[node] = None
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return
        tname = self.canonical.get(str(node.target))
        big = [i for i, s in enumerate(value.shape) if s > 1]
        if tname is None or not big:  # a constant tensor built during tracing: never prunable
            return
        ax = big[0]
        segs = ((self.V.new(value.shape[ax], tname), 1),)
        self.bind(tname, ax, segs)
        self.desc[node] = Desc(ax, segs)
        self.param_src[node] = (tname,)

    def call_module(self, node: fx.Node, value: Any) -> None:
        name = str(node.target)
        m = self.gm.get_submodule(name)
        rule = module_rule(m)
        if rule is None or not rule.analyse(self, node, name, m, value):
            self.unknown_module(node, name, m, value)

    def unknown_module(self, node: fx.Node, name: str, m: nn.Module, value: Any) -> None:
        """A module no rule understands (attention, RNN, channel shuffle, ...): freeze what it touches."""
        self.freeze_args(node)
        self.desc[node] = self.none_like(value)
        if not any(True for _ in m.parameters()):
            return
        xv = self.val(node.args[0]) if node.args else None
        self.modules.setdefault(name, ModuleInfo("frozen"))
        info = LayerInfo(name, "other", type(m).__name__, name, params=self.own_tensors(name, m))
        if isinstance(xv, torch.Tensor):
            info.in_shape = tuple(xv.shape)
        if isinstance(value, torch.Tensor):
            info.out_shape = tuple(value.shape)
        idx = self.add_layer(node, info)
        rule = module_rule(m)
        if rule is not None and isinstance(xv, torch.Tensor) and isinstance(value, torch.Tensor):
            term = rule.mac_term(m, tuple(xv.shape), tuple(value.shape))
            if term is not None:
                c_in = xv.shape[norm_axis(rule.in_axis, xv.dim())]
                c_out = value.shape[norm_axis(rule.out_axis, value.dim())]
                const = MacTerm(term.value(int(c_out), int(c_in)), 1, out=False, inp=False, binary=term.binary)
                if term.binary:
                    self.binary_params.update(f"{name}.{n}" for n, _ in m.named_parameters() if n == "weight")
                self.add_flops(idx, const, None, None)

    def call_function(self, node: fx.Node, value: Any) -> None:
        if not any(_has_tensor(self.values.get(a)) for a in flatten_nodes((node.args, node.kwargs))):
            self.desc[node] = self.none_like(value)
            return
        rule = function_rule(node)
        if rule is None:
            self.freeze_args(node)
            self.desc[node] = self.none_like(value)
            return
        rule(self, node, value)


def _has_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and any(_has_tensor(x) for x in v))


def analyse(
    model: nn.Module, example_input: ExampleInput, hash_layer: str | None = None
) -> tuple[Analysis, fx.GraphModule]:
    """Trace `model` and run the channel analysis (model left in its original train/eval mode)."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not isinstance(inputs[0], torch.Tensor):
        raise UnsupportedModelError("example_input: expected a tensor (or a tuple of tensors)")
    batch = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    gm, rec, out = _trace(model, tuple(inputs))
    an = Engine(model, gm, rec.values, batch)
    an.run()
    out_tensors = [t for t in flat_values(out) if isinstance(t, torch.Tensor)]
    if not out_tensors:
        raise UnsupportedModelError(f"model {type(model).__name__}: forward returns no tensor")
    # Hash layer: named, or the last conv/linear on the path to the last output tensor.
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    if hash_layer is None:
        hash_layer = find_hash_layer(gm, output_node)
        if hash_layer is None:
            raise UnsupportedModelError(
                f"model {type(model).__name__}: no Linear/Conv produces the output code; pass hash_layer='name'"
            )
    else:
        names = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        if hash_layer not in names:
            raise UnsupportedModelError(f"hash_layer {hash_layer!r}: no such module is called in forward")
    info = an.modules.get(hash_layer)
    if info is not None:
        for v, _ in info.out_segs:
            an.V.freeze(v)
    for lay in an.layers:
        if lay.module == hash_layer:
            lay.type = "hash" if lay.type in ("linear", "conv") else lay.type
    res = Analysis(
        an.V,
        an.layers,
        an.flop_terms,
        an.bindings,
        an.grouped_in,
        an.modules,
        hash_layer,
        [tuple(t.shape) for t in out_tensors],
        batch,
        an.size_attrs,
        binary_params=an.binary_params,
        derived=an.derived,
    )
    res.expand_all()
    return res, gm


def _trace(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[fx.GraphModule, Recorder, Any]:
    """fx-trace `model` and run it once on `inputs`, recording every value (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        tracer = Tracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - any fx failure means the model is not traceable
            first = (str(exc).splitlines() or [""])[0]
            where = user_frame(exc.__traceback__)
            if tracer.failed_in is not None:
                sub, cls = tracer.failed_in
                what = f"torch.fx cannot trace the forward of module {sub!r} ({cls}{', ' + where if where else ''})"
            else:
                what = f"torch.fx cannot trace its forward{' (' + where + ')' if where else ''}"
            raise UnsupportedModelError(
                f"model {type(model).__name__}: {what}: {type(exc).__name__}: {first[:200]}"
            ) from None
        gm = fx.GraphModule(model, graph)
        rec = Recorder(gm)
        try:
            out = record_shapes(rec, inputs)
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).splitlines() or [""])[0]
            what = f"{type(exc).__name__}: {first[:200]}"
            raise UnsupportedModelError(
                f"model {type(model).__name__}: forward on the example input failed ({what})"
            ) from None
    finally:
        model.train(was_training)
    return gm, rec, out
