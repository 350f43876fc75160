"""CLI commands of the hashing side: `acpsearch train` and `acpsearch evaluate`.

`--task classification` (train) and a classifier checkpoint (evaluate) go to
`acpsearch.commands.classify`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from acpsearch.commands.common import app, print_metrics
from acpsearch.errors import DataError, SpecError
from acpsearch.service.spec import MAX_BATCH_SIZE, MAX_EPOCHS, SEED_LIMIT
from acpsearch.trust import ALLOW_HELP

SEED_HELP = f"in [0, {SEED_LIMIT})"
DEVICE_HELP = "auto (cuda when a GPU is visible), cpu, cuda or cuda:N; cuda without a GPU is an error"


def _protocol(query: int, train: int, val: int, seed: int) -> dict[str, int]:
    return {"query_per_class": query, "train_per_class": train, "val_per_class": val, "seed": seed}


def _metric_rows(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "test mAP@all": m["map_all"],
        f"test mAP@{m['topk']}": m["map_topk"],
        f"precision@{m['precision_n']}": m["precision_at_n"],
        "val mAP (val vs train)": m["val_map"],
        "bits": m["bits"],
        "queries / database": f"{m['n_query']} / {m['n_database']}",
    }


def _check_numbers(epochs: int, batch_size: int, lr: float) -> None:
    for flag, value, most in (("--epochs", epochs, MAX_EPOCHS), ("--batch-size", batch_size, MAX_BATCH_SIZE)):
        if value < 1:
            raise SpecError(f"{flag}: must be >= 1, got {value}")
        if value > most:
            raise SpecError(f"{flag}: must be in [1, {most}], got {value}")
    if not lr > 0 or not math.isfinite(lr):
        raise SpecError(f"--lr: must be a positive number, got {lr}")


@app.command()
def train(
    model: str = typer.Option(
        "resnet20", "--model", help="zoo model: resnet20, resnet32, resnet56, vgg11, vgg16, alexnet, mobilenetv2"
    ),
    dataset: str = typer.Option(
        "fashion-mnist", "--dataset", help="digits, mnist5k, fashion-mnist, cifar10, folder, npz, listfile"
    ),
    task: str = typer.Option("retrieval", "--task", help="retrieval (a hash network) or classification"),
    bits: int | None = typer.Option(None, "--bits", help="code length K (retrieval; default 32)"),
    loss: str | None = typer.Option(
        None,
        "--loss",
        help="retrieval: csq (default), hashnet, dpsh, lagnh (no labels), odh; classification: cross-entropy",
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help="--loss odh: classifier checkpoint whose class matrix feeds the learned centres"
    ),
    aux: str | None = typer.Option(None, "--aux", help="lagnh: auxiliary tags kmeans (default), bovw or file"),
    tags: str | None = typer.Option(None, "--tags", help="lagnh --aux file: tag file (.npz 'tags', .npy, text)"),
    label_smoothing: float | None = typer.Option(
        None, "--label-smoothing", help="classification: label smoothing of the cross-entropy, in [0, 1)"
    ),
    epochs: int = typer.Option(20, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(128, "--batch-size"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="where user-supplied data lives"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_LIMIT - 1, help=SEED_HELP),
    query_per_class: int | None = typer.Option(None, "--query-per-class", help="default: the data set's"),
    train_per_class: int | None = typer.Option(None, "--train-per-class", help="default: the data set's"),
    val_per_class: int | None = typer.Option(None, "--val-per-class", help="default: the data set's"),
    train_list: str | None = typer.Option(None, "--train-list", help="listfile: training list"),
    database_list: str | None = typer.Option(None, "--database-list", help="listfile: database list"),
    test_list: str | None = typer.Option(None, "--test-list", help="listfile: query list"),
    image_size: int | None = typer.Option(
        None, "--image-size", help="listfile/folder: resize (shorter side) + centre crop"
    ),
    workers: int = typer.Option(0, "--workers", min=0, max=64, help="DataLoader workers of a streamed data set"),
    normalize: str = typer.Option("train", "--normalize", help="train (training-split statistics) or none"),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="random crop with padding"),
    hflip: bool = typer.Option(False, "--hflip/--no-hflip", help="random horizontal flip (with --augment)"),
    topk: int | None = typer.Option(None, "--topk", help="k of the reported mAP@k (retrieval; default 1000)"),
    out: Path = typer.Option(..., "--out", help="checkpoint to write (.pt)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Train a zoo hash network (or, with --task classification, a classifier) on a data set and
    save a checkpoint (then report test metrics: mAP, or top-1 accuracy for a classifier).

    --seed fixes the data split, the initial weights (python, numpy and torch are seeded before the
    model is built), the batch order and the augmentation: the same command gives the same weights
    on the same machine and device."""
    if task not in ("retrieval", "classification"):
        raise SpecError(f"--task: must be retrieval or classification, got {task!r}")
    _check_numbers(epochs, batch_size, lr)
    if task == "classification" and (aux is not None or tags is not None):
        raise SpecError(f"{'--aux' if aux is not None else '--tags'}: auxiliary tags are for --loss lagnh (retrieval)")
    if teacher is not None and (loss or "").lower() != "odh":
        raise SpecError("--teacher: only with --loss odh (the classifier that feeds ODH's learned centres)")
    if task == "classification":
        from acpsearch.commands.classify import ClassifyOptions, refuse_retrieval_flags, train_classifier_run

        closs = refuse_retrieval_flags(bits, loss, topk)
        if normalize not in ("train", "none"):
            raise SpecError(f"--normalize: must be 'train' or 'none', got {normalize!r}")
        caps = {"train_per_class": train_per_class, "val_per_class": val_per_class, "test_per_class": query_per_class}
        lists = (("train_list", train_list), ("database_list", database_list), ("test_list", test_list))
        opts = {k: v for k, v in (*lists, ("image_size", image_size)) if v is not None}
        run = ClassifyOptions(
            model=model,
            dataset=dataset,
            loss=closs,
            label_smoothing=label_smoothing or 0.0,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            data_dir=data_dir,
            seed=seed,
            caps=caps,
            data_options=opts,
            normalize=normalize == "train",
            augment=augment,
            hflip=hflip,
            out=out,
            json_out=json_out,
            progress=progress,
            device=device,
        )
        train_classifier_run(run)
        return
    if label_smoothing is not None:
        raise SpecError("--label-smoothing: is for --task classification; hash losses take no label smoothing")
    bits = 32 if bits is None else bits
    loss = "csq" if loss is None else loss
    topk = 1000 if topk is None else topk
    from acpsearch.checkpoint import save_zoo_checkpoint
    from acpsearch.hashing import (
        LOSS_NAMES,
        MODEL_NAMES,
        checkpoint_meta,
        create_model,
        evaluate,
        load_dataset,
        make_splits,
        train_hash_net,
    )

    if loss.lower() not in LOSS_NAMES:
        raise SpecError(f"--loss: unknown loss {loss!r}; known: {', '.join(LOSS_NAMES)}")
    from acpsearch.commands import labelfree

    label_free = labelfree.check_flags(loss, aux, tags)
    for flag, value, most in (("--bits", bits, 4096), ("--topk", topk, None)):
        if value < 1:
            raise SpecError(f"{flag}: must be >= 1, got {value}")
        if most is not None and value > most:
            raise SpecError(f"{flag}: must be in [1, {most}], got {value}")
    from acpsearch.devices import resolve_device, seed_everything
    from acpsearch.outputs import atomic_out, check_out

    dev = resolve_device(device, "--device")  # before any work: cuda without a GPU is exit 2

    check_out(out)  # a directory or an unwritable place is refused before training
    if model.lower() not in MODEL_NAMES:  # fail before loading data; create_model words the error
        create_model(model, bits=bits)
    if normalize not in ("train", "none"):
        raise SpecError(f"--normalize: must be 'train' or 'none', got {normalize!r}")
    data_opts: dict[str, Any] = {
        k: v
        for k, v in (
            ("train_list", train_list),
            ("database_list", database_list),
            ("test_list", test_list),
            ("image_size", image_size),
        )
        if v is not None
    }
    ds = load_dataset(dataset, data_dir, workers=workers, seed=seed, **data_opts)
    splits = make_splits(
        ds, query_per_class, train_per_class, val_per_class, seed=seed, normalize=normalize, stratify=not label_free
    )
    lf = labelfree.setup(ds, splits, aux, tags, seed, json_out) if label_free else None
    c, h, _w = splits.input_shape
    seed_everything(seed)  # before the model is built: the seed fixes the initial weights
    net = create_model(model, bits=bits, in_channels=c, image_size=h).to(dev)
    extra: dict[str, Any] = dict(lf.meta) if lf is not None else {}
    if loss.lower() == "odh":  # learned centres, two stages (acpsearch.service.odh)
        from acpsearch.service.odh import OdhRun, train_odh_base

        odh_run = OdhRun(model.lower(), teacher, epochs, lr, batch_size, seed, hflip, dev, progress and not json_out)
        result, extra["odh"] = train_odh_base(net, splits, odh_run, say=lambda m: typer.echo(m, err=True))
    else:
        result = train_hash_net(
            net,
            lf.splits if lf is not None else splits,  # label-free: tags in place of labels
            loss=loss.lower(),
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            progress=progress and not json_out,
            augment=augment,
            hflip=hflip,
            **({"loss_kwargs": lf.loss_kwargs, "val_score": lf.val_score} if lf is not None else {}),
        )
    metrics = evaluate(result.model, splits, topk=topk)
    meta = checkpoint_meta(
        splits,
        loss.lower(),
        result,
        metrics,
        data_dir=data_dir,
        data_options=data_opts,
        bits=bits,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        hflip=hflip,
        device=str(dev),
        **extra,
    )
    with atomic_out(out) as tmp:  # temp file + rename: a failed write leaves nothing at --out
        save_zoo_checkpoint(tmp, result.model, model.lower(), bits, c, h, meta)
    path = out
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "checkpoint": str(path),
                    "model": model.lower(),
                    "dataset": splits.dataset,
                    "loss": loss.lower(),
                    "epochs": result.epochs_run,
                    "best_epoch": result.best_epoch,
                    "seconds_per_epoch": round(result.seconds_per_epoch, 3),
                    "device": str(dev),
                    "metrics": metrics,
                }
            )
        )
        return
    rows = {
        "checkpoint": str(path),
        "best epoch": f"{result.best_epoch} of {result.epochs_run}",
        "s / epoch": round(result.seconds_per_epoch, 2),
        **_metric_rows(metrics),
    }
    print_metrics(f"{model} / {loss} / {bits} bits on {splits.dataset}", rows)


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="checkpoint written by train / prune / export"),
    dataset: str | None = typer.Option(None, "--dataset", help="default: the data set stored in the checkpoint"),
    data_dir: str | None = typer.Option(None, "--data-dir"),
    topk: int | None = typer.Option(None, "--topk", help="k of mAP@k (hash networks; default 1000)"),
    query_per_class: int | None = typer.Option(None, "--query-per-class"),
    train_per_class: int | None = typer.Option(None, "--train-per-class"),
    val_per_class: int | None = typer.Option(None, "--val-per-class"),
    seed: int | None = typer.Option(
        None, "--seed", min=0, max=SEED_LIMIT - 1, help=f"protocol seed {SEED_HELP} (default: the checkpoint's)"
    ),
    train_list: str | None = typer.Option(None, "--train-list", help="listfile (default: the checkpoint's)"),
    database_list: str | None = typer.Option(None, "--database-list", help="listfile (default: the checkpoint's)"),
    test_list: str | None = typer.Option(None, "--test-list", help="listfile (default: the checkpoint's)"),
    workers: int = typer.Option(0, "--workers", min=0, max=64, help="DataLoader workers of a streamed data set"),
    json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    allow_factory: list[str] | None = typer.Option(None, "--allow-factory", help=ALLOW_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Evaluate a checkpoint: test mAP@all / mAP@k / precision@N and validation mAP of a hash
    network; validation and test top-1 accuracy (top-5 with 20 or more classes) of a classifier."""
    from acpsearch.checkpoint import model_from_checkpoint, model_task, read_checkpoint, validate_checkpoint
    from acpsearch.devices import resolve_device
    from acpsearch.hashing import evaluate as evaluate_model
    from acpsearch.hashing import load_dataset, make_splits
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.from_user(allow_factory)
    if topk is not None and topk < 1:
        raise SpecError(f"--topk: must be >= 1, got {topk}")
    dev = resolve_device(device, "--device")
    ckpt = read_checkpoint(checkpoint)
    validate_checkpoint(ckpt, f"checkpoint {str(checkpoint)!r}")
    if model_task(ckpt["model"]) == "classification":
        caps = {"train_per_class": train_per_class, "val_per_class": val_per_class, "test_per_class": query_per_class}
        _evaluate_classifier(ckpt, checkpoint, policy, dataset, data_dir, topk, caps, seed, dev, json_out)
        return
    topk = 1000 if topk is None else topk
    meta = ckpt.get("meta") or {}
    name = dataset or meta.get("dataset")
    if not name:
        raise SpecError("--dataset: the checkpoint stores no data set; pass --dataset")
    directory = data_dir if data_dir is not None else (meta.get("data_dir") if name == meta.get("dataset") else None)
    from acpsearch.hashing.data import protocol_defaults

    same = name == meta.get("dataset")
    stored = (meta.get("protocol") or {}) if same else {}
    default = protocol_defaults(name)
    proto = _protocol(
        query_per_class
        if query_per_class is not None
        else int(stored.get("query_per_class", default["query_per_class"])),
        train_per_class
        if train_per_class is not None
        else int(stored.get("train_per_class", default["train_per_class"])),
        val_per_class if val_per_class is not None else int(stored.get("val_per_class", default["val_per_class"])),
        seed if seed is not None else int(stored.get("seed", 0)),
    )
    model = model_from_checkpoint(ckpt, source=f"checkpoint {str(checkpoint)!r}", allow_factories=policy)
    stored_opts = meta.get("data_options") if same else None
    if not isinstance(stored_opts, dict):
        stored_opts = {}
    opts = {k: v for k, v in stored_opts.items() if k in ("train_list", "database_list", "test_list", "image_size")}
    given = {
        k: v
        for k, v in (("train_list", train_list), ("database_list", database_list), ("test_list", test_list))
        if v is not None
    }
    if given:  # lists on the command line replace the stored ones
        opts = {k: v for k, v in opts.items() if k == "image_size"} | given
    ds = load_dataset(name, directory, seed=proto["seed"], workers=workers, **opts)
    # the checkpoint's own preprocessing (meta.preprocess) when it stores one: what its network was trained on
    pre = meta.get("preprocess")
    norm: Any = {"mean": pre["mean"], "std": pre["std"]} if isinstance(pre, dict) and "mean" in pre else "train"
    splits = make_splits(
        ds, **proto, normalize=norm, stratify=meta.get("supervision") != "none"
    )  # label-free: as trained
    want = tuple(int(v) for v in ckpt["input_shape"][1:])
    if splits.input_shape[0] != want[0]:
        raise DataError(
            f"--dataset: {name} images have {splits.input_shape[0]} channels, the checkpoint's model expects {want[0]}"
        )
    metrics = evaluate_model(model.to(dev), splits, topk=topk)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "dataset": splits.dataset,
                    "protocol": proto,
                    "model": ckpt["model"],
                    "pruned": bool(ckpt.get("pruning")),
                    "metrics": metrics,
                }
            )
        )
        return
    print_metrics(f"{checkpoint} on {splits.dataset}", _metric_rows(metrics))


def _evaluate_classifier(
    ckpt: dict[str, Any],
    checkpoint: Path,
    policy: Any,
    dataset: str | None,
    data_dir: str | None,
    topk: int | None,
    caps: dict[str, int | None],
    seed: int | None,
    dev: Any,
    json_out: bool,
) -> None:
    from acpsearch.checkpoint import model_from_checkpoint
    from acpsearch.commands.classify import evaluate_classifier_run

    if topk is not None:
        raise SpecError("--topk: mAP@k is a retrieval metric; this checkpoint is a classifier (top-1 accuracy)")
    model = model_from_checkpoint(ckpt, source=f"checkpoint {str(checkpoint)!r}", allow_factories=policy)
    evaluate_classifier_run(
        ckpt, checkpoint, model, dataset=dataset, data_dir=data_dir, caps=caps, seed=seed, device=dev, json_out=json_out
    )
