"""Model -> ChannelGraph: tracing, coupled channel groups, closed-form cost, networkx / pyg exports."""

from acpsearch.graph.core import CRITERIA, ChannelGraph, ChannelGroup, Cost, NodeRecord

__all__ = ["ChannelGraph", "ChannelGroup", "Cost", "NodeRecord", "CRITERIA"]
