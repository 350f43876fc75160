"""Checkpoint format: weights-only round trip, and refusal of corrupt / foreign / code-running files."""

from __future__ import annotations

import pickle

import pytest
import torch

from acpsearch.checkpoint import import_factory, load_model, read_checkpoint, save_checkpoint
from acpsearch.errors import CheckpointError, SpecError

LINEAR_CFG = {"factory": "torch.nn:Linear", "kwargs": {"in_features": 4, "out_features": 3}}


def test_round_trip_restores_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    path = save_checkpoint(tmp_path / "m.pt", model, LINEAR_CFG, [1, 4], meta={"note": "x"})
    # the file itself loads with weights_only=True: no code is unpickled
    raw = torch.load(path, weights_only=True)
    assert raw["meta"] == {"note": "x"} and raw["format"] == "acpsearch"
    loaded = load_model(path, allow_factories=["torch.nn"])  # the factory's module is allowed by the caller
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"this is not a torch file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(p)


class _Evil:
    def __reduce__(self):  # would run code when unpickled
        return (print, ("pwned",))


def test_code_running_pickle_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"format": "acpsearch", "payload": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(p)
    assert "pwned" not in capsys.readouterr().out


def test_foreign_checkpoint(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), p)  # a plain state dict: not ours
    with pytest.raises(CheckpointError, match="foreign"):
        load_model(p)


def test_mismatched_weights(tmp_path):
    p = save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(4, 3), LINEAR_CFG, [1, 4])
    ckpt = torch.load(p, weights_only=True)
    ckpt["model"]["kwargs"]["out_features"] = 5
    torch.save(ckpt, p)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(p, allow_factories=["torch.nn"])


@pytest.mark.parametrize(
    "path,match",
    [("nomodule", "not of the form"), ("no_such_pkg_xyz:f", "cannot import"), ("torch.nn:NoSuchThing", "no callable")],
)
def test_factory_errors(path, match):
    with pytest.raises(SpecError, match=match):
        import_factory(path)


def test_message_is_one_line(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError) as info:
        load_model(p)
    assert "\n" not in str(info.value)
