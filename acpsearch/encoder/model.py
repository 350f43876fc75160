"""GCN structure encoder: (channel graph, pruning strategy) -> L2-normalised embedding.

The encoder reads the node features of ``g.to_pyg(strategy)`` (static layer descriptors plus the
strategy's keep ratios / retained importance), runs residual GCN layers over the data-flow graph
made undirected (a layer's effect depends on what feeds it and on what it feeds), pools the nodes
three ways (mean, max, learned attention: the attention gate lets the encoder weigh early layers
differently from late ones, which matters for pruned hash nets), and projects to a unit vector.

Scoring many strategies of one graph is the hot path of the search, so `GraphBatcher` caches the
graph's edge index once and stacks only the node-feature matrices; one GNN forward scores
hundreds of strategies.

Persistence is weights-only: `state()` is a plain dict (config + tensors) that
``torch.load(weights_only=True)`` reads back; no pickled classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_undirected

from acpsearch.errors import CheckpointError
from acpsearch.graph import ChannelGraph, DescribedStrategy
from acpsearch.pruning.probe import torch_threads

FORMAT = "acpsearch-encoder"
VERSION = 1


class StructureEncoder(nn.Module):
    """Residual GCN over a channel graph, pooled (mean | max | attention) and projected."""

    feat_mean: Tensor
    feat_std: Tensor

    def __init__(
        self,
        in_dim: int,
        hidden: int = 64,
        embed_dim: int = 32,
        layers: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or hidden <= 0 or embed_dim <= 0 or layers <= 0:
            raise ValueError("StructureEncoder: in_dim, hidden, embed_dim and layers must be positive")
        self.config: dict[str, Any] = {
            "in_dim": int(in_dim),
            "hidden": int(hidden),
            "embed_dim": int(embed_dim),
            "layers": int(layers),
            "dropout": float(dropout),
        }
        # Feature standardisation, fitted on training graphs (`fit_normalizer`); node features
        # mix one-hots, log channel counts and ratios, whose scales differ by orders of magnitude.
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.inp = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.att = AttentionalAggregation(
            gate_nn=nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, 1))
        )
        self.head = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, embed_dim)
        )

    @torch.no_grad()
    def fit_normalizer(self, x: Tensor) -> None:
        """Set the feature mean/std from stacked node features of training graphs."""
        self.feat_mean.copy_(x.mean(0))
        self.feat_std.copy_(x.std(0).clamp_min(1e-3))

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """General PyG path: any batch of graphs (x (sum nodes, F), edge_index, batch vector)."""
        h = torch.relu(self.inp((x - self.feat_mean) / self.feat_std))
        for conv, norm in zip(self.convs, self.norms):
            h = h + torch.relu(norm(conv(h, edge_index)))
        pooled = torch.cat(
            [
                global_mean_pool(h, batch, num_graphs),
                global_max_pool(h, batch, num_graphs),
                self.att(h, batch, dim_size=num_graphs),
            ],
            dim=1,
        )
        return nn.functional.normalize(self.head(pooled), dim=1)

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        """Same function for B strategies of ONE graph: x (B, N, F), adj = GCN-normalised (N, N).

        Why: the strategies of one graph share its edges, so each GCN layer is one dense
        (N, N) @ (B, N, h) product. Pure-PyTorch scatter (no torch-scatter wheel here) made the
        backward of the PyG path ~30x slower than its forward; this path gives identical outputs
        (tested) and trains at forward speed.
        """
        h = torch.relu(self.inp((x - self.feat_mean) / self.feat_std))
        for conv, norm in zip(self.convs, self.norms):
            assert isinstance(conv, GCNConv)
            out = adj @ conv.lin(h)
            if conv.bias is not None:
                out = out + conv.bias
            h = h + torch.relu(norm(out))
        gate = torch.softmax(self.att.gate_nn(h), dim=1)  # (B, N, 1), softmax over each graph's nodes
        pooled = torch.cat([h.mean(1), h.amax(1), (gate * h).sum(1)], dim=1)
        return nn.functional.normalize(self.head(pooled), dim=1)

    # ----------------------------------------------------------------- convenience on a graph
    def embed(self, graph: ChannelGraph, strategies: Sequence[DescribedStrategy], batch_size: int = 512) -> Tensor:
        """Embeddings (n, embed_dim) of many strategies of one ChannelGraph, in eval mode."""
        return GraphBatcher(graph).embed(self, strategies, batch_size=batch_size)

    def similarity(self, graph: ChannelGraph, strategies: Sequence[DescribedStrategy], batch_size: int = 512) -> Tensor:
        """Cosine similarity of each strategy's embedding to the unpruned network's (the ACP-SSE score)."""
        return GraphBatcher(graph).similarity(self, strategies, batch_size=batch_size)

    # ----------------------------------------------------------------- weights-only persistence
    def state(self) -> dict[str, Any]:
        """Plain dict (config + state dict) that loads with torch.load(weights_only=True)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": dict(self.config),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StructureEncoder:
        """Rebuild an encoder from `state()`; a foreign or damaged dict is a CheckpointError."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError("encoder: not an acpsearch encoder state (missing format tag)")
        try:
            enc = cls(**state["config"])
            enc.load_state_dict(state["state_dict"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"encoder: state does not match its config ({type(exc).__name__})") from None
        enc.eval()
        return enc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> StructureEncoder:
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"encoder: file {str(path)!r} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - unpicklable / corrupt file is a user problem
            raise CheckpointError(f"encoder: cannot read {str(path)!r} weights-only ({type(exc).__name__})") from None
        return cls.from_state(state)


class GraphBatcher:
    """Stacks node features of many strategies of ONE graph into a PyG-style batch.

    Why not `torch_geometric.data.Batch.from_data_list`: every strategy shares the same edge
    index, so repeating it with offsets is a single tensor op, several times faster than
    collating Data objects one by one.
    """

    def __init__(self, graph: ChannelGraph, threads: int | None = 1) -> None:
        self.graph = graph
        self.threads = threads
        data = graph.to_pyg(None)  # None = the unpruned network
        self.num_nodes = int(data.x.shape[0])
        self.in_dim = int(data.x.shape[1])
        ei = data.edge_index.long()
        self.edge_index = to_undirected(ei, num_nodes=self.num_nodes) if ei.numel() else ei
        self.unpruned_x = data.x.float()
        self.adj = gcn_dense_adjacency(self.edge_index, self.num_nodes)

    def features(self, strategies: Iterable[DescribedStrategy]) -> Tensor:
        """(n, num_nodes, in_dim) node features of the strategies."""
        xs = [self.graph.to_pyg(s).x.float() for s in strategies]
        if not xs:
            return torch.zeros(0, self.num_nodes, self.in_dim)
        return torch.stack(xs)

    def batch(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """(x, edge_index, batch, num_graphs) for a stack of node-feature matrices."""
        n = int(feats.shape[0])
        x = feats.reshape(n * self.num_nodes, self.in_dim)
        e = self.edge_index.shape[1]
        offsets = (torch.arange(n) * self.num_nodes).repeat_interleave(e)
        edge_index = self.edge_index.repeat(1, n) + offsets
        batch = torch.arange(n).repeat_interleave(self.num_nodes)
        return x, edge_index, batch, n

    def forward(self, encoder: StructureEncoder, feats: Tensor) -> Tensor:
        """Embeddings of a stack of node-feature matrices (B, N, F) of this graph."""
        return encoder.forward_dense(feats, self.adj)

    @torch.no_grad()
    def embed(
        self, encoder: StructureEncoder, strategies: Sequence[DescribedStrategy], batch_size: int = 512
    ) -> Tensor:
        was_training = encoder.training
        encoder.eval()
        out = []
        strategies = list(strategies)
        with torch_threads(self.threads):
            for i in range(0, len(strategies), batch_size):
                out.append(self.forward(encoder, self.features(strategies[i : i + batch_size])))
        encoder.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, encoder.config["embed_dim"])

    @torch.no_grad()
    def similarity(
        self, encoder: StructureEncoder, strategies: Sequence[DescribedStrategy], batch_size: int = 512
    ) -> Tensor:
        was_training = encoder.training
        encoder.eval()
        anchor = self.forward(encoder, self.unpruned_x.unsqueeze(0))
        encoder.train(was_training)
        return self.embed(encoder, strategies, batch_size) @ anchor[0]


def gcn_dense_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Dense D^-1/2 (A + I) D^-1/2 exactly as GCNConv normalises (self loops, target-degree),
    with rows = targets, so `adj @ h` is GCNConv's propagation."""
    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    adj = torch.zeros(num_nodes, num_nodes)
    adj.index_put_((ei[1], ei[0]), w, accumulate=True)
    return adj
