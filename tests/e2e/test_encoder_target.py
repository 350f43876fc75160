"""A study whose `effect` encoder learns from code agreement plus residual-branch damage, or from
a short fine-tune's validation mAP: the signals are scored on Ray workers (a failing worker would
fail the phase), the phase records the target, and the trained encoder is stored for the search."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY_SPEC, StoppedAtPhase, stop_at_phase, train_tiny_base


@pytest.mark.parametrize(
    "encoder",
    [
        {"target": "agreement+branch", "strategies": 16},
        {"target": "ft_steps", "ft_steps": 2, "strategies": 8},
    ],
    ids=["agreement+branch", "ft_steps"],
)
def test_encoder_target_trains_the_encoder_on_ray(tmp_path: Path, ray_session: Any, encoder: dict[str, Any]) -> None:
    from acpsearch.encoder import StructureEncoder
    from acpsearch.service import study as st
    from acpsearch.service.runner import run_study
    from acpsearch.service.spec import parse_spec
    from acpsearch.service.storage import open_storage

    url = f"sqlite:///{tmp_path / 't.db'}"
    spec = copy.deepcopy(TINY_SPEC)
    spec["name"] = "target"
    spec["model"]["checkpoint"] = str(train_tiny_base(tmp_path / "base.pt"))
    spec["encoder"] = {"objective": "effect", "epochs": 5, **encoder}
    storage = open_storage(url)
    st.submit(storage, parse_spec(spec), "target")
    with pytest.raises(StoppedAtPhase):  # when the search starts: the encoder phase is stored
        run_study(url, "target", artifacts=tmp_path / "artifacts", reporter=stop_at_phase("search"))
    rec = st.load_search_study(storage, "target").user_attrs["phase.encoder"]
    assert rec["objective"] == "effect" and rec["target"] == encoder["target"]
    assert rec["strategies"] == encoder["strategies"]
    assert len(rec["losses"]) == 5

    assert StructureEncoder.load(rec["path"]).state()  # the artifact the search phase loads
