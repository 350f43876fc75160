"""Layer rules: one module per family of layers; importing this package registers them all.

Later registrations win, so the families load from the most general to the most specific."""

from acpsearch.graph.rules import (  # noqa: F401 - registers the rules
    conv,
    elementwise,  # noqa: F401 - registers the rules (after shape)
    functional,
    norm,
    pool,
    shape,
)
from acpsearch.graph.rules.base import (
    FunctionRule,
    LayerRule,
    counts_macs,
    function_rule,
    is_leaf,
    layer_macs,
    module_rule,
    register_rule,
    set_size_attr,
)

__all__ = [
    "counts_macs",
    "layer_macs",
    "FunctionRule",
    "LayerRule",
    "function_rule",
    "is_leaf",
    "module_rule",
    "register_rule",
    "set_size_attr",
]
