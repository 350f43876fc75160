"""Model -> ChannelGraph: tracing, coupled channel groups, closed-form cost, networkx / pyg exports."""

from acpsearch.graph.core import ChannelGraph, ChannelGroup, Cost, NodeRecord
from acpsearch.graph.cost import MacTerm
from acpsearch.graph.rules import LayerRule, register_rule
from acpsearch.graph.strategy import DescribedStrategy, KeptCounts
from acpsearch.graph.tracing import ExampleInput

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "Cost",
    "NodeRecord",
    "KeptCounts",
    "DescribedStrategy",
    "LayerRule",
    "MacTerm",
    "register_rule",
    "ExampleInput",
]
