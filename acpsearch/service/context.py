"""What every phase of a study run reads: `StudyRun`, an immutable bundle of the study, its spec, the
storage handles, the artifact directory, the data splits and (once the base phase has run) the base
network's checkpoint, graph and dynamic space; and `Record`, what a phase returns to the runner.

Phases never change a StudyRun: the runner builds the next one with `dataclasses.replace` after
the phase that provides its fields (base: checkpoint, graph, space; encoder: encoder state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acpsearch.service.lease import Lease
from acpsearch.service.progress import Reporter
from acpsearch.service.spec import StudySpec


@dataclass(frozen=True)
class Record:
    """What a phase returns: `details` become its stored record `phase.NAME` (next to done, seconds,
    at). `seconds` None: the time the runner measured; 0.0: the phase had nothing to do (not
    configured for this study): stored with 0 seconds and not reported as a finished phase."""

    details: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class StudyRun:
    storage: Any
    url: str
    study: Any
    spec: StudySpec
    artifacts: Path
    store: Any
    reporter: Reporter
    workers: int
    allow: Any  # acpsearch.trust.FactoryPolicy: the factory modules this run may import
    splits: Any
    lease: Lease | None = None
    base_ckpt: dict[str, Any] | None = None  # from the base phase on
    graph: Any = None
    space: Any = None
    encoder_state: dict[str, Any] | None = None  # from the encoder phase on (None: no encoder)

    @property
    def name(self) -> str:
        return str(self.study.study_name)

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
        return upload_artifact(
            artifact_store=self.store,
            file_path=str(path),
            study_or_trial=target if target is not None else self.study,
            mimetype=mimetype or None,
        )
