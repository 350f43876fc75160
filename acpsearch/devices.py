"""Devices, Ray resources and seeds.

- `device` values (spec `train.device`, `--device`): ``auto`` (cuda when torch sees a GPU, else the
  CPU), ``cpu``, ``cuda`` or ``cuda:N``. `check_device` checks the word only (a spec is submitted
  from a laptop and run on a GPU machine); `resolve_device` checks it against this machine: asking
  for cuda without a GPU is an error (exit 2), never a silent CPU run.
- Ray work (finalist fine-tuning trials, ranker actors) gets its device from its resources
  (`finetune.resources` / `search.resources`: ``{cpu: N, gpu: F}``): gpu > 0 means Ray gave the
  trial a (share of a) GPU and set CUDA_VISIBLE_DEVICES for it, so the work runs on ``cuda``.
- `seed_everything` seeds python's random, numpy and torch (CPU and every CUDA device): called
  BEFORE a model is built, the same seed gives the same initial weights.
"""

from __future__ import annotations

import random
import re
from typing import Any, Protocol

from acpsearch.errors import SpecError, echo

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
_DEVICE_RE = re.compile(r"(auto|cpu|cuda|cuda:(0|[1-9][0-9]{0,3}))\Z")


def check_device(value: Any, field: str = "--device") -> str:
    """`value` if it is a device word (auto, cpu, cuda, cuda:N), else SpecError naming `field`."""
    if not isinstance(value, str) or _DEVICE_RE.fullmatch(value) is None:
        raise SpecError(f"{field}: must be one of {DEVICE_CHOICES}, got {echo(value)}")
    return value


def resolve_device(value: Any, field: str = "--device") -> Any:
    """The torch.device `value` names on this machine; SpecError (one line naming `field`) for an
    unknown word, cuda without a usable GPU, or cuda:N beyond the GPUs torch sees."""
    import torch

    word = check_device(value, field)
    if word == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if word == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        raise SpecError(
            f"{field}: {word!r} asked, but torch sees no CUDA GPU on this machine "
            f"(torch.cuda.is_available() is False); use cpu or auto"
        )
    dev = torch.device(word)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise SpecError(
            f"{field}: {word!r} asked, but torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
            f"(cuda:0 .. cuda:{count - 1})"
        )
    return dev


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy and torch (CPU and all CUDA devices) with `seed`."""
    import numpy as np
    import torch

    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily when CUDA is not initialised yet)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class _Resources(Protocol):  # acpsearch.service.spec.ResourcesSpec
    @property
    def cpu(self) -> int: ...
    @property
    def gpu(self) -> float: ...


class _WithResources(Protocol):  # the spec's search and finetune sections
    @property
    def resources(self) -> _Resources: ...


class _WithFinetune(Protocol):  # a StudySpec
    @property
    def finetune(self) -> _WithResources: ...


def resources_of(section: _WithResources) -> dict[str, Any]:
    """{"cpu": int, "gpu": float} of a spec's `search` or `finetune` section (a spec stored before
    `resources` existed was parsed back with the section's default: 1 CPU, no GPU)."""
    return {"cpu": int(section.resources.cpu), "gpu": float(section.resources.gpu)}


def trial_resources(spec: _WithFinetune) -> dict[str, float]:
    """What every finalist fine-tuning trial asks Ray Tune for (`tune.with_resources`): the spec's
    finetune.resources as {"cpu": N, "gpu": F}; "gpu" is left out when it is 0 (as before)."""
    res = resources_of(spec.finetune)
    out: dict[str, float] = {"cpu": res["cpu"]}
    if res["gpu"] > 0:
        out["gpu"] = res["gpu"]
    return out


def actor_options(spec: Any, section: str = "search") -> dict[str, float]:
    """Ray `.options` / `ray.remote` keywords of a ranker actor: num_cpus, and num_gpus when > 0."""
    res = resources_of(getattr(spec, section))
    out: dict[str, float] = {"num_cpus": res["cpu"]}
    if res["gpu"] > 0:
        out["num_gpus"] = res["gpu"]
    return out


def worker_device(gpu: float) -> Any:
    """The device of Ray work that was given `gpu` GPUs: cuda when gpu > 0 (Ray set
    CUDA_VISIBLE_DEVICES to the GPU it gave), else the CPU. A GPU given by Ray that torch cannot see
    is an error, not a silent CPU run."""
    import torch

    if gpu and gpu > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Ray gave this worker {gpu:g} GPU, but torch sees no CUDA GPU (is this node's torch built with CUDA?)"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def check_cluster_fits(cluster: dict[str, Any], res: dict[str, Any], field: str) -> None:
    """SpecError unless one unit of `res` ({"cpu", "gpu"}) fits on the Ray cluster whose
    `ray.cluster_resources()` is `cluster`: a trial asking for more would wait forever."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if res["gpu"] > 0 and gpus < res["gpu"]:
        have = "none" if gpus == 0 else f"{gpus:g}"
        raise SpecError(
            f"{field}.gpu: {res['gpu']:g} GPU asked per worker, the Ray cluster has {have} "
            "(start its nodes with --num-gpus: workers/README.md)"
        )
    if cpus and res["cpu"] > cpus:
        raise SpecError(f"{field}.cpu: {res['cpu']} CPUs asked per worker, the Ray cluster has {cpus:g}")
