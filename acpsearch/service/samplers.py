"""The Optuna samplers a study's `search.sampler` names, seeded with `search.seed`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acpsearch.errors import SpecError

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

SAMPLERS: tuple[str, ...] = ("tpe", "random", "nsga2", "qmc", "gp")


def make_sampler(name: str, seed: int | None = None) -> BaseSampler:
    """The Optuna sampler `name` (one of SAMPLERS) seeded with `seed`; SpecError for any other name."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate/group TPE
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise SpecError(f"search.sampler: unknown sampler {name!r} (one of: {', '.join(SAMPLERS)})")
