"""optuna-dashboard over a finished study: the real WSGI app (no server) and `acpsearch dashboard`
as a real server process. The study must show its attributes, note, artifacts and figures."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

VENV_BIN = Path(sys.executable).parent


def _get(app, path: str) -> tuple[str, bytes]:
    env: dict = {}
    setup_testing_defaults(env)
    env["PATH_INFO"], _, env["QUERY_STRING"] = path.partition("?")
    status: dict = {}

    def start_response(s, headers, exc_info=None):  # noqa: ANN001
        status["s"] = s

    body = b"".join(app(env, start_response))
    return status["s"], body


@pytest.fixture(scope="module")
def app(finished_studies):
    import optuna_dashboard

    from acpsearch.service.storage import artifact_store, open_storage

    return optuna_dashboard.wsgi(
        open_storage(finished_studies["url"]), artifact_store=artifact_store(finished_studies["artifacts"])
    )


def _attrs(entries: list[dict]) -> dict:
    return {e["key"]: e["value"] for e in entries}


def test_api_studies_lists_both_studies_and_finetune_companions(app):
    status, body = _get(app, "/api/studies")
    assert status.startswith("200")
    names = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
    assert {"tiny-a", "tiny-b", "tiny-a.finetune", "tiny-b.finetune"} <= set(names)
    assert names["tiny-a"]["directions"] == ["maximize"]


def test_study_detail_has_attrs_note_artifacts_and_figures(app, finished_studies):
    _, body = _get(app, "/api/studies")
    sid = {s["study_name"]: s["study_id"] for s in json.loads(body)["study_summaries"]}["tiny-a"]
    status, body = _get(app, f"/api/studies/{sid}?after=0")
    assert status.startswith("200")
    d = json.loads(body)
    assert d["objective_names"] == ["similarity score (ranker, not mAP)"]
    attrs = _attrs(d["user_attrs"])
    # headline numbers as flat attributes (the dashboard cuts long values such as the full `winner`)
    winner = {k.split(".", 1)[1]: json.loads(v) for k, v in attrs.items() if k.startswith("winner.")}
    base = {k.split(".", 1)[1]: json.loads(v) for k, v in attrs.items() if k.startswith("base.")}
    assert winner["flops_ratio"] <= 0.5 + 1e-9 and 0 < winner["test_map"] <= 1 and 0 < winner["val_map"] <= 1
    assert winner["latency_ms"] > 0 and base["latency_ms"] > 0 and base["flops"] > winner["measured_flops"]
    assert "winner" in attrs and "spec" in attrs
    assert attrs["state"] in ("done", '"done"')
    for p in ("base", "encoder", "search", "finetune", "select", "report"):
        assert f"phase.{p}" in attrs
    note = d["note"]["body"]
    assert note.startswith("# tiny-a")
    for text in (
        "| test mAP@all |",
        "| FLOPs (MACs) |",
        "| params |",
        "| latency",
        "Keep ratio per channel group",
        "Time per phase",
        "| base |",
        "| finetune |",
    ):
        assert text in note, text
    files = {a["filename"] for a in d["artifacts"]}
    assert {"base.pt", "encoder.pt", "winner.pt", "report.json", "report.html", "report.md"} <= files
    assert len(d["plotly_graph_objects"]) == 3
    # candidate trials: constraint values are visible as user attributes (the dashboard does not
    # show Optuna-5 constraints itself)
    trial = d["trials"][0]
    tattrs = _attrs(trial["user_attrs"])
    for key in ("flops", "params", "flops_ratio", "params_ratio", "similarity", "constraint.flops", "feasible"):
        assert key in tattrs
    assert all(p["name"].startswith("keep/") for p in trial["params"])
    # an artifact is served back byte for byte
    art = next(a for a in d["artifacts"] if a["filename"] == "report.json")
    status, blob = _get(app, f"/artifacts/{sid}/{art['artifact_id']}")
    assert status.startswith("200")
    rep = json.loads(blob)
    assert (
        rep["study"] == "tiny-a"
        and rep["candidates"] == 24
        and rep["winner"]["test_map"] == pytest.approx(winner["test_map"])
    )


def test_finetune_study_shows_learning_curves(app):
    _, body = _get(app, "/api/studies")
    sid = {s["study_name"]: s["study_id"] for s in json.loads(body)["study_summaries"]}["tiny-a.finetune"]
    d = json.loads(_get(app, f"/api/studies/{sid}?after=0")[1])
    assert d["objective_names"] == ["val_map"] and d["has_intermediate_values"]
    states = {t["state"] for t in d["trials"]}
    assert states <= {"Complete", "Pruned"} and "Complete" in states
    for t in d["trials"]:
        assert len(t["intermediate_values"]) >= 2
        ua = _attrs(t["user_attrs"])
        assert "val_map" in ua and "test_map" in ua and "latency_ms" in ua


def _study_ids(app) -> dict:
    _, body = _get(app, "/api/studies")
    return {s["study_name"]: s["study_id"] for s in json.loads(body)["study_summaries"]}


@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_dashboard_marks_the_winner(app, finished_studies, name):
    """The fine-tune study's Best Trial IS the winner (with `winner: true` and a note saying why); the
    search study's Best Trial is a ranker score, and its note and the winner's candidate say so."""
    from acpsearch.service.storage import open_storage

    ids = _study_ids(app)
    search = json.loads(_get(app, f"/api/studies/{ids[name]}?after=0")[1])
    # the dashboard cuts long attribute values (the full `winner` dict): its flat copies, and the storage
    flat = {
        k.split(".", 1)[1]: json.loads(v) for k, v in _attrs(search["user_attrs"]).items() if k.startswith("winner.")
    }
    winner = optuna.load_study(study_name=name, storage=open_storage(finished_studies["url"])).user_attrs["winner"]
    ft_trial, cand = flat["finetune_trial"], flat["candidate"]
    assert (ft_trial, cand) == (winner["finetune_trial"], winner["candidate"])
    ft = json.loads(_get(app, f"/api/studies/{ids[name + '.finetune']}?after=0")[1])
    # Optuna's best trial of NAME.finetune (val mAP; ASHA-stopped finalists are PRUNED, no value) = the winner
    assert [t["number"] for t in ft["best_trials"]] == [ft_trial]
    best = ft["best_trials"][0]
    assert best["values"] == [pytest.approx(winner["val_map"])]
    assert _attrs(best["user_attrs"])["winner"] in (True, "true", "True")
    others = [t for t in ft["trials"] if t["number"] != ft_trial]
    assert others and all("winner" not in _attrs(t["user_attrs"]) for t in others)
    ft_note = next(t for t in ft["trials"] if t["number"] == ft_trial)["note"]["body"]
    assert "**winner**" in ft_note and "validation mAP" in ft_note and f"{winner['val_map']:.4f}" in ft_note
    assert "test mAP" in ft_note and f"{winner['test_map']:.4f}" in ft_note
    assert f"Best Trial here = the winner: trial {ft_trial}" in ft["note"]["body"]
    # the search study: objective named as a ranker score; the note names the winner
    ranker = "similarity" if name == "tiny-a" else "l1_retained"
    assert search["objective_names"] == [f"{ranker} score (ranker, not mAP)"]
    assert (
        f"Best Trial here = highest ranker score (`{ranker}`), not the winner; the winner is trial {ft_trial} "
        f"of {name}.finetune"
    ) in search["note"]["body"]
    marked = [t for t in search["trials"] if "winner" in _attrs(t["user_attrs"])]
    assert [t["number"] for t in marked] == [cand]
    assert f"trial {ft_trial}" in marked[0]["note"]["body"] and "ranker" in marked[0]["note"]["body"]
    # keep ratios as user attrs: rounded (params keep Optuna's own floats)
    assert "0.6000000000000001" not in _attrs(marked[0]["user_attrs"])["keep"]
    keep = (
        optuna.load_study(study_name=name, storage=open_storage(finished_studies["url"]))
        .trials[cand]
        .user_attrs["keep"]
    )
    assert keep and all(v == round(v, 4) for v in keep.values())
    assert all(v == round(v, 4) for v in winner["ratios"].values())
    # the latency of base and winner was measured interleaved, with its spread
    cmp = winner["latency_compare"]
    assert cmp["rounds"] >= 5 and cmp["batch"] == 32 and cmp["threads"] == 1
    assert cmp["base_q1_ms"] <= cmp["base_median_ms"] <= cmp["base_q3_ms"]
    assert cmp["winner_q1_ms"] <= cmp["winner_median_ms"] <= cmp["winner_q3_ms"]
    line = _attrs(search["user_attrs"])["latency.base_vs_winner"]
    assert re.match(r"(no measurable difference|\d+\.\d\dx (faster|slower)): base ", line), line
    assert f"base {cmp['base_median_ms']:.2f} (IQR" in line and "7 interleaved rounds" in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_acpsearch_dashboard_serves_the_study(finished_studies, tmp_path):
    """`acpsearch dashboard` as a real server: reads a config file, says when --host is not local."""
    port = _free_port()
    cfg = tmp_path / "dash.yaml"
    cfg.write_text(
        f"storage: {finished_studies['url']}\nartifacts: {finished_studies['artifacts']}\n"
        f"host: 127.0.0.1\nport: {port}\n"
    )
    proc = subprocess.Popen(
        [str(VENV_BIN / "acpsearch"), "dashboard", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        data = None
        deadline = time.time() + 60
        while time.time() < deadline and data is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    data = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert data is not None, "dashboard did not come up"
        assert "tiny-a" in {s["study_name"] for s in data["study_summaries"]}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in err
    bad = subprocess.run(
        [str(VENV_BIN / "acpsearch"), "dashboard", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--config" in bad.stderr


def test_dashboard_config_validation(tmp_path):
    from acpsearch.commands.dashboard import dashboard_config
    from acpsearch.errors import SpecError

    p = tmp_path / "d.yaml"
    p.write_text("storage: sqlite:///x.db\nprot: 1\n")
    with pytest.raises(SpecError, match="unknown key 'prot'"):
        dashboard_config(str(p))
    root_cfg = Path(__file__).resolve().parents[2] / "dashboards" / "dashboard.yaml"
    cfg = dashboard_config(str(root_cfg))
    assert cfg["host"] == "127.0.0.1" and int(cfg["port"]) == 8080
