"""The phases of a study, each recorded in Optuna storage so that a resumed run skips them.

    base      load the checkpoint or train the base network      -> artifact base.pt, metrics
    encoder   train the GCN structure encoder (if the ranker needs it) -> artifact encoder.pt
    search    Optuna ask/tell over the dynamic space; Ray actors score candidates (one trial each)
    rerank    optional: a costlier ranker re-scores the top tier (Ray actors)
    finetune  top-m finalists pruned + fine-tuned as Ray Tune trials (ASHA), one trial each in
              the companion study NAME.finetune (curve = intermediate values; ASHA-stopped = PRUNED)
    select    winner by validation mAP; test mAP of base and finalists (Ray tasks); winner exported
    report    study note (markdown), JSON report and plots as artifacts

The driver is the only writer of the study (workers return values). State = storage + artifact
directory: phase records hold artifact paths, candidate/finalist progress is the trials.
"""

from __future__ import annotations

import math
import random
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acpsearch.errors import AcpError, CheckpointError, DataError, SpecError, StorageError
from acpsearch.service import study as st
from acpsearch.service.spec import StudySpec


# --- reporting -----------------------------------------------------------------------------------
class Reporter:
    """Progress sink; the CLI passes a rich-based one, library callers get silence."""

    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1, **info: Any) -> None: ...
    def done(self, name: str, seconds: float, skipped: bool = False) -> None: ...
    def log(self, msg: str) -> None: ...


def clean(value: Any) -> Any:
    """JSON-safe copy for storage (NaN/inf -> None, numpy -> Python): the dashboard parses
    attributes as strict JSON, where NaN is invalid."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- context -------------------------------------------------------------------------------------
@dataclass
class Context:
    storage: Any
    url: str
    study: Any
    spec: StudySpec
    artifacts: Path
    store: Any
    reporter: Reporter
    workers: int
    lease: st.Lease | None = None
    splits: Any = None
    base_ckpt: dict[str, Any] | None = None
    graph: Any = None
    encoder_state: dict[str, Any] | None = None
    space: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    allow: Any = None  # acpsearch.trust.FactoryPolicy: the factory modules this run may import

    def __post_init__(self) -> None:
        if self.allow is None:  # built without one: the user's allow-list and the spec's own factory
            self.allow = factory_policy(self.spec)

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def spec_dict(self) -> dict[str, Any]:
        return self.spec.to_dict()

    def dir(self) -> Path:
        d = self.artifacts / "studies" / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def check(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def upload(self, path: Path, target: Any = None, mimetype: str | None = None) -> str:
        """Register a file in the dashboard's artifact store (it keeps its own copy)."""
        from optuna.artifacts import upload_artifact

        if mimetype is None and path.suffix == ".pt":
            mimetype = "application/octet-stream"  # mimetypes guesses a SNES page table for .pt
        kw = {"mimetype": mimetype} if mimetype else {}
        return upload_artifact(
            artifact_store=self.store,
            file_path=str(path),
            study_or_trial=target if target is not None else self.study,
            **kw,
        )


# --- data / model helpers ------------------------------------------------------------------------
def load_data(spec: StudySpec) -> Any:
    from acpsearch.service.tasks import load_splits

    return load_splits(spec.to_dict())


def factory_policy(spec: StudySpec, allow_factories: Any = None, trust_spec: bool = True) -> Any:
    """The FactoryPolicy of a run: the user's allow-list (option / keyword + environment), plus the
    spec's own model.factory module, and its model.path as the place to look for factory modules,
    when the user gave that spec (submit, run; not a worker: whoever can write the storage could
    point model.path at a module of the same name)."""
    from acpsearch.trust import FactoryPolicy

    policy = FactoryPolicy.coerce(allow_factories)
    return policy.with_spec(spec).searching(spec.model.path) if trust_spec else policy


def build_model(
    spec: StudySpec, input_shape: tuple[int, int, int], allow_factories: Any = None
) -> tuple[Any, dict[str, Any]]:
    """An untrained base network for the data's input shape, and its checkpoint model config
    (allow_factories None: the spec's own factory is trusted, the user wrote it)."""
    from acpsearch.checkpoint import build_from_config

    c, h, w = input_shape
    if spec.model.zoo is not None:
        cfg = {
            "zoo": spec.model.zoo,
            "kwargs": {"bits": spec.model.bits, "in_channels": c, "image_size": h, **spec.model.kwargs},
        }
    else:
        cfg = {"factory": spec.model.factory, "kwargs": dict(spec.model.kwargs)}
    try:
        policy = allow_factories if allow_factories is not None else factory_policy(spec)
        return build_from_config(cfg, allow_factories=policy, source="spec"), cfg
    except AcpError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user factory failing is bad input
        raise SpecError(f"model: cannot build the network ({type(exc).__name__}: {str(exc)[:160]})") from None


def read_base_checkpoint(
    spec: StudySpec, input_shape: tuple[int, int, int], allow_factories: Any = None
) -> dict[str, Any]:
    """The user's trained base network, checked against the data it will be pruned on (a factory the
    checkpoint names must be allowed: `allow_factories`, the environment, or the spec's own factory)."""
    from acpsearch.checkpoint import (
        FORMAT,
        VERSION,
        load_state_dict_strict,
        model_from_checkpoint,
        read_weights,
        spec_contradictions,
        validate_checkpoint,
    )

    assert spec.model.checkpoint
    kind, ckpt = read_weights(spec.model.checkpoint)
    policy = allow_factories if allow_factories is not None else factory_policy(spec)
    where = f"model.checkpoint {spec.model.checkpoint!r}"
    if kind == "state_dict":  # a plain state dict: the spec's model (zoo or factory) for the data's input
        net, cfg = build_model(spec, input_shape, allow_factories=policy)
        load_state_dict_strict(net, ckpt, where)
        ckpt = {
            "format": FORMAT,
            "version": VERSION,
            "model": cfg,
            "input_shape": [1, *input_shape],
            "pruning": None,
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "meta": {"dataset": spec.data.dataset, "bits": spec.model.bits},
        }
        validate_checkpoint(ckpt, where)
    shape = [int(v) for v in ckpt["input_shape"]]
    if tuple(shape[1:]) != tuple(input_shape):
        raise CheckpointError(
            f"model.checkpoint: {spec.model.checkpoint!r} expects input {tuple(shape[1:])}, "
            f"the data set {spec.data.dataset!r} has {tuple(input_shape)}"
        )
    model = model_from_checkpoint(ckpt, source=where, allow_factories=policy)
    if kind == "acpsearch":  # the spec's zoo / factory / kwargs / bits must not contradict the checkpoint's
        spec_contradictions(ckpt["model"], spec.model, where)
    import torch

    with torch.no_grad():
        out = model(torch.zeros(*shape))
    out = out[-1] if isinstance(out, (tuple, list)) else out
    if int(out.shape[-1]) != spec.model.bits:
        raise CheckpointError(
            f"model.checkpoint: the network outputs {int(out.shape[-1])} bits, model.bits is {spec.model.bits}"
        )
    return ckpt


def make_space(spec: StudySpec, graph: Any, model: Any = None, example: Any = None) -> Any:
    """The budget's dynamic space (with the spec's space.exclude, bounds and round_to); a latency
    budget needs the ACP-core latency table."""
    from acpsearch.search.space import Budget, DynamicSpace, excluded_groups, group_bounds

    sp = spec.space
    fixed = excluded_groups(graph, sp.exclude) if sp.exclude else None
    bounds = group_bounds(graph, sp.bounds) if sp.bounds else None

    latency = None
    if spec.budget.latency_ms is not None:
        latency = _latency_table(graph, model, example)
    budget = Budget(flops=spec.budget.flops, params=spec.budget.params, latency_ms=spec.budget.latency_ms)
    return DynamicSpace(
        graph,
        budget,
        step=sp.step,
        criterion=sp.criterion,
        min_keep=sp.min_keep,
        latency=latency,
        round_to=sp.round_to,
        bounds=bounds,
        fixed=fixed,
    )


def _latency_table(graph: Any, model: Any, example: Any) -> Any:
    """The ACP-core per-layer latency table (measured once per machine and network, cached), at
    the batch size and thread count acpsearch reports latencies with (LATENCY_BATCH, 1 thread)."""
    import torch

    from acpsearch.search.latency import LatencyTable
    from acpsearch.service.tasks import LATENCY_BATCH

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return LatencyTable.build(graph, batch_size=LATENCY_BATCH)
    finally:
        torch.set_num_threads(threads)


def preflight(spec: StudySpec, allow_factories: Any = None) -> dict[str, Any]:
    """Check the inputs a study needs BEFORE it is stored: data, model / checkpoint, graph, budget.
    Every problem is an AcpError (exit 2) and the storage stays untouched. The spec's own factory
    is trusted (the user submits it); a factory its checkpoint names needs `allow_factories`."""
    import torch

    from acpsearch.graph import ChannelGraph

    splits = load_data(spec)
    shape = splits.input_shape
    if spec.model.checkpoint:
        from acpsearch.checkpoint import model_from_checkpoint

        policy = factory_policy(spec, allow_factories)
        ckpt = read_base_checkpoint(spec, shape, allow_factories=policy)
        model = model_from_checkpoint(ckpt, allow_factories=policy)
    else:
        model, _ = build_model(spec, shape, allow_factories=factory_policy(spec, allow_factories))
    graph = ChannelGraph.from_model(model, torch.zeros(1, *shape), hash_layer=spec.model.hash_layer)
    space = make_space(spec, graph, model, torch.zeros(1, *shape))
    cost = graph.cost()
    return {
        "input_shape": list(shape),
        "groups": len(graph.groups),
        "flops": int(cost.flops),
        "params": int(cost.params),
        "space": space.describe() if space is not None else None,
        "splits": splits.sizes(),
    }


# --- phases --------------------------------------------------------------------------------------
def phase_base(ctx: Context) -> None:
    """Load or train the base network; store it as an artifact with its metrics."""
    import torch

    from acpsearch.checkpoint import read_checkpoint, save_checkpoint
    from acpsearch.graph import ChannelGraph

    ctx.splits = ctx.splits or load_data(ctx.spec)
    rec = st.phase_done(ctx.study, "base")
    if rec:
        ctx.base_ckpt = read_checkpoint(rec["path"])
        ctx.reporter.done("base", rec["seconds"], skipped=True)
    else:
        t0 = time.perf_counter()
        shape = ctx.splits.input_shape
        path = ctx.dir() / "base.pt"
        if ctx.spec.model.checkpoint:
            ctx.reporter.phase("base: loading checkpoint")
            ckpt = read_base_checkpoint(ctx.spec, shape, allow_factories=ctx.allow)
            from acpsearch.checkpoint import model_from_checkpoint

            model = model_from_checkpoint(ckpt, allow_factories=ctx.allow)
            # meta.preprocess: the normalisation this run feeds the network (data.normalize)
            save_checkpoint(
                path,
                model,
                ckpt["model"],
                ckpt["input_shape"],
                pruning=ckpt.get("pruning"),
                meta={**(ckpt.get("meta") or {}), "preprocess": dict(ctx.splits.preprocess)},
            )
            trained = None
        else:
            from acpsearch.devices import resolve_device, seed_everything
            from acpsearch.hashing import train_hash_net

            tr = ctx.spec.train
            device = resolve_device(getattr(tr, "device", "cpu"), "train.device")
            ctx.reporter.phase("base: training", total=tr.epochs)
            # all seeds BEFORE the model is built: the protocol seed fixes the initial weights too
            seed_everything(ctx.spec.data.protocol.seed)
            model, cfg = build_model(ctx.spec, shape, allow_factories=ctx.allow)
            model.to(device)

            def on_epoch(epoch: int, val: float) -> bool:
                ctx.reporter.advance(1, val_map=val)
                ctx.check()
                return False

            res = train_hash_net(
                model,
                ctx.splits,
                loss=tr.loss,
                epochs=tr.epochs,
                lr=tr.lr,
                batch_size=tr.batch_size,
                seed=ctx.spec.data.protocol.seed,
                progress=False,
                augment=tr.augment,
                hflip=tr.hflip,
                callback=on_epoch,
            )
            model = res.model.to("cpu")  # the graph, the checkpoint and the search work on the CPU copy
            trained = {
                "epochs": res.epochs_run,
                "best_epoch": res.best_epoch,
                "seconds": round(res.seconds, 2),
                "device": str(device),
                "history": [round(h["val_map"], 4) if math.isfinite(h["val_map"]) else None for h in res.history],
            }
            save_checkpoint(
                path,
                model,
                cfg,
                [1, *shape],
                meta={
                    "dataset": ctx.spec.data.dataset,
                    "bits": ctx.spec.model.bits,
                    "loss": tr.loss,
                    "trained_by": ctx.name,
                    "preprocess": dict(ctx.splits.preprocess),
                },
            )
        ckpt = read_checkpoint(path)
        g = ChannelGraph.from_model(model, torch.zeros(*ckpt["input_shape"]), hash_layer=ctx.spec.model.hash_layer)
        cost = g.cost()
        art = ctx.upload(path)
        ctx.reporter.phase("base: test evaluation")
        from acpsearch.service.tasks import evaluate_checkpoint

        ev = evaluate_checkpoint(str(path), ctx.spec_dict, threads=None, allow_factories=ctx.allow)
        st.mark_phase(
            ctx.study,
            "base",
            time.perf_counter() - t0,
            path=str(path),
            artifact_id=art,
            flops=int(cost.flops),
            params=int(cost.params),
            groups=len(g.groups),
            source="checkpoint" if ctx.spec.model.checkpoint else "trained",
            training=trained,
            **clean({k: ev.get(k) for k in ("val_map", "test_map", "test_map_topk", "topk", "latency_ms", "pr_curve")}),
        )
        ctx.base_ckpt = ckpt
        ctx.reporter.done("base", time.perf_counter() - t0)
    from acpsearch.checkpoint import model_from_checkpoint
    from acpsearch.service.tasks import example_input

    base_model = model_from_checkpoint(ctx.base_ckpt, allow_factories=ctx.allow)
    ex = example_input(ctx.base_ckpt)
    ctx.graph = ChannelGraph.from_model(base_model, ex, hash_layer=ctx.spec.model.hash_layer)
    ctx.space = make_space(ctx.spec, ctx.graph, base_model, ex)


def needs_encoder(spec: StudySpec) -> bool:
    return spec.search.ranker == "similarity" or spec.search.rerank == "similarity"


def phase_encoder(ctx: Context, ray_mod: Any) -> None:
    """Train the structure encoder contrastively (no fine-tuned labels); `effect` computes its
    functional signal (code agreement after BN recalibration) on Ray actors."""
    import torch

    from acpsearch.encoder import StructureEncoder, train_encoder

    rec = st.phase_done(ctx.study, "encoder")
    if rec:
        if rec.get("path"):
            ctx.encoder_state = StructureEncoder.load(rec["path"]).state()
        ctx.reporter.done("encoder", rec["seconds"], skipped=True)
        return
    t0 = time.perf_counter()
    if not needs_encoder(ctx.spec):
        st.mark_phase(
            ctx.study, "encoder", 0.0, path=None, reason=f"ranker {ctx.spec.search.ranker!r} needs no encoder"
        )
        ctx.reporter.done("encoder", 0.0, skipped=True)
        return
    enc = ctx.spec.encoder
    sp = ctx.spec.space
    rng = random.Random(ctx.spec.search.seed)
    kwargs: dict[str, Any] = dict(
        criterion=sp.criterion, min_keep=sp.min_keep, step=sp.step, seed=ctx.spec.search.seed, epochs=enc.epochs
    )
    ctx.reporter.phase(f"encoder: {enc.objective}", total=enc.epochs)
    if enc.objective == "sacp":
        # strategies from the budget's own space (positives / negatives near where we search)
        strategies = ctx.space.sample_many(enc.strategies, rng)
        result = train_encoder(
            ctx.graph,
            "sacp",
            strategies=strategies,
            n_strategies=enc.strategies,
            progress=lambda e, loss: ctx.reporter.advance(1, loss=loss),
            **kwargs,
        )
    else:
        strategies = ctx.space.sample_many(enc.strategies, rng)
        signal = score_on_ray(
            ctx, ray_mod, "code_agreement", [dict(s.ratios) for s in strategies], round_to=ctx.space._rt
        )
        result = train_encoder(
            ctx.graph,
            "effect",
            strategies=strategies,
            signal=signal,
            progress=lambda e, loss: ctx.reporter.advance(1, loss=loss),
            **kwargs,
        )
    path = ctx.dir() / "encoder.pt"
    result.encoder.save(path)
    ctx.encoder_state = result.encoder.state()
    art = ctx.upload(path)
    st.mark_phase(
        ctx.study,
        "encoder",
        time.perf_counter() - t0,
        path=str(path),
        artifact_id=art,
        objective=enc.objective,
        strategies=len(strategies),
        losses=[round(float(x), 4) for x in result.losses],
    )
    ctx.reporter.done("encoder", time.perf_counter() - t0)
    del torch


MAX_ATTEMPTS = 3  # a candidate or finalist whose worker dies is tried at most this often
MAX_POOL_CRASHES = 6  # crashed scoring batches tolerated per phase before the phase fails


class RankerPool:
    """A few Ray actors that each hold the graph + ranker; batches go round-robin.

    `nodes[i]` is the Ray node of actor i (trials record where they were scored)."""

    def __init__(self, ctx: Context, ray_mod: Any, name: str, n: int) -> None:
        from acpsearch.devices import actor_options, check_cluster_fits, resources_of
        from acpsearch.service.tasks import RankerWorker, light_splits

        need_data = name in ("adaptive_bn", "code_agreement")
        splits = light_splits(ctx.splits) if need_data else None
        res = resources_of(ctx.spec, "search")  # {cpu: 1, gpu: 0} unless the spec says otherwise
        check_cluster_fits(ray_mod.cluster_resources(), res, "search.resources")
        actor = ray_mod.remote(**actor_options(ctx.spec, "search"))(RankerWorker)
        ckpt_ref = ray_mod.put(ctx.base_ckpt)
        enc_ref = ray_mod.put(ctx.encoder_state)
        splits_ref = ray_mod.put(splits)
        self.ray = ray_mod
        self.ctx, self.name = ctx, name
        self.actors = [
            actor.remote(
                name,
                ckpt_ref,
                ctx.spec_dict,
                enc_ref,
                splits_ref,
                threads=res["cpu"],
                allow_factories=ctx.allow,
                gpu=res["gpu"],
            )
            for _ in range(max(1, n))
        ]
        self.nodes: list[str] = ray_mod.get([a.node_id.remote() for a in self.actors])

    def score(self, ratios: list[dict[str, float]], round_to: int = 4) -> list[float]:
        if not ratios:
            return []
        k = len(self.actors)
        chunks = [ratios[i::k] for i in range(k)]
        refs = [a.score.remote(c, round_to) for a, c in zip(self.actors, chunks) if c]
        parts = self.ray.get(refs)
        out: list[float] = [0.0] * len(ratios)
        for i, part in enumerate(parts):
            out[i::k] = part
        return out

    def node_of(self, i: int) -> str:
        """The node that scored item i of the last batch."""
        return self.nodes[i % len(self.nodes)]

    def replace(self, crashes: int, exc: BaseException, what: str) -> RankerPool:
        """After a worker failure (the `crashes`-th of the phase): a fresh pool, or RuntimeError
        once more than MAX_POOL_CRASHES failures say the cause is not a passing one."""
        if crashes > MAX_POOL_CRASHES:
            raise RuntimeError(f"{what}: Ray workers failed {crashes} times; last: {_first_line(exc)}") from None
        self.close()
        return RankerPool(self.ctx, self.ray, self.name, len(self.actors))

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - an actor that already died needs no kill
                pass


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def score_on_ray(
    ctx: Context, ray_mod: Any, name: str, ratios: list[dict[str, float]], chunk: int = 16, round_to: int = 4
) -> list[float]:
    """Scores of many strategies (encoder signal, re-ranking). A chunk whose worker died is
    scored again by a fresh pool, at most MAX_POOL_CRASHES times in all."""
    pool = RankerPool(ctx, ray_mod, name, ctx.workers)
    crashes = 0
    try:
        out: list[float] = []
        i = 0
        while i < len(ratios):
            part = ratios[i : i + chunk * len(pool.actors)]
            try:
                out += pool.score(part, round_to)
            except ray_mod.exceptions.RayError as exc:
                crashes += 1
                ctx.reporter.log(f"{name}: a Ray worker failed ({_first_line(exc)}); retrying the chunk")
                pool = pool.replace(crashes, exc, name)
                continue
            i += len(part)
            ctx.check()
        return out
    finally:
        pool.close()


def make_sampler(spec: StudySpec) -> Any:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate/group TPE
    seed = spec.search.seed
    kind = spec.search.sampler
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise SpecError(f"search.sampler: unknown sampler {kind!r}")


def fail_leftovers(study: Any, reason: str, waiting: bool = True) -> list[Any]:
    """Trials a dead runner left RUNNING (and WAITING, unless `waiting=False`: queued retries
    that the next ask() picks up) become FAIL: Optuna cannot resume a trial. Returns them."""
    import optuna

    states = (optuna.trial.TrialState.RUNNING,) + ((optuna.trial.TrialState.WAITING,) if waiting else ())
    left = []
    for t in study.get_trials(deepcopy=False, states=states):
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        left.append(t)
    return left


def requeue(study: Any, trials: list[Any]) -> int:
    """Enqueue the keep ratios of failed candidates again (Optuna's enqueue_trial: the next ask()
    proposes exactly them), each at most MAX_ATTEMPTS times in all. Returns how many."""
    n = 0
    for t in trials:
        attempt = int(t.user_attrs.get("attempt", 1))
        if t.params and attempt < MAX_ATTEMPTS:
            study.enqueue_trial(dict(t.params), user_attrs={"attempt": attempt + 1, "retry_of": t.number})
            n += 1
    return n


def candidate_attrs(ctx: Context, strategies: list[Any], round_to: int = 4) -> list[dict[str, Any]]:
    """Costs (closed form from the graph), ratios and budget slack of each candidate."""
    names = [g.name for g in ctx.graph.groups]
    rows = np.array([[s.ratios.get(n, 1.0) for n in names] for s in strategies], dtype=np.float64)
    flops, params = ctx.graph.cost_batch(rows, round_to=round_to)
    full = ctx.graph.cost()
    b = ctx.spec.budget
    out = []
    for i, s in enumerate(strategies):
        fr, pr = float(flops[i]) / full.flops, float(params[i]) / full.params
        cons = {}
        if b.flops is not None:
            cons["flops"] = round(fr - b.flops, 6)
        if b.params is not None:
            cons["params"] = round(pr - b.params, 6)
        out.append(
            {
                "flops": int(flops[i]),
                "params": int(params[i]),
                "flops_ratio": round(fr, 6),
                "params_ratio": round(pr, 6),
                "constraints": cons,
                # Optuna's stepped floats carry float noise (0.6000000000000001): shown rounded
                "keep": st.round_ratios(s.ratios),
            }
        )
    if ctx.space is not None and ctx.space.latency is not None:
        lat = ctx.space.latency.predict_batch(ctx.graph, rows, round_to)
        for i, rec in enumerate(out):
            rec["latency_ms"] = round(float(lat[i]), 4)
            if b.latency_ms is not None:
                rec["constraints"]["latency_ms"] = round(float(lat[i]) - b.latency_ms, 4)
    return out


def phase_search(ctx: Context, ray_mod: Any) -> None:
    """Optuna proposes keep ratios inside the dynamic space (define-by-run); Ray actors score them.

    Every candidate is one COMPLETE trial: params = keep ratios, value = ranker score, user attrs =
    costs, ratios of the unpruned net, similarity, constraint values (also set_constraint)."""
    rec = st.phase_done(ctx.study, "search")
    if rec:
        ctx.reporter.done("search", rec["seconds"], skipped=True)
        return
    import optuna

    t0 = time.perf_counter()
    study = ctx.study
    left = fail_leftovers(study, "runner stopped before the candidate was scored", waiting=False)
    requeued = requeue(study, left)
    target = ctx.spec.search.candidates
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    ranker = ctx.spec.search.ranker
    ctx.reporter.phase(f"search: {ranker}", total=target)
    ctx.reporter.advance(done)
    if left:
        ctx.reporter.log(f"resumed: {done} candidates kept, {len(left)} unfinished marked FAIL, {requeued} re-queued")
    pool = RankerPool(ctx, ray_mod, ranker, ctx.workers)
    crashes = 0
    batch = max(8, 8 * ctx.workers)
    per_round = math.ceil(target / ctx.spec.search.rounds)
    spaces: dict[int, Any] = {}
    try:
        while done < target:
            ctx.check()
            rnd = min(done // per_round, ctx.spec.search.rounds - 1)
            k = min(batch, target - done, per_round * (rnd + 1) - done)  # a batch never spans two rounds
            space = spaces.get(rnd) or spaces.setdefault(rnd, round_space(ctx, rnd))
            trials = [study.ask() for _ in range(k)]
            strategies = [space.suggest(t) for t in trials]
            rt = ctx.space._rt  # space.round_to (4 when not given)
            attrs = candidate_attrs(ctx, strategies, round_to=rt)
            try:
                scores = pool.score([dict(s.ratios) for s in strategies], rt)
            except ray_mod.exceptions.RayError as exc:
                # A worker died (or raised) mid-batch: the batch's trials FAIL with the reason and
                # their ratios are queued again; a fresh pool continues the search.
                crashes += 1
                reason = f"ray worker failed while scoring: {_first_line(exc)}"
                for t in trials:
                    t.set_user_attr("fail_reason", reason)
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                n = requeue(study, [study._storage.get_trial(t._trial_id) for t in trials])
                ctx.reporter.log(f"search: {reason}; {len(trials)} candidates FAIL, {n} re-queued")
                pool = pool.replace(crashes, exc, "search")
                continue
            for i, (t, s, a, score) in enumerate(zip(trials, strategies, attrs, scores)):
                for key, val in a["constraints"].items():
                    t.set_constraint(key, val)
                    t.set_user_attr(f"constraint.{key}", val)
                t.set_user_attr("feasible", all(v <= 1e-9 for v in a["constraints"].values()))
                for key in ("flops", "params", "flops_ratio", "params_ratio", "latency_ms", "keep"):
                    if key in a:
                        t.set_user_attr(key, a[key])
                t.set_user_attr(ranker, round(float(score), 6))
                t.set_user_attr("round", rnd)
                if ctx.spec.space.round_to is not None:
                    t.set_user_attr("round_to", rt)
                t.set_user_attr("ray_node", pool.node_of(i))
                study.tell(t, float(score))
            done += k
            ctx.reporter.advance(k, best=study.best_value)
    finally:
        pool.close()
    st.mark_phase(
        ctx.study,
        "search",
        time.perf_counter() - t0,
        candidates=done,
        ranker=ranker,
        space=clean(ctx.space.describe()),
        rounds={
            str(r): clean({k: v for k, v in sp.describe().items() if k in ("step", "ranges", "log10_size")})
            for r, sp in sorted(spaces.items())
        },
    )
    ctx.reporter.done("search", time.perf_counter() - t0)


def round_space(ctx: Context, rnd: int) -> Any:
    """The space of search round `rnd`: round 0 is the budget's space; each later round narrows
    the previous one around the `elite` best candidates of the rounds before it (finer grid).
    Rebuilt from the stored trials, so a resumed search continues in the same space."""
    space = ctx.space
    for j in range(1, rnd + 1):
        elite = [t for t in _ranked_candidates(ctx) if int(t.user_attrs.get("round", 0)) < j][: ctx.spec.search.elite]
        if elite:
            space = space.narrow([_ratios_of(ctx, t) for t in elite])
    return space


def _ranked_candidates(ctx: Context, limit: int | None = None) -> list[Any]:
    """Feasible COMPLETE candidates, best ranker score first, one per distinct pruned network:
    different ratios can round to the same kept channel counts (round_to), and fine-tuning the
    same network twice would waste a finalist slot."""
    import optuna

    trials = ctx.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = [t for t in trials if t.user_attrs.get("feasible", True) and t.value is not None]
    seen: set[tuple[tuple[str, int], ...]] = set()
    unique = []
    for t in sorted(trials, key=lambda t: (-t.value, t.number)):
        key = tuple(sorted((k, int(v)) for k, v in _strategy_of(ctx, t).kept.items()))
        if key not in seen:
            seen.add(key)
            unique.append(t)
            if limit is not None and len(unique) >= limit:
                break
    return unique


def _ratios_of(ctx: Context, trial: Any) -> dict[str, float]:
    prefix = "keep/"
    return {k[len(prefix) :]: float(v) for k, v in trial.params.items() if k.startswith(prefix)}


def _round_to(trial: Any) -> int:
    """Kept-channel rounding unit of a candidate: the space's 4, or the anchor's own (1)."""
    return int(trial.user_attrs.get("round_to", 4))


def _strategy_of(ctx: Context, trial: Any) -> Any:
    from acpsearch.pruning import PruningStrategy

    return PruningStrategy(
        ctx.graph, _ratios_of(ctx, trial), criterion=ctx.spec.space.criterion, round_to=_round_to(trial)
    )


def _is_anchor(trial: Any) -> bool:
    return not st.is_searched(trial)


def phase_anchor(ctx: Context, ray_mod: Any) -> None:
    """Add the budget's global-magnitude allocation (spec `search.anchor: magnitude`) as one more
    candidate, scored by the ranker like the others and always a finalist.

    Why: the similarity objective (encoder or direct code agreement) prefers lopsided structures
    at mild budgets that fine-tune worse than the magnitude allocation (ResNet-20, 50% FLOPs, 4
    fine-tuning epochs: 0.808 vs 0.817 test mAP, README), while at 25% FLOPs the search is far
    ahead (0.798 vs 0.748). With the anchor among the finalists, validation mAP decides between
    them, so the study is never left with only the lopsided ones. Kept counts are exact
    (round_to=1): rounded to multiples of 4 the allocation loses most of its quality (0.809)."""
    rec = st.phase_done(ctx.study, "anchor")
    if rec:
        ctx.reporter.done("anchor", rec["seconds"], skipped=True)
        return
    if ctx.spec.search.anchor is None or ctx.spec.finetune.top < 2 or st.phase_done(ctx.study, "finetune"):
        # (a study stored before anchors existed and resumed after its fine-tuning keeps its finalists)
        st.mark_phase(ctx.study, "anchor", 0.0, anchor=None)
        return
    import optuna

    from acpsearch.pruning import PruningStrategy

    t0 = time.perf_counter()
    added = [t for t in ctx.study.get_trials(deepcopy=False) if _is_anchor(t)]
    if added:  # the runner stopped after adding it but before marking the phase: keep that one
        t = added[0]
        st.mark_phase(
            ctx.study,
            "anchor",
            time.perf_counter() - t0,
            anchor=ctx.spec.search.anchor,
            trial=t.number,
            kept={k: int(v) for k, v in _strategy_of(ctx, t).kept.items()},
        )
        return
    b, full = ctx.spec.budget, ctx.graph.cost()

    def fits(s: Any) -> bool:
        c = ctx.graph.cost(s)
        ok = (b.flops is None or c.flops <= b.flops * full.flops) and (
            b.params is None or c.params <= b.params * full.params
        )
        if ok and b.latency_ms is not None and ctx.space.latency is not None:
            ok = ctx.space.latency.predict(ctx.graph, s) <= b.latency_ms
        return bool(ok)

    # space.round_to when given, else exact counts; excluded groups whole, bounds per group
    rt = ctx.spec.space.round_to or 1
    limits = dict(ctx.space.bounds)
    limits.update({n: (1.0, 1.0) for n in ctx.space.fixed})
    strategy = PruningStrategy.global_magnitude(
        ctx.graph,
        fits,
        criterion=ctx.spec.space.criterion,
        min_keep=ctx.spec.space.min_keep,
        round_to=rt,
        bounds=limits,
    )
    if strategy is None:
        ctx.reporter.log("anchor: no magnitude allocation meets the budget; finalists come from the search only")
        st.mark_phase(ctx.study, "anchor", time.perf_counter() - t0, anchor=None)
        return
    ratios = {n: float(r) for n, r in strategy.ratios.items()}
    score = score_on_ray(ctx, ray_mod, ctx.spec.search.ranker, [ratios], round_to=rt)[0]
    a = candidate_attrs(ctx, [strategy], round_to=rt)[0]
    attrs: dict[str, Any] = {
        "source": f"anchor:{ctx.spec.search.anchor}",
        "round_to": rt,
        ctx.spec.search.ranker: round(float(score), 6),
        "feasible": all(v <= 1e-9 for v in a["constraints"].values()),
    }
    attrs.update({k: a[k] for k in ("flops", "params", "flops_ratio", "params_ratio", "latency_ms") if k in a})
    attrs.update({f"constraint.{k}": v for k, v in a["constraints"].items()})
    trial = optuna.trial.create_trial(
        params={f"keep/{n}": r for n, r in ratios.items()},
        distributions={f"keep/{n}": optuna.distributions.FloatDistribution(0.0, 1.0) for n in ratios},
        value=float(score),
        user_attrs=clean(attrs),
        system_attrs={f"constraints:{k}": float(v) for k, v in a["constraints"].items()},
    )  # as Trial.set_constraint
    ctx.study.add_trial(trial)
    number = ctx.study.get_trials(deepcopy=False)[-1].number
    st.mark_phase(
        ctx.study,
        "anchor",
        time.perf_counter() - t0,
        anchor=ctx.spec.search.anchor,
        trial=number,
        kept={k: int(v) for k, v in strategy.kept.items()},
    )
    ctx.reporter.done("anchor", time.perf_counter() - t0)


def phase_rerank(ctx: Context, ray_mod: Any) -> None:
    """Re-score the top tier with a costlier ranker (e.g. adaptive BN) and keep the new order."""
    rec = st.phase_done(ctx.study, "rerank")
    if rec:
        ctx.reporter.done("rerank", rec["seconds"], skipped=True)
        return
    name = ctx.spec.search.rerank
    if name is None:
        st.mark_phase(ctx.study, "rerank", 0.0, ranker=None)
        return
    t0 = time.perf_counter()
    top = [t for t in _ranked_candidates(ctx) if not _is_anchor(t)][: ctx.spec.search.rerank_top]
    ctx.reporter.phase(f"rerank: {name}", total=len(top))
    scores = score_on_ray(
        ctx, ray_mod, name, [_ratios_of(ctx, t) for t in top], chunk=4, round_to=ctx.spec.space.round_to or 4
    )
    ctx.reporter.advance(len(top))
    st.mark_phase(
        ctx.study,
        "rerank",
        time.perf_counter() - t0,
        ranker=name,
        scores={str(t.number): round(float(s), 6) for t, s in zip(top, scores)},
    )
    ctx.reporter.done("rerank", time.perf_counter() - t0)


def finalists(ctx: Context) -> list[Any]:
    """The anchor (if any) plus the top (top - 1) searched candidates, in ranker (or re-rank) order."""
    ranked = _ranked_candidates(ctx)
    anchors = [t for t in ranked if _is_anchor(t)][:1]
    ranked = [t for t in ranked if not _is_anchor(t)]
    if anchors:  # the same network as a searched candidate is fine-tuned once, as the anchor
        key = _strategy_of(ctx, anchors[0]).kept
        ranked = [t for t in ranked if _strategy_of(ctx, t).kept != key]
    rerank = st.phase_done(ctx.study, "rerank") or {}
    scores = rerank.get("scores") or {}
    if scores:
        ranked = sorted(
            [t for t in ranked if str(t.number) in scores], key=lambda t: (-scores[str(t.number)], t.number)
        )
    return anchors + ranked[: ctx.spec.finetune.top - len(anchors)]


def _trial_error(trial: Any) -> str:
    """One line saying why a Tune trial failed (its error file's last line, else its path)."""
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else str(path)
    except OSError:
        return str(path or "error")


class _TuneRecorder:
    """Ray Tune callback on the driver: writes each reported val mAP of a finalist into its
    Optuna trial as an intermediate value (live curves in the dashboard)."""

    def __init__(self, storage: Any, trial_ids: dict[int, int]) -> None:
        from ray.tune import Callback

        recorder = self

        class _CB(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
                recorder.result(trial, result)

            def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
                recorder.complete(trial)

            def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
                recorder.errors[trial.config["finalist"]["number"]] = _trial_error(trial)

            def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ANN001
                recorder.recovered(trial)

        self.callback = _CB()
        self.storage = storage
        self.trial_ids = trial_ids
        self.reported: dict[int, int] = {}
        self.completed: set[int] = set()
        self.errors: dict[int, str] = {}
        self.nodes: dict[int, str] = {}
        self.devices: dict[int, str] = {}
        self.retries: dict[int, list[str]] = {}

    def recovered(self, trial: Any) -> None:
        """Tune restarts a finalist whose worker died (FailureConfig.max_failures): the Optuna
        trial keeps running and records each failed attempt's reason."""
        number = trial.config["finalist"]["number"]
        self.retries.setdefault(number, []).append(_trial_error(trial))
        self.storage.set_trial_user_attr(self.trial_ids[number], "failed_attempts", self.retries[number])

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        number = trial.config["finalist"]["number"]
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        val = result.get("val_map")
        if val is not None and math.isfinite(val):
            self.storage.set_trial_intermediate_value(self.trial_ids[number], epoch, float(val))
        self.reported[number] = max(self.reported.get(number, -1), epoch)
        if result.get("node") and self.nodes.get(number) != result["node"]:
            self.nodes[number] = str(result["node"])
            self.storage.set_trial_user_attr(self.trial_ids[number], "ray_node", self.nodes[number])
        if result.get("device") and self.devices.get(number) != result["device"]:  # cpu, or cuda (a GPU share)
            self.devices[number] = str(result["device"])
            self.storage.set_trial_user_attr(self.trial_ids[number], "device", self.devices[number])

    def complete(self, trial: Any) -> None:
        self.completed.add(trial.config["finalist"]["number"])


def phase_finetune(ctx: Context, ray_mod: Any) -> None:
    """Fine-tune the finalists as Ray Tune trials (ASHA stops weak ones early).

    Each finalist is a trial of NAME.finetune: params = keep ratios, intermediate values = val
    mAP per epoch, user attrs = candidate number and costs; finished with val mAP as value, or
    PRUNED when ASHA stopped it. Finalists already finished are skipped on resume."""
    import optuna
    from ray import tune

    from acpsearch.checkpoint import load_model
    from acpsearch.service.tasks import evaluate_checkpoint, finetune_trainable, light_splits, measure_latency_ms

    rec = st.phase_done(ctx.study, "finetune")
    if rec:
        ctx.reporter.done("finetune", rec["seconds"], skipped=True)
        return
    t0 = time.perf_counter()
    ft_study = st.finetune_study(ctx.storage, ctx.study)
    ctx.study.set_user_attr("finetune_study", ft_study.study_name)
    fail_leftovers(ft_study, "runner stopped during fine-tuning")
    finished = {
        t.user_attrs.get("candidate")
        for t in ft_study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
    }
    chosen = finalists(ctx)
    todo = [t for t in chosen if t.number not in finished]
    ft = ctx.spec.finetune
    out_dir = ctx.dir() / "finalists"
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.reporter.phase(f"finetune: {len(chosen)} finalists x {ft.epochs} epochs", total=len(todo))
    trial_ids: dict[int, int] = {}
    for cand in todo:
        frozen = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=dict(cand.params),
            distributions=dict(cand.distributions),
            user_attrs=clean(
                {
                    "candidate": cand.number,
                    "score": cand.value,
                    "source": st.source(cand),
                    **{
                        k: cand.user_attrs.get(k)
                        for k in ("flops", "params", "flops_ratio", "params_ratio", ctx.spec.search.ranker)
                    },
                }
            ),
        )
        ft_study.add_trial(frozen)
        trial_ids[cand.number] = ft_study.get_trials(deepcopy=False)[-1]._trial_id
    if todo:
        recorder = _TuneRecorder(ctx.storage, trial_ids)
        if ft.early_stop == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler: Any = ASHAScheduler(
                time_attr="training_iteration",
                metric="val_map",
                mode="max",
                max_t=ft.epochs + 1,
                grace_period=min(2, ft.epochs + 1),
                reduction_factor=2,
            )
        else:
            from ray.tune.schedulers import FIFOScheduler

            scheduler = FIFOScheduler()
        from acpsearch.devices import check_cluster_fits, resources_of, trial_resources

        # every finalist trial asks for finetune.resources ({cpu: 1} as before; gpu > 0: it trains on
        # cuda, on the GPU share Ray gives it); a request no node can meet would wait forever
        check_cluster_fits(ray_mod.cluster_resources(), resources_of(ctx.spec, "finetune"), "finetune.resources")
        trainable = tune.with_resources(
            tune.with_parameters(
                finetune_trainable,
                ckpt=ctx.base_ckpt,
                spec=ctx.spec_dict,
                splits=light_splits(ctx.splits),
                out_dir=str(out_dir),
                allow_factories=ctx.allow,
            ),
            trial_resources(ctx.spec),
        )
        space = {
            "finalist": tune.grid_search(
                [{"number": t.number, "ratios": _ratios_of(ctx, t), "round_to": _round_to(t)} for t in todo]
            )
        }
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                scheduler=scheduler, max_concurrent_trials=max(1, ctx.workers), reuse_actors=False
            ),
            run_config=tune.RunConfig(
                name=f"{ctx.name}-finetune-{uuid.uuid4().hex[:6]}",
                storage_path=str(ctx.artifacts / "ray-results"),
                callbacks=[recorder.callback],
                verbose=0,
                log_to_file=True,
                # a finalist whose worker dies is started again, boundedly
                failure_config=tune.FailureConfig(max_failures=MAX_ATTEMPTS - 1),
            ),
        )
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):  # Tune prints tables on stdout; --json owns stdout
            tuner.fit()
        # Test metrics are computed BEFORE a finalist trial is finished: Optuna forbids attribute
        # updates on finished trials, and every finalist must carry val_map and test_map.
        remote = ray_mod.remote(num_cpus=1)(evaluate_checkpoint)
        refs = {}
        for cand in todo:
            path = out_dir / f"finalist-{cand.number}.pt"
            if cand.number not in recorder.errors and path.exists():
                refs[cand.number] = remote.remote(str(path), ctx.spec_dict, latency=False, allow_factories=ctx.allow)
        full = ctx.graph.cost()
        frozen_shape = list(ctx.base_ckpt["input_shape"])
        for cand in todo:
            tid = trial_ids[cand.number]
            path = out_dir / f"finalist-{cand.number}.pt"
            frozen = ctx.storage.get_trial(tid)
            curve = {int(k): float(v) for k, v in frozen.intermediate_values.items()}
            if cand.number not in refs or not curve:
                ctx.storage.set_trial_user_attr(tid, "fail_reason", recorder.errors.get(cand.number, "no result"))
                ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
                continue
            ev = ray_mod.get(refs[cand.number])
            # Latency is timed here on the driver, one finalist after another, like the base net in
            # phase_base: parallel timings on a busy worker measured each other, not the model.
            ev["latency_ms"] = round(measure_latency_ms(load_model(path, allow_factories=ctx.allow), frozen_shape), 3)
            epochs_run = max(curve)
            stopped = epochs_run < ft.epochs
            best_val = max(curve.values())
            attrs = {
                "val_map": best_val,
                "test_map": ev["test_map"],
                "test_map_topk": ev["test_map_topk"],
                "topk": ev["topk"],
                "measured_flops": ev["flops"],
                "measured_params": ev["params"],
                "measured_flops_ratio": ev["flops"] / full.flops,
                "measured_params_ratio": ev["params"] / full.params,
                "latency_ms": ev.get("latency_ms"),
                "epochs_run": epochs_run,
                "stopped_early": stopped,
                "val_map_before_finetune": curve.get(0),
                "path": str(path),
                "pr_curve": ev.get("pr_curve"),
            }
            for key, val in clean(attrs).items():
                ctx.storage.set_trial_user_attr(tid, key, val)
            if stopped:  # ASHA stopped it: PRUNED, not COMPLETE (FACTS.md: Tune would call it complete)
                ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.PRUNED)
            else:
                ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.COMPLETE, [best_val])
            ctx.reporter.advance(1)
            ctx.check()
    n_ok = len(ft_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if n_ok == 0:
        raise RuntimeError("finetune: no finalist finished its fine-tuning (see the FAIL trials' fail_reason)")
    st.mark_phase(
        ctx.study,
        "finetune",
        time.perf_counter() - t0,
        finalists=[t.number for t in chosen],
        finetune_study=ft_study.study_name,
    )
    ctx.reporter.done("finetune", time.perf_counter() - t0)


def phase_select(ctx: Context, ray_mod: Any) -> None:
    """Winner = best validation mAP among fully fine-tuned finalists (never the test queries);
    exported as winner.pt (pruning record + weights) and stored as the study's `winner`."""
    rec = st.phase_done(ctx.study, "select")
    if rec:
        ctx.reporter.done("select", rec["seconds"], skipped=True)
        return
    import optuna

    from acpsearch.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint

    t0 = time.perf_counter()
    ft_study = st.finetune_study(ctx.storage, ctx.study)
    complete = [
        t
        for t in ft_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("val_map") is not None
    ]
    if not complete:
        raise RuntimeError("select: no COMPLETE finalist to choose from")
    best = max(complete, key=lambda t: (t.user_attrs["val_map"], -t.number))
    # optuna-dashboard's "Best Trial" of NAME.finetune is Optuna's best trial (COMPLETE, value = val mAP):
    # among finalists tied on val mAP, take the one Optuna names, so that the two are the same trial
    try:
        optuna_best = ft_study.best_trial
    except ValueError:
        optuna_best = None
    if optuna_best is not None and optuna_best.number != best.number:
        tied = [
            t
            for t in complete
            if t.number == optuna_best.number and t.user_attrs["val_map"] == best.user_attrs["val_map"]
        ]
        if tied:
            best = tied[0]
        else:
            ctx.reporter.log(
                f"select: trial {optuna_best.number} of {ft_study.study_name} has the best stored value "
                f"but not the best val_map; the winner is trial {best.number} (by val_map)"
            )
    winner_path = ctx.dir() / "winner.pt"
    ck = read_checkpoint(best.user_attrs["path"])
    save_checkpoint(
        winner_path,
        model_from_checkpoint(ck, allow_factories=ctx.allow),
        ck["model"],
        ck["input_shape"],
        pruning=ck["pruning"],
        meta={
            **(ck.get("meta") or {}),
            "study": ctx.name,
            "finetune_trial": best.number,
            "val_map": best.user_attrs["val_map"],
            "test_map": best.user_attrs.get("test_map"),
        },
    )
    art = ctx.upload(winner_path)
    cand = ctx.study.trials[int(best.user_attrs["candidate"])]
    winner = {k: v for k, v in best.user_attrs.items() if k != "pr_curve"}
    winner.update(
        {
            "finetune_trial": best.number,
            "path": str(winner_path),
            "artifact_id": art,
            "ratios": st.round_ratios(_ratios_of(ctx, cand)),
            "score": cand.value,
            "channels": {g.name: int(g.channels) for g in ctx.graph.groups},
            "source": st.source(cand),
            "round_to": _round_to(cand),
            "kept": {k: int(v) for k, v in _strategy_of(ctx, cand).kept.items()},
        }
    )
    base_rec = st.phase_done(ctx.study, "base") or {}
    ctx.reporter.phase("select: latency, base vs winner (interleaved)")
    cmp = _compare_base_winner(ctx, base_rec, winner_path)
    if cmp is not None:
        winner["latency_compare"] = cmp
    ctx.study.set_user_attr("winner", clean(winner))
    # Flat copies of the headline numbers: optuna-dashboard cuts long attribute values (~1000 chars)
    # in its tables, so the nested dicts alone would be unreadable there.
    for key in (
        "test_map",
        "test_map_topk",
        "val_map",
        "flops_ratio",
        "params_ratio",
        "latency_ms",
        "measured_flops",
        "measured_params",
        "finetune_trial",
        "candidate",
    ):
        ctx.study.set_user_attr(f"winner.{key}", clean(winner.get(key)))
    for key in ("test_map", "test_map_topk", "val_map", "flops", "params", "latency_ms"):
        ctx.study.set_user_attr(f"base.{key}", clean(base_rec.get(key)))
    if cmp is not None:  # the comparison to read (the separate latency_ms values above are minutes apart)
        from acpsearch.service.report import latency_row

        lb, lw, speed = latency_row({}, {"latency_compare": cmp})
        ctx.study.set_user_attr(
            "latency.base_vs_winner",
            f"{speed}: base {lb} ms, winner {lw} ms "
            f"(batch {cmp['batch']}, {cmp['threads']} thread, {cmp['rounds']} interleaved rounds)",
        )
    mark_winner(ctx.study, ft_study, best, cand, complete, ratios=winner["ratios"])
    st.mark_phase(
        ctx.study,
        "select",
        time.perf_counter() - t0,
        winner=best.number,
        finalists={str(t.number): t.user_attrs.get("val_map") for t in complete},
    )
    ctx.reporter.done("select", time.perf_counter() - t0)


def _compare_base_winner(ctx: Context, base_rec: dict[str, Any], winner_path: Path) -> dict[str, Any] | None:
    """Base and winner timed INTERLEAVED on the driver (latency.compare_latency: alternating
    rounds, same input, batch and one thread): the two numbers the report compares, with their
    spread. Separate timings minutes apart let machine noise decide which one looks faster."""
    from acpsearch.checkpoint import load_model, read_checkpoint
    from acpsearch.search.latency import compare_latency
    from acpsearch.service.tasks import LATENCY_BATCH

    if not base_rec.get("path") or not Path(base_rec["path"]).is_file():
        return None
    ckpt = read_checkpoint(base_rec["path"])
    models = {
        "base": load_model(base_rec["path"], allow_factories=ctx.allow),
        "winner": load_model(winner_path, allow_factories=ctx.allow),
    }
    res = compare_latency(models, list(ckpt["input_shape"]), batch=LATENCY_BATCH, rounds=7, repeats=5, threads=1)
    return {
        "batch": res["batch"],
        "threads": res["threads"],
        "rounds": res["rounds"],
        **{f"{name}_{k}": v for name, m in res["models"].items() for k, v in m.items() if k != "rounds_ms"},
    }


def winner_note(ft_name: str, best: Any, cand: Any, complete: list[Any]) -> str:
    """The note of the winning fine-tune trial (markdown, short lines: the dashboard's note box
    does not wrap long ones): it is the winner, and why."""
    u = best.user_attrs
    lines = [
        "## Winner",
        "",
        f"This finalist is the **winner** of `{ft_name[: -len(st.FINETUNE_SUFFIX)]}`.",
        "",
        f"- chosen by **validation mAP {_f4(u.get('val_map'))}**, the best of the fully fine-tuned finalists",
    ]
    lines += [
        f"  - trial {t.number}: val mAP {_f4(t.user_attrs.get('val_map'))}" for t in complete if t.number != best.number
    ]
    lines += [
        f"- **test mAP {_f4(u.get('test_map'))}**: reported, never used to choose",
        f"- pruned structure: candidate trial {cand.number} of the search study",
        f"  (ranker score {_f4(cand.value)}, not mAP)",
        f"- FLOPs ratio {_f4(u.get('measured_flops_ratio', u.get('flops_ratio')))}",
        "",
    ]
    return "\n".join(lines)


def _f4(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def mark_winner(
    study: Any, ft_study: Any, best: Any, cand: Any, complete: list[Any], ratios: dict[str, float] | None = None
) -> None:
    """Mark the winner where optuna-dashboard shows it: user attr `winner: true` + a note on the
    winning trial of NAME.finetune and on the candidate trial of the search study it came from,
    a note on the fine-tune study, and the search study's objective named as a ranker score (its
    "Best Trial" is the best-scored candidate, not the winner). The fine-tune study's objective is
    val mAP and only fully fine-tuned finalists (COMPLETE) carry a value, so its best trial is the
    winner (ties: the lowest trial number, as in phase_select)."""
    ranker = st.study_spec(study).search.ranker
    storage = study._storage
    u = best.user_attrs
    st.set_finished_trial_user_attr(storage, best._trial_id, "winner", True)
    st.set_finished_trial_user_attr(storage, cand._trial_id, "winner", True)
    if ratios and "keep" not in cand.user_attrs:  # an anchor (or an older study's) candidate: rounded ratios
        st.set_finished_trial_user_attr(storage, cand._trial_id, "keep", st.round_ratios(ratios))
    st.save_trial_note(ft_study, best._trial_id, winner_note(ft_study.study_name, best, cand, complete))
    st.save_trial_note(
        study,
        cand._trial_id,
        (
            f"## Winner's structure\n\nThis candidate became the study's **winner**:\n\n"
            f"- fine-tuned as trial {best.number} of `{ft_study.study_name}`\n"
            f"- chosen by validation mAP {_f4(u.get('val_map'))} (test mAP {_f4(u.get('test_map'))}, reported only)\n"
            f"- its value here ({_f4(cand.value)}) is the `{ranker}` ranker score, not mAP\n"
        ),
    )
    st.set_objective_names(study, [st.objective_name(ranker)])
    from optuna_dashboard import save_note

    save_note(
        ft_study,
        (
            f"# {ft_study.study_name}\n\nThe finalists of `{study.study_name}`, fine-tuned; objective: validation mAP.\n\n"
            f"**Best Trial here = the winner: trial {best.number}** (val mAP {_f4(u.get('val_map'))}, "
            f"test mAP {_f4(u.get('test_map'))}, reported only).\n\n"
            "Finalists that early stopping (ASHA) ended are PRUNED and have no value:\n"
            "their partial curves never make them best.\n"
        ),
    )


def run_phases(ctx: Context, ray_mod: Any) -> None:
    phase_base(ctx)
    ctx.check()
    phase_encoder(ctx, ray_mod)
    ctx.check()
    phase_search(ctx, ray_mod)
    ctx.check()
    phase_rerank(ctx, ray_mod)
    ctx.check()
    phase_anchor(ctx, ray_mod)
    ctx.check()
    phase_finetune(ctx, ray_mod)
    ctx.check()
    phase_select(ctx, ray_mod)
    ctx.check()
    from acpsearch.service.report import phase_report

    phase_report(ctx)


# --- entry points --------------------------------------------------------------------------------
class StudyBusy(AcpError):
    """Another runner holds the study's lease."""


class StudyBlocked(StudyBusy):
    """The study cannot be started for a reason outside it (a foreign NAME.finetune, a read-only
    storage); nothing was written. `run` reports it (exit 2); a worker skips the study as it skips
    a busy one, instead of retrying it forever (the study's state is unchanged, so it stays
    claimable)."""


def run_study(
    url: str | None,
    name: str,
    *,
    address: str | None = None,
    workers: int | None = None,
    artifacts: str | Path | None = None,
    reporter: Reporter | None = None,
    on_lease: Callable[[st.Lease], None] | None = None,
    force: bool = False,
    allow_factories: Any = None,
    trust_spec_factory: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) study `name` to the end under a lease; returns its summary.

    `device` (`--device`) overrides the spec's train.device for this run (not stored). A device this
    machine lacks (cuda without a GPU), or resources no Ray node offers (finetune/search.resources),
    is StudyBlocked before any phase runs: `run` exits 2, a worker skips the study for another.
    Storage is the only state: every phase checks its record and skips what is done.
    Model factories: `allow_factories` (module names or a FactoryPolicy) plus $ACPSEARCH_ALLOW_FACTORIES,
    plus the stored spec's own factory when `trust_spec_factory` (`acpsearch run`; a worker passes
    False). A factory that is not allowed is refused before the lease is taken: the study is untouched."""
    from acpsearch.service.cluster import connect, shutdown_if_owned
    from acpsearch.service.storage import artifact_dir, artifact_store, open_storage, resolve_url, writes

    url = resolve_url(url)
    storage = open_storage(url)
    study = st.load_search_study(storage, name)
    spec = st.study_spec(study)
    if study.user_attrs.get("state") == "done":
        return st.summarize(study, storage)
    policy = factory_policy(spec, allow_factories, trust_spec=trust_spec_factory)
    from acpsearch.checkpoint import study_refusal

    refusal = study_refusal(policy, spec)
    if refusal is not None:
        raise refusal
    from acpsearch.devices import check_device, resolve_device

    if device is not None:
        spec.train.device = check_device(device, "--device")
    if not spec.model.checkpoint and not st.phase_done(study, "base"):  # the base net is trained here
        try:
            resolve_device(spec.train.device, "--device" if device is not None else "train.device")
        except SpecError as exc:
            raise StudyBlocked(str(exc)) from None
    study = st.load_search_study(storage, name, sampler=make_sampler(spec))
    lease = st.Lease(storage, study._study_id, st.holder_id())
    try:
        st.check_companion(storage, name)  # a foreign NAME.finetune is refused before anything is written
        with writes(url):  # the first write: a read-only storage is one line here, the study untouched
            acquired = lease.try_acquire()
    except StorageError as exc:
        raise StudyBlocked(str(exc)) from None
    if not acquired:
        held = st.lease_state(storage.get_study_user_attrs(study._study_id))
        if not force:
            raise StudyBusy(
                f"study {name!r}: {held}; another runner works on it (if that runner is gone, "
                f"`acpsearch run {name} --force` waits for its lease to expire and takes over)"
            )
        if reporter is not None:
            reporter.log(f"study {name!r}: {held}; --force: waiting for the lease to expire")
        if not st.wait_for_lease(lease, lease.ttl + 15.0):
            raise StudyBusy(
                f"study {name!r}: {st.lease_state(storage.get_study_user_attrs(study._study_id))} "
                "and its holder keeps renewing it: that runner is alive; stop it first"
            )
    if on_lease is not None:
        on_lease(lease)
    # Who ran the study when (several runners share a storage; `acpsearch show` lists them).
    runs = list(study.user_attrs.get("runs") or []) + [{"holder": lease.holder, "started": st.now_iso()}]
    study.set_user_attr("runs", runs)
    outcome = "killed"
    n_workers = int(workers or spec.search.workers)
    art = artifact_dir(url, artifacts)
    ctx = Context(
        storage=storage,
        url=url,
        study=study,
        spec=spec,
        artifacts=art,
        store=artifact_store(art),
        reporter=reporter or Reporter(),
        workers=n_workers,
        lease=lease,
        allow=policy,
    )
    info: dict[str, Any] = {}
    try:
        info = connect(address, n_workers)
        import ray

        from acpsearch.devices import check_cluster_fits, resources_of

        for section in ("search", "finetune"):  # a request no node can meet would wait forever
            try:
                check_cluster_fits(ray.cluster_resources(), resources_of(spec, section), f"{section}.resources")
            except SpecError as exc:
                raise StudyBlocked(str(exc)) from None

        if info["reused"] and info["local"] and 0 < int(info["cpus"]) < ctx.workers:
            # a worker's one local Ray is smaller than this spec asks: more actors than CPUs would wait
            ctx.reporter.log(
                f"search.workers {ctx.workers} > the local Ray's {int(info['cpus'])} CPUs: using {int(info['cpus'])}"
            )
            ctx.workers = int(info["cpus"])
        st.set_state(
            study,
            "running",
            started_at=study.user_attrs.get("started_at") or st.now_iso(),
            ray={"address": info["address"], "cpus": info["cpus"], "local": info["local"], "job": info["job"]},
        )
        run_phases(ctx, ray)
        st.set_state(study, "done", finished_at=st.now_iso(), error=None)
        outcome = "done"
    except st.LeaseLost:
        outcome = "lease lost"
        raise
    except StudyBlocked:  # the study is left as it was, for a runner whose machine fits it
        outcome = "blocked"
        raise
    except AcpError as exc:
        outcome = "failed"
        st.set_state(study, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # Ctrl-C, or SIGTERM turned into SystemExit by Ray
            outcome = "interrupted"
            st.set_state(study, "interrupted", error=msg)
        else:
            outcome = "failed"
            st.set_state(study, "failed", error=msg, traceback=traceback.format_exc()[-4000:])
        raise
    finally:
        if not lease.lost:
            try:
                runs[-1].update(ended=st.now_iso(), outcome=outcome)
                study.set_user_attr("runs", runs)
            except Exception:  # noqa: BLE001 - bookkeeping must not hide the real error
                pass
        lease.release()
        if info:
            shutdown_if_owned(info)
    return st.summarize(study, storage)


def claimable(frozen: Any) -> bool:
    """A worker may take a study that is submitted, or was left running/interrupted by a dead
    runner (its lease expired). Failed and done studies are left alone."""
    attrs = frozen.user_attrs
    return attrs.get("state") in ("submitted", "running", "interrupted") and st.lease_state(attrs) == "free"


def data_error_hint(exc: DataError) -> str:
    return str(exc)
