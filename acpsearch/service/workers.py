"""A pool of Ray ranker actors (one graph + ranker each) and `score_on_ray`, which scores many
strategies on a fresh pool and replaces it when a worker dies."""

from __future__ import annotations

from typing import Any

from acpsearch.service.context import StudyRun

MAX_POOL_CRASHES = 6  # crashed scoring batches tolerated per phase before the phase fails


class RankerPool:
    """A few Ray actors that each hold the graph + ranker; batches go round-robin.

    `nodes[i]` is the Ray node of actor i (trials record where they were scored)."""

    def __init__(self, run: StudyRun, ray_mod: Any, name: str, n: int) -> None:
        from acpsearch.devices import actor_options, check_cluster_fits, resources_of
        from acpsearch.service.labelfree import work_splits
        from acpsearch.service.tasks import RankerWorker

        need_data = name in ("adaptive_bn", "code_agreement", "branch_damage", "ft_steps")
        splits = work_splits(run.spec, run.splits) if need_data else None  # label-free: no labels
        res = resources_of(run.spec.search)  # {cpu: 1, gpu: 0} unless the spec says otherwise
        check_cluster_fits(ray_mod.cluster_resources(), res, "search.resources")
        actor = ray_mod.remote(**actor_options(run.spec, "search"))(RankerWorker)
        ckpt_ref = ray_mod.put(run.base_ckpt)
        enc_ref = ray_mod.put(run.encoder_state)
        splits_ref = ray_mod.put(splits)
        self.ray = ray_mod
        self.run, self.name = run, name
        self.actors = [
            actor.remote(
                name,
                ckpt_ref,
                run.spec,
                enc_ref,
                splits_ref,
                threads=res["cpu"],
                allow_factories=run.allow,
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
            raise RuntimeError(f"{what}: Ray workers failed {crashes} times; last: {first_line(exc)}") from None
        self.close()
        return RankerPool(self.run, self.ray, self.name, len(self.actors))

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - an actor that already died needs no kill
                pass


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def score_on_ray(
    run: StudyRun, ray_mod: Any, name: str, ratios: list[dict[str, float]], chunk: int = 16, round_to: int = 4
) -> list[float]:
    """Scores of many strategies (encoder signal, re-ranking). A chunk whose worker died is
    scored again by a fresh pool, at most MAX_POOL_CRASHES times in all."""
    pool = RankerPool(run, ray_mod, name, run.workers)
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
                run.reporter.log(f"{name}: a Ray worker failed ({first_line(exc)}); retrying the chunk")
                pool = pool.replace(crashes, exc, name)
                continue
            i += len(part)
            run.check()
        return out
    finally:
        pool.close()
