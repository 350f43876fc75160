"""`acpsearch baselines`: the table as JSON on digits, and one-line exit-2 refusals."""

from __future__ import annotations

import json

from acpsearch.cli import run


def test_baselines_json(capsys):
    code = run(["baselines", "--data", "digits", "--methods", "lsh,itq", "--bits", "16,32", "--seeds", "2", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sizes"] == {"train": 600, "query": 100, "database": 947}
    rows = {(r["method"], r["bits"]): r for r in doc["rows"]}
    assert set(rows) == {("lsh", 16), ("lsh", 32), ("itq", 16), ("itq", 32)}
    assert all(r["seeds"] == 2 for r in rows.values()) and len(doc["runs"]) == 8
    assert rows[("itq", 32)]["map_all"] > rows[("lsh", 32)]["map_all"]
    assert rows[("lsh", 32)]["map_all_std"] > 0  # two random projections differ


def test_baselines_table_and_refusals(capsys):
    assert run(["baselines", "--data", "digits", "--methods", "pcah", "--bits", "8"]) == 0
    out = capsys.readouterr().out
    assert "PCAH" in out and "mAP@1000" in out
    for argv, message in (
        (["--bits", "16,abc"], "--bits: 'abc' is not an integer"),
        (["--bits", "0"], "--bits: 0 is outside [1, 1024]"),
        (["--methods", "itq,sh"], "--methods: unknown 'sh'"),
        (["--device", "tpu"], "--device: must be cpu or cuda"),
    ):
        assert run(["baselines", "--data", "digits", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
