"""CLI commands of the pruning side: `inspect` (channel groups of a checkpoint) and `prune`
(manual uniform pruning to a new checkpoint that `load_model` reloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import typer

from acpsearch.commands.common import app
from acpsearch.errors import CheckpointError, SpecError
from acpsearch.service.spec import SEED_LIMIT
from acpsearch.trust import ALLOW_HELP


def _load(
    checkpoint: Path, allow_factory: list[str] | None = None
) -> tuple[dict[str, Any], torch.nn.Module, torch.Tensor]:
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.from_user(allow_factory)
    ckpt = read_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, source=f"checkpoint {str(checkpoint)!r}", allow_factories=policy)
    example = torch.zeros(*ckpt["input_shape"])
    return ckpt, model, example


@app.command("inspect")
def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint written by train / prune / export"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    hash_layer: str | None = typer.Option(None, "--hash-layer", help="dotted module name of the hash layer"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
) -> None:
    """Show the prunable channel groups of a model: channels, FLOPs share, params share."""
    from acpsearch.graph import ChannelGraph

    ckpt, model, example = _load(checkpoint, allow_factory)
    g = ChannelGraph.from_model(model, example, hash_layer=hash_layer)
    g.require_groups()
    cost = g.cost()
    doc = {
        "checkpoint": str(checkpoint),
        "hash_layer": g.hash_layer,
        "flops": cost.flops,
        "params": cost.params,
        "nodes": len(g.nodes),
        "pruned": bool(ckpt.get("pruning")),
        "groups": [
            {k: v for k, v in row.items() if k != "modules"} | {"modules": row["modules"]} for row in g.summary()
        ],
    }
    if as_json:
        typer.echo(json.dumps(doc))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{checkpoint}: {len(g.groups)} prunable groups, {cost.flops:,} MACs, {cost.params:,} params, "
        f"hash layer {g.hash_layer}"
    )
    for col in ("group", "channels", "divisor", "FLOPs share", "params share", "modules"):
        # group names must stay whole (users copy them into strategies); module lists may fold
        t.add_column(
            col,
            justify="right" if col not in ("group", "modules") else "left",
            no_wrap=col != "modules",
            overflow="fold",
        )
    for row in g.summary():
        mods = ", ".join(row["modules"][:4]) + (" ..." if len(row["modules"]) > 4 else "")
        t.add_row(
            row["name"],
            str(row["channels"]),
            str(row["divisor"]),
            f"{row['flops_share']:.3f}",
            f"{row['params_share']:.3f}",
            mods,
        )
    Console().print(t)


@app.command("prune")
def prune_cmd(
    checkpoint: Path = typer.Argument(..., help="unpruned checkpoint (train output)"),
    keep: float = typer.Option(..., "--keep", help="keep ratio for every group, in (0, 1]"),
    criterion: str = typer.Option("l1", "--criterion", help="l1 | l2 | bn_scale | fpgm | random"),
    round_to: int = typer.Option(4, "--round-to", help="kept channels are multiples of this"),
    seed: int = typer.Option(
        0, "--seed", min=0, max=SEED_LIMIT - 1, help=f"seed of the random criterion, in [0, {SEED_LIMIT})"
    ),
    out: Path = typer.Option(..., "--out", help="pruned checkpoint to write"),
    fmt: str = typer.Option(
        "acpsearch",
        "--format",
        help="acpsearch (a checkpoint load_model reloads) | "
        "torchscript | onnx | pt2 (for deployment without acpsearch; see `acpsearch export`)",
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
) -> None:
    """Prune every channel group uniformly; print the cost before/after and write a checkpoint."""
    from acpsearch.checkpoint import save_pruned
    from acpsearch.graph import ChannelGraph
    from acpsearch.outputs import atomic_out, check_out
    from acpsearch.pruning import PruningStrategy, measure_cost, prune

    if criterion == "taylor":
        raise SpecError(
            "--criterion: taylor needs data; use the library "
            "(acpsearch.pruning.set_taylor_importance(graph, model, batches))"
        )
    from acpsearch.export import check_format, export_model, metadata_from_checkpoint

    fmt = check_format(fmt)
    check_out(out)  # a directory or an unwritable place is refused before any work
    ckpt, model, example = _load(checkpoint, allow_factory)
    if ckpt.get("pruning"):
        raise CheckpointError(f"checkpoint {str(checkpoint)!r}: already pruned; prune its unpruned base instead")
    g = ChannelGraph.from_model(model, example)
    s = PruningStrategy.uniform(g, keep, criterion=criterion, round_to=round_to, seed=seed)
    pruned = prune(model, s, example)
    before, after = g.cost(), measure_cost(pruned, example)
    meta = dict(ckpt.get("meta") or {})
    meta.update(
        {
            "pruned_from": str(checkpoint),
            "strategy": s.to_dict(),
            "base_cost": before.to_dict(),
            "cost": after.to_dict(),
        }
    )
    exported = None
    if fmt == "acpsearch":
        with atomic_out(out) as tmp:  # temp file + rename: a failed write leaves nothing at --out
            save_pruned(tmp, pruned, s, ckpt["model"], ckpt["input_shape"], meta=meta)
    else:  # verified in its own runtime; written through atomic_out as well
        source = {"checkpoint": str(checkpoint), "keep": keep, "criterion": criterion}
        record = getattr(pruned, "acp_pruning_record", None)
        emeta = metadata_from_checkpoint({**ckpt, "meta": meta, "pruning": record}, source)
        exported = export_model(pruned, out, fmt, example, emeta)
    doc = {
        "out": str(out),
        "format": fmt,
        "before": before.to_dict(),
        "after": after.to_dict(),
        "flops_ratio": after.flops / max(before.flops, 1),
        "params_ratio": after.params / max(before.params, 1),
    }
    if exported is not None:
        doc.update({"exporter": exported["exporter"], "verification": exported["verification"]})
    if as_json:
        typer.echo(json.dumps(doc))
        return
    typer.echo(f"before: {before.flops:,} MACs, {before.params:,} params")
    typer.echo(
        f"after:  {after.flops:,} MACs ({doc['flops_ratio']:.3f}), {after.params:,} params ({doc['params_ratio']:.3f})"
    )
    typer.echo(f"wrote {out}" + (f" ({fmt})" if fmt != "acpsearch" else ""))
    if exported is not None:
        v = exported["verification"]
        typer.echo(
            f"exporter: {exported['exporter']}; verified against PyTorch: max abs diff "
            f"{v['max_abs_diff']:.3g} (allowed {v['atol']:g}), {v['code_bits_compared']} code bits identical"
        )
