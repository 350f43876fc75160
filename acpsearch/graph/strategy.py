"""What the graph reads from a pruning strategy: structural Protocols that
`acpsearch.pruning.PruningStrategy` satisfies, so the graph never imports pruning."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class KeptCounts(Protocol):
    """Kept channel count per group, ordered like ``ChannelGraph.groups`` (all `cost` needs)."""

    def kept_vector(self) -> NDArray[np.int64]: ...


class DescribedStrategy(KeptCounts, Protocol):
    """A strategy as ``ChannelGraph.to_pyg`` describes it: kept counts, the criterion that picks
    the channels, and per group the share of L1 importance mass that those channels hold."""

    @property
    def criterion(self) -> str: ...

    def retained_importance(self) -> NDArray[np.float64]: ...
