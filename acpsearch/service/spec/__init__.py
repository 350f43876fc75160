"""Study spec: the YAML a user submits, validated with pydantic (one line per refusal).

fields.py holds the choice lists, bounds and field types; sections.py the spec's sections;
study_spec.py the whole spec, its validation and error lines; yaml_loader.py reading a file.
"""

from __future__ import annotations

from acpsearch.service.spec.fields import (
    CRITERIA,
    DATASETS,
    LOSSES,
    MAX_BATCH_SIZE,
    MAX_CANDIDATES,
    MAX_EPOCHS,
    MAX_FINALISTS,
    MAX_PER_CLASS,
    MAX_ROUNDS,
    MAX_STRATEGIES,
    MAX_WORKERS,
    NAME_RE,
    RANKERS,
    SAMPLERS,
    SEED_LIMIT,
    check_name,
    valid_name,
)
from acpsearch.service.spec.sections import (
    BudgetSpec,
    DataSpec,
    EncoderSpec,
    FinetuneSpec,
    ModelSpec,
    ProtocolSpec,
    ResourcesSpec,
    SearchSpec,
    SpaceSpec,
    TrainSpec,
)
from acpsearch.service.spec.study_spec import StudySpec, parse_spec, spec_from_json
from acpsearch.service.spec.yaml_loader import load_spec, safe_yaml_load

__all__ = [
    "CRITERIA",
    "DATASETS",
    "LOSSES",
    "MAX_BATCH_SIZE",
    "MAX_CANDIDATES",
    "MAX_EPOCHS",
    "MAX_FINALISTS",
    "MAX_PER_CLASS",
    "MAX_ROUNDS",
    "MAX_STRATEGIES",
    "MAX_WORKERS",
    "NAME_RE",
    "RANKERS",
    "SAMPLERS",
    "SEED_LIMIT",
    "BudgetSpec",
    "DataSpec",
    "EncoderSpec",
    "FinetuneSpec",
    "ModelSpec",
    "ProtocolSpec",
    "ResourcesSpec",
    "SearchSpec",
    "SpaceSpec",
    "StudySpec",
    "TrainSpec",
    "check_name",
    "load_spec",
    "parse_spec",
    "safe_yaml_load",
    "spec_from_json",
    "valid_name",
]
