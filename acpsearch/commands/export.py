"""`acpsearch export` (a study's winner or finalist as a checkpoint or deployment file) and
`acpsearch bench` (latency of an exported file in its own runtime)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import typer

from acpsearch.commands.common import STORAGE_HELP, _storage, app, out
from acpsearch.errors import SpecError, StorageError
from acpsearch.service import keys
from acpsearch.trust import ALLOW_HELP


@app.command()
def export(
    name: str = typer.Argument(..., help="study name"),
    out_path: Path = typer.Option(..., "--out", help="where to write the exported model"),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    trial: int | None = typer.Option(
        None, "--trial", help="a finalist trial number of NAME.finetune (default: the winner)"
    ),
    fmt: str = typer.Option(
        "acpsearch",
        "--format",
        help="acpsearch (checkpoint for acpsearch.load_model) | torchscript | onnx | pt2 "
        "(the last three load without acpsearch; verified against PyTorch after writing)",
    ),
    benchmark: bool = typer.Option(
        False,
        "--benchmark",
        help="also report the written file's latency in its own "
        "runtime next to the eager PyTorch model (median, 1 thread)",
    ),
    batch: int = typer.Option(1, "--batch", min=1, max=4096, help="batch size of --benchmark"),
    rounds: int = typer.Option(50, "--rounds", min=1, max=100000, help="timed rounds of --benchmark"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Write the winner (or a chosen fine-tuned finalist) as an acpsearch checkpoint, or for deployment
    as TorchScript / ONNX / torch.export (pt2) with its metadata (code length, input shape, preprocessing)."""
    import optuna

    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.export import bench_file, check_format, export_model, metadata_from_checkpoint
    from acpsearch.outputs import atomic_out, check_out
    from acpsearch.service import study as st
    from acpsearch.trust import FactoryPolicy

    fmt = check_format(fmt)  # a bad --format is refused before anything is opened
    check_out(out_path)  # a directory or an unwritable place is refused before the storage is opened
    policy = FactoryPolicy.from_user(allow_factory)
    url, st_obj = _storage(storage)
    study = st.load_search_study(st_obj, name)
    if trial is None:
        winner = study.user_attrs.get(keys.WINNER)
        if not winner:
            raise StorageError(f"study {name!r}: has no winner yet (state {study.user_attrs.get(keys.STATE)!r})")
        src, number = winner["path"], winner.get("finetune_trial")
    else:
        ft_name = study.user_attrs.get(keys.FINETUNE_STUDY)
        if not ft_name:
            raise StorageError(f"study {name!r}: has no fine-tuned finalists yet")
        ft = optuna.load_study(study_name=ft_name, storage=st_obj)
        match = [t for t in ft.get_trials(deepcopy=False) if t.number == trial]
        if not match or not match[0].user_attrs.get(keys.T_PATH):
            raise SpecError(f"--trial: study {ft_name!r} has no finished finalist trial {trial}")
        src, number = match[0].user_attrs[keys.T_PATH], trial
    if not Path(src).is_file():
        raise StorageError(f"study {name!r}: artifact {src!r} is missing (artifact directory moved?)")
    ckpt = read_checkpoint(src)  # validate before copying / converting
    res: dict[str, Any] = {"study": name, "finetune_trial": number, "out": str(out_path), "format": fmt}
    model = None
    if fmt == "acpsearch":
        with atomic_out(out_path) as tmp:  # temp file + rename: a failed copy leaves nothing at --out
            shutil.copyfile(src, tmp)
    else:
        import torch

        model = model_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}", allow_factories=policy)
        meta = metadata_from_checkpoint(ckpt, {"study": name, "finetune_trial": number, "checkpoint": str(src)})
        rep = export_model(model, out_path, fmt, torch.zeros(*ckpt["input_shape"]), meta)
        res.update({"exporter": rep["exporter"], "verification": rep["verification"], "metadata": rep["metadata"]})
    if benchmark:
        if model is None:
            model = model_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}", allow_factories=policy)
        res["benchmark"] = bench_file(
            out_path,
            eager=model if fmt != "acpsearch" else None,
            batch=batch,
            rounds=rounds,
            input_shape=list(ckpt["input_shape"]),
        )
    if json_out:
        out(res)
        return
    print(f"wrote {out_path} (study {name}, finalist trial {number}, format {fmt})")
    if fmt != "acpsearch":
        v = res["verification"]
        print(
            f"exporter: {res['exporter']}; verified against PyTorch: max abs diff {v['max_abs_diff']:.3g} "
            f"(allowed {v['atol']:g}), {v['code_bits_compared']} code bits identical"
        )
    if benchmark:
        _print_bench(res["benchmark"])


def _print_bench(b: dict[str, Any]) -> None:
    lat = b["latency"]
    print(
        f"latency, batch {b['batch']}, 1 thread, median of {b['rounds']} interleaved rounds "
        f"after {b['warmup']} warm-up calls:"
    )
    for key, v in lat.items():
        label = "eager PyTorch" if key == "eager" else f"{key} in {b['runtime']}"
        print(f"  {label}: {v['median_ms']:.3f} ms (min {v['min_ms']:.3f}, max {v['max_ms']:.3f})")
    if "eager" in lat and len(lat) == 2:
        other = next(k for k in lat if k != "eager")
        print(f"  {other} / eager: {lat[other]['median_ms'] / max(lat['eager']['median_ms'], 1e-9):.2f}x")


@app.command()
def bench(
    file: Path = typer.Argument(..., help="a file written by export / prune (torchscript, onnx, pt2 or acpsearch)"),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="acpsearch checkpoint of the same network: "
        "also time it as eager PyTorch (default: the source checkpoint named "
        "in the file's metadata, when it still exists)",
    ),
    batch: int = typer.Option(1, "--batch", min=1, max=4096, help="batch size"),
    rounds: int = typer.Option(50, "--rounds", min=1, max=100000, help="timed rounds"),
    warmup: int = typer.Option(5, "--warmup", min=0, max=10000, help="untimed warm-up calls per runtime"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Latency of an exported model in the runtime that will run it (TorchScript, onnxruntime, torch.export),
    next to the eager PyTorch model: median of interleaved rounds, one thread, after warm-up."""
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.export import bench_file, detect_format, load_exported
    from acpsearch.trust import FactoryPolicy

    if not file.is_file():
        raise SpecError(f"FILE: {str(file)!r} not found")
    policy = FactoryPolicy.from_user(allow_factory)
    detect_format(file)  # one line for a file of no known format
    eager, shape = None, None
    src = checkpoint
    if src is None:
        _, meta, _ = load_exported(file)
        named = (meta.get("source") or {}).get("checkpoint")
        src = Path(named) if named and Path(named).is_file() else None
    if src is not None:
        ckpt = read_checkpoint(src)
        eager = model_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}", allow_factories=policy)
        shape = list(ckpt["input_shape"])
    res = bench_file(file, eager=eager, batch=batch, rounds=rounds, warmup=warmup, input_shape=shape)
    res["eager_checkpoint"] = str(src) if src is not None else None
    if json_out:
        out(res)
        return
    print(
        f"{file}: {res['format']}"
        + (f", eager reference {src}" if src is not None else " (no eager reference: give --checkpoint)")
    )
    _print_bench(res)
