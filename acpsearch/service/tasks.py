"""Work that runs on Ray workers: candidate ranking (actors), finalist fine-tuning (a Ray Tune
function trainable) and test evaluation (tasks). Workers never write to the Optuna storage:
the driver is the one writer of a study, workers return values.

Models travel as acpsearch checkpoint dicts (tensors + config, no pickled modules); the spec travels
as the StudySpec model (a stored spec was parsed back into one, so keys added after it was stored
have their defaults); data sets are loaded on the worker from the spec (deterministic splits), so
nothing large is shipped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from acpsearch.service import keys, labelfree
from acpsearch.service.labelfree import light_splits as light_splits  # the splits of workers and trials
from acpsearch.service.spec import StudySpec
from acpsearch.service.spec.supervision import select_of

if TYPE_CHECKING:
    from acpsearch.hashing import Splits


def worker_threads(n: int | None = None) -> None:
    """One torch thread per Ray CPU slot: oversubscribing 2 cores with N threads each is slower."""
    torch.set_num_threads(int(n or os.environ.get("ACPSEARCH_TORCH_THREADS") or 1))


@functools.lru_cache(maxsize=2)
def _splits_cached(data_json: str, task: str = "retrieval") -> Splits:
    from acpsearch.hashing.data import splits_from_data

    if task == "classification":
        from acpsearch.service.classify import classifier_splits

        return classifier_splits(json.loads(data_json))
    return splits_from_data(json.loads(data_json))


def load_splits(spec: StudySpec) -> Splits:
    """The protocol splits of a spec (cached per process); a classification study's test split
    is in `query` (service.classify.classifier_splits)."""
    data_json = json.dumps(spec.data.model_dump(mode="json"), sort_keys=True)
    return _splits_cached(data_json, spec.task) if spec.task == "classification" else _splits_cached(data_json)


def example_input(ckpt: dict[str, Any]) -> torch.Tensor:
    return torch.zeros(*[int(v) for v in ckpt["input_shape"]])


LATENCY_BATCH = 32  # the batch size of every reported latency (and of the latency table)


def measure_latency_ms(
    model: torch.nn.Module, input_shape: list[int], batch: int = LATENCY_BATCH, repeats: int = 10, warmup: int = 3
) -> float:
    """Median wall time of one forward of `batch` images (ms), one thread, channels_last.

    Our own few lines: torch.utils.benchmark adds nothing for a median of plain forwards."""
    shape = [batch, *[int(v) for v in input_shape[1:]]]
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    model = model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same setting for base and finalists, wherever they are measured
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1000.0)


def build_ranker(
    name: str,
    ckpt: dict[str, Any],
    spec: StudySpec,
    encoder_state: dict[str, Any] | None,
    splits: Any | None,
    allow_factories: Any = None,
    device: Any = None,
) -> tuple[Any, Any]:
    """(ChannelGraph, Ranker) for `name`, built from the base checkpoint (driver or worker side).

    `device` (None: the CPU): where the functional rankers (adaptive_bn, code_agreement, branch_damage,
    ft_steps) run the pruned nets' forwards, batch-norm recalibration and short fine-tunes; pruning and
    the graph stay on the CPU."""
    from acpsearch.checkpoint import model_from_checkpoint
    from acpsearch.graph import ChannelGraph
    from acpsearch.search.rankers import make_ranker

    model = model_from_checkpoint(ckpt, source="base network", allow_factories=allow_factories)
    ex = example_input(ckpt)
    graph = ChannelGraph.from_model(
        model, ex, hash_layer=spec.model.hash_layer, prune_code=spec.budget.bits is not None
    )
    ctx: dict[str, Any] = {
        "graph": graph,
        "model": model,
        "example_input": ex,
        "criterion": spec.space.criterion,
        "seed": spec.search.seed,
        "splits": splits,
        "select": select_of(spec),  # adaptive_bn: val mAP, or neighbour mAP against the unpruned net
    }
    if name == "similarity":
        from acpsearch.encoder import StructureEncoder

        assert encoder_state is not None, "the similarity ranker needs the trained structure encoder"
        ctx["encoder"] = StructureEncoder.from_state(encoder_state)
    if name in ("code_agreement", "branch_damage") and splits is not None:
        gen = torch.Generator().manual_seed(int(spec.search.seed))
        X = splits.train[0]
        ctx["calib_X"] = X[torch.randperm(len(X), generator=gen)[: 20 * 128]]
        ctx["probe_X"] = splits.val[0][:1000]
    if name == "ft_steps":  # the encoder's ft_steps target: a short fine-tune with the study's hash loss
        from acpsearch.hashing.odh import loss_kwargs_from_meta

        ctx["steps"] = int(spec.encoder.ft_steps)
        # the finalists' loss and optimiser settings; no augmentation or distillation in the signal
        ctx["recipe"] = {k: v for k, v in finetune_recipe(spec).items() if k in ("loss", "lr", "batch_size", "seed")}
        stored = loss_kwargs_from_meta(spec.train.loss, ckpt.get("meta"))
        if stored:
            ctx["recipe"]["loss_kwargs"] = stored
    functional = ("adaptive_bn", "code_agreement", "branch_damage", "ft_steps")
    if device is not None and torch.device(device).type != "cpu" and name in functional:
        ctx["device"] = device
    return graph, make_ranker(name, task=spec.task, **ctx)


class RankerWorker:
    """Ray actor: holds the graph and a ranker, scores batches of keep-ratio dicts."""

    def __init__(
        self,
        name: str,
        ckpt: dict[str, Any],
        spec: StudySpec,
        encoder_state: dict[str, Any] | None,
        splits: Any | None = None,
        threads: int = 1,
        allow_factories: Any = None,
        gpu: float = 0.0,
    ) -> None:
        from acpsearch.devices import worker_device

        worker_threads(threads)
        self.spec = spec
        self.device = worker_device(gpu)  # cuda when Ray gave this actor a GPU (search.resources.gpu > 0)
        self.graph, self.ranker = build_ranker(
            name, ckpt, spec, encoder_state, splits, allow_factories, device=self.device
        )

    def node_id(self) -> str:
        """The Ray node this actor runs on (short hex), recorded on the trials it scores."""
        import ray

        return ray.get_runtime_context().get_node_id()[:12]

    def score(self, ratios: list[dict[str, float]], round_to: int = 4) -> list[float]:
        from acpsearch.pruning import PruningStrategy

        crit = self.spec.space.criterion
        strategies = [PruningStrategy(self.graph, r, criterion=crit, round_to=round_to) for r in ratios]
        return [float(v) for v in self.ranker.score(strategies)]


def finetune_trainable(
    config: dict[str, Any],
    ckpt: dict[str, Any] | None = None,
    spec: StudySpec | None = None,
    splits: Any | None = None,
    out_dir: str = "",
    allow_factories: Any = None,
) -> None:
    """Ray Tune function trainable: prune the base net to one finalist, fine-tune it with the hash
    loss (a classifier: cross-entropy), report val mAP (a classifier: val top-1) every epoch (ASHA
    may stop it there). The best epoch is written to `out_dir/finalist-<number>.pt` BEFORE it is
    reported, so a stopped trial keeps its best model."""
    from ray import tune

    from acpsearch.checkpoint import model_from_checkpoint, save_checkpoint
    from acpsearch.devices import resources_of, worker_device
    from acpsearch.graph import ChannelGraph
    from acpsearch.hashing import train_hash_net
    from acpsearch.pruning import PruningStrategy, make_record
    from acpsearch.service.code_finalist import centre_aware_code
    from acpsearch.service.presparsity import cut

    assert ckpt is not None and spec is not None and splits is not None
    res = resources_of(spec.finetune)  # what this trial asked Ray for (trial_resources)
    worker_threads(config.get("threads", res["cpu"]))
    device = worker_device(res["gpu"])  # cuda when Ray gave the trial a GPU share
    fin = config["finalist"]
    base = model_from_checkpoint(ckpt, source="base network", allow_factories=allow_factories)
    # a label-free study (or finetune.select: neighbour_map) scores against the unpruned network
    score = labelfree.reference_score(spec, splits, base)
    ex = example_input(ckpt)
    graph = ChannelGraph.from_model(base, ex, hash_layer=spec.model.hash_layer, prune_code=spec.budget.bits is not None)
    strategy = PruningStrategy(graph, fin["ratios"], criterion=spec.space.criterion, round_to=int(fin["round_to"]))
    record = make_record(strategy)
    code_criterion = None  # a joint study's CSQ finalist trains towards the base's kept centres
    if spec.task == "retrieval":
        record, code_criterion = centre_aware_code(graph, strategy, record, spec.train.loss, splits.num_classes)
    code_centres = None if code_criterion is None else torch.as_tensor(code_criterion.centers).int().tolist()
    # pruned on the CPU, trained where Ray put the trial (finetune.sparsity: group penalty first)
    net, sparse = cut(base, graph, strategy, record, ex, spec, splits, device)
    path = Path(out_dir) / f"finalist-{fin['number']}.pt"
    metric = keys.metric_of(spec.task)
    best = {"val": -1.0}
    v0 = score(net) if score is not None else _val_score(net, splits, spec)  # step 0: before fine-tuning

    def save(val: float, epoch: int) -> None:
        save_checkpoint(
            path,
            net,
            ckpt["model"],
            ckpt["input_shape"],
            pruning=record,
            meta={
                **(ckpt.get("meta") or {}),
                "candidate": fin["number"],
                metric.val: val,
                "epoch": epoch,
                "finetune": spec.finetune.model_dump(mode="json"),
                **({"sparsity": sparse} if sparse else {}),
                # the centres this finalist's short code trains towards (the code: phase goes on from them)
                **({"code_centres": code_centres} if code_centres is not None else {}),
            },
        )

    import ray

    node = ray.get_runtime_context().get_node_id()[:12]

    def on_epoch(epoch: int, val: float) -> bool:
        if epoch == 0 or (not math.isnan(val) and val > best["val"]):
            best["val"] = val
            save(val, epoch)
        tune.report(
            {
                metric.val: float(val),
                "epoch": epoch,
                f"best_{metric.val}": float(best["val"]),
                "node": node,
                "device": device.type,
            }
        )
        return False

    on_epoch(0, v0)
    teacher = (
        model_from_checkpoint(ckpt, source="base network", allow_factories=allow_factories)
        if spec.finetune.distill > 0
        else None
    )
    if spec.task == "classification":
        from acpsearch.service import classify

        classify.train(net, splits, spec, finetune=True, callback=on_epoch, teacher=teacher, device=device)
    else:
        from acpsearch.hashing.odh import loss_kwargs_from_meta  # odh: the base's frozen centres

        recipe = {**finetune_recipe(spec), **labelfree.loss_options(spec, splits)}
        stored = loss_kwargs_from_meta(spec.train.loss, ckpt.get("meta"))
        if stored:
            recipe["loss_kwargs"] = stored
        if code_criterion is not None:
            recipe["loss"] = code_criterion
        train_hash_net(net, splits, progress=False, callback=on_epoch, teacher=teacher, val_score=score, **recipe)


def _val_score(net: torch.nn.Module, splits: Any, spec: StudySpec) -> float:
    """The validation value a finalist is scored by: val mAP, or a classifier's val top-1."""
    if spec.task == "classification":
        from acpsearch.service.classify import accuracy

        return accuracy(net, splits.val, "val")["val_acc"]
    from acpsearch.hashing import validation_map

    return float(validation_map(net, splits))


def finetune_recipe(spec: StudySpec) -> dict[str, Any]:
    """train_hash_net keyword arguments of a finalist's fine-tune (a spec stored before
    `finetune.augment` / `finetune.distill` existed was parsed with their defaults: no
    augmentation, no distillation)."""
    ft = spec.finetune
    return {
        "loss": spec.train.loss,
        "epochs": int(ft.epochs),
        "lr": float(ft.lr),
        "batch_size": int(ft.batch_size),
        "seed": int(spec.search.seed),
        "augment": bool(ft.augment),
        "hflip": bool(ft.hflip),
        "distill": float(ft.distill),
    }


def evaluate_checkpoint(
    path: str,
    spec: StudySpec,
    pr_curve: bool = True,
    latency: bool = True,
    threads: int | None = 1,
    allow_factories: Any = None,
) -> dict[str, Any]:
    """Test metrics of a stored model: test mAP@all / @1000 (query vs database), val mAP, measured
    cost, latency, and the precision-recall curve by Hamming radius (for the report's plot)."""
    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint
    from acpsearch.hashing import encode, mean_average_precision, precision_recall_curve, validation_map
    from acpsearch.pruning import measure_cost

    if threads:
        worker_threads(threads)
    splits = load_splits(spec)
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, source=f"checkpoint {path!r}", allow_factories=allow_factories)
    if spec.task == "classification":
        return _evaluate_classifier(model, ckpt, splits, latency)
    # One encoding of query + database serves mAP@all, mAP@k and the PR curve (hashing.evaluate
    # would encode them again; the database is most of the cost).
    q = encode(model, splits.query[0])
    db = encode(model, splits.database[0])
    ql, dl = splits.query[1], splits.database[1]
    k = min(1000, int(db.shape[0]))
    cost = measure_cost(model, example_input(ckpt))
    out: dict[str, Any] = {
        "test_map": float(mean_average_precision(q, db, ql, dl)),
        "test_map_topk": float(mean_average_precision(q, db, ql, dl, topk=k)),
        "topk": k,
        # a label-free study's validation score is the neighbour mAP of its training curves
        "val_map": None if labelfree.label_free(spec) else float(validation_map(model, splits)),
        "flops": int(cost.flops),
        "params": int(cost.params),
    }
    if cost.bops:  # a binary network: binary MACs, OPs and model bits as well
        out.update(bops=int(cost.bops), ops=float(cost.ops), model_bits=int(cost.model_bits))
    if pr_curve:
        out["pr_curve"] = _pr_to_lists(precision_recall_curve(q, db, ql, dl))
    if latency:
        out["latency_ms"] = round(measure_latency_ms(model, ckpt["input_shape"]), 3)
    return out


def _evaluate_classifier(model: torch.nn.Module, ckpt: dict[str, Any], splits: Any, latency: bool) -> dict[str, Any]:
    """A classifier's val / test accuracy (top-5 with 20 or more classes), cost and latency."""
    from acpsearch.pruning import measure_cost
    from acpsearch.service.classify import evaluate

    cost = measure_cost(model, example_input(ckpt))
    out: dict[str, Any] = {**evaluate(model, splits), "flops": int(cost.flops), "params": int(cost.params)}
    if latency:
        out["latency_ms"] = round(measure_latency_ms(model, ckpt["input_shape"]), 3)
    return out


def _pr_to_lists(pr: Any) -> dict[str, list[float]]:
    if isinstance(pr, dict):
        return {k: [float(v) for v in np.asarray(val).ravel()] for k, val in pr.items()}
    if isinstance(pr, (tuple, list)):
        names = ["precision", "recall", "radius"][: len(pr)]
        return {n: [float(v) for v in np.asarray(val).ravel()] for n, val in zip(names, pr)}
    raise TypeError(f"precision_recall_curve returned {type(pr).__name__}")
