"""Model -> ChannelGraph: tracing, coupled channel groups, closed-form cost, networkx / pyg exports."""

from acpsearch.graph.core import CRITERIA, ChannelGraph, ChannelGroup, Cost, NodeRecord
from acpsearch.graph.cost import MacTerm
from acpsearch.graph.rules import LayerRule, register_rule

__all__ = ["ChannelGraph", "ChannelGroup", "Cost", "NodeRecord", "CRITERIA", "LayerRule", "MacTerm", "register_rule"]
