"""The progressive driver on a tiny trained network, and short checkpoints that load_model rebuilds."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from acpsearch.checkpoint import load_model, read_checkpoint, save_checkpoint
from acpsearch.checkpoint.code import code_of, shortened_record
from acpsearch.codelength import base_centres, find_hash_layer, min_centre_distance, shorten
from acpsearch.errors import CheckpointError, SpecError
from acpsearch.hashing import create_model, encode, load_dataset, make_splits, train_hash_net

KW = {"bits": 16, "in_channels": 1, "image_size": 8}


@pytest.fixture(scope="module")
def digits() -> Any:
    return make_splits(load_dataset("digits"), 10, 40, 10, seed=0)


@pytest.fixture(scope="module")
def csq_net(digits: Any) -> torch.nn.Module:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return train_hash_net(
        create_model("resnet20", **KW), digits, epochs=2, lr=3e-3, batch_size=64, progress=False
    ).model


def test_prune_auto_picks_the_best_validation_criterion_and_keeps_centres_apart(csq_net: Any, digits: Any) -> None:
    res = shorten(csq_net, digits, [12, 8, 4], criterion="auto", epochs=1, batch_size=64)
    assert [r.bits for r in res] == [12, 8, 4]
    for r in res:
        assert find_hash_layer(r.model)[1].out_features == r.bits
        assert set(r.candidates) == {"loss", "map", "balance", "quant", "random", "centre"}
        assert r.criterion == max(r.candidates, key=lambda k: r.candidates[k])  # chosen on validation
        assert r.val_map == r.candidates[r.criterion]
        assert r.code_map.from_bits == 16 and r.code_map.is_pruning
        assert r.centres is not None and min_centre_distance(r.centres) > 0  # reused base columns
        assert torch.equal(r.centres, base_centres("csq", 16, 10)[:, r.code_map.kept])
    assert set(res[2].code_map.kept) <= set(res[1].code_map.kept) <= set(res[0].code_map.kept)
    assert find_hash_layer(csq_net)[1].out_features == 16  # the input network is unchanged


def test_no_finetuning_gives_exactly_the_kept_bits(csq_net: Any, digits: Any) -> None:
    res = shorten(csq_net, digits, [10, 6], criterion="balance", epochs=0)
    x = digits.query[0]
    base, short = encode(csq_net, x, channels_last=False), encode(res[1].model, x, channels_last=False)
    assert torch.equal(short, base[:, res[1].code_map.kept])


def test_merge_reaches_each_length_and_round_trips_through_a_checkpoint(
    csq_net: Any, digits: Any, tmp_path: Path
) -> None:
    res = shorten(csq_net, digits, [10, 5], method="merge", epochs=2, batch_size=64)
    assert [r.bits for r in res] == [10, 5] and all(r.method == "merge" for r in res)
    assert not res[1].code_map.is_pruning
    assert min_centre_distance(res[1].centres) > 0
    r = res[1]
    path = save_checkpoint(
        tmp_path / "m5.pt",
        r.model.to(memory_format=torch.contiguous_format),
        {"zoo": "resnet20", "kwargs": KW},
        [1, 1, 8, 8],
        pruning=shortened_record(None, "hash_layer", r.record()),
        meta={"dataset": "digits", "bits": 5},
    )
    loaded = load_model(path)
    x = digits.query[0][:50]
    with torch.no_grad():
        assert loaded(x).shape == (50, 5)
        assert torch.allclose(loaded(x), r.model.eval()(x), atol=1e-5)
    cmap, centres = code_of(read_checkpoint(path))
    assert cmap == r.code_map and torch.equal(centres, r.centres)
    # continuing from the record: a second shortening composes with the stored map
    more = shorten(loaded, digits, [3], method="prune", criterion="centre", epochs=0, code_map=cmap, centres=centres)
    assert more[0].code_map.from_bits == 16 and more[0].bits == 3


def test_a_damaged_code_record_is_one_line(csq_net: Any, tmp_path: Path) -> None:
    bad = {"from_bits": 16, "kept": [0, 99]}
    path = save_checkpoint(
        tmp_path / "bad.pt",
        csq_net,
        {"zoo": "resnet20", "kwargs": KW},
        [1, 1, 8, 8],
        pruning=shortened_record(None, "hash_layer", bad),
    )
    with pytest.raises(CheckpointError, match="pruning.code") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_pair_loss_and_bad_schedules(digits: Any) -> None:
    torch.manual_seed(1)
    net = train_hash_net(
        create_model("resnet20", **KW), digits, loss="hashnet", epochs=1, batch_size=64, progress=False
    ).model
    res = shorten(net, digits, [8], loss="hashnet", criterion="centre", epochs=1, batch_size=64)
    assert res[0].centres is None and res[0].bits == 8
    for lengths, word in (([16], "not shorter"), ([8, 12], "descending"), ([0], ">= 1"), ([], "at least")):
        with pytest.raises(SpecError, match=word):
            shorten(net, digits, lengths, loss="hashnet")
    with pytest.raises(SpecError, match="criterion"):
        shorten(net, digits, [8], criterion="best")
    with pytest.raises(SpecError, match="method"):
        shorten(net, digits, [8], method="fold")


FACTORY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, bits):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.code = nn.Linear(32, bits)

    def forward(self, x):
        return self.code(self.encoder(x))

def make(bits=12):
    return Net(bits)
"""


def test_user_factory_network(digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cl_factory_net.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cl_factory_net", None)
    import cl_factory_net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    net = train_hash_net(cl_factory_net.make(12), digits, epochs=2, batch_size=64, progress=False).model
    assert find_hash_layer(net)[0] == "code"
    res = shorten(net, digits, [8, 4], method="merge", epochs=1, batch_size=64)
    cfg = {"factory": "cl_factory_net:make", "kwargs": {"bits": 12}}
    path = save_checkpoint(
        tmp_path / "f4.pt", res[1].model, cfg, [1, 1, 8, 8], pruning=shortened_record(None, "code", res[1].record())
    )
    loaded = load_model(path, allow_factories=["cl_factory_net"])
    x = digits.query[0][:20]
    with torch.no_grad():
        assert loaded(x).shape == (20, 4)
        assert torch.allclose(loaded(x), res[1].model.eval()(x), atol=1e-5)
