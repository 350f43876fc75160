"""Study spec validation: one-line errors naming the field; the shipped specs validate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from acpsearch.errors import SpecError
from acpsearch.service.spec import StudySpec, load_spec, parse_spec, spec_from_json

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"model": {"zoo": "resnet20"}, "data": {"dataset": "digits"}, "budget": {"flops": 0.5}}


def _with(path: str, value):
    d = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    cur = d
    for p in parents:
        cur = cur.setdefault(p, {})
    cur[last] = value
    return d


def test_encoder_target():
    assert parse_spec(copy.deepcopy(MINIMAL)).encoder.target == "agreement"
    assert parse_spec(_with("encoder.target", "agreement+branch")).encoder.target == "agreement+branch"
    with pytest.raises(SpecError, match=r"^spec: encoder.target: .*needs objective: effect"):
        parse_spec(_with("encoder", {"objective": "sacp", "target": "agreement+branch"}))
    with pytest.raises(SpecError, match=r"^spec: encoder.target: "):
        parse_spec(_with("encoder.target", "branch"))


def test_encoder_ft_steps_target():
    s = parse_spec(_with("encoder", {"target": "ft_steps", "ft_steps": 100}))
    assert s.encoder.target == "ft_steps" and s.encoder.ft_steps == 100
    assert parse_spec(copy.deepcopy(MINIMAL)).encoder.ft_steps == 40
    with pytest.raises(SpecError, match=r"^spec: encoder.ft_steps: "):
        parse_spec(_with("encoder", {"target": "ft_steps", "ft_steps": 0}))
    # its signal is a labelled validation mAP of a hash network with a fixed code length
    for path, value in (("train.loss", "lagnh"), ("task", "classification"), ("budget.bits", 16)):
        d2 = _with(path, value)
        d2["encoder"] = {"target": "ft_steps"}
        with pytest.raises(SpecError, match="encoder.target: ft_steps needs a labelled retrieval study"):
            parse_spec(d2)


def test_minimal_spec_gets_design_defaults():
    s = parse_spec(copy.deepcopy(MINIMAL))
    assert s.model.bits == 32 and s.model.checkpoint is None
    assert s.train.loss == "csq" and s.train.epochs == 20 and s.train.batch_size == 128
    assert s.space.step == 0.1 and s.space.min_keep == 0.2 and s.space.criterion == "l1"
    assert s.encoder.objective == "effect" and s.encoder.epochs == 50 and s.encoder.strategies == 512
    assert s.search.candidates == 500 and s.search.sampler == "tpe" and s.search.workers == 2
    assert s.search.rerank is None and s.search.rerank_top == 32 and s.search.rounds == 2 and s.search.elite == 16
    assert s.finetune.top == 4 and s.finetune.epochs == 5 and s.finetune.early_stop == "asha"
    assert not (s.train.augment or s.train.hflip or s.finetune.augment or s.finetune.hflip)
    assert s.finetune.distill == 0.0
    assert s.search.anchor == "magnitude"  # one finalist slot for the global-magnitude allocation
    assert parse_spec({**copy.deepcopy(MINIMAL), "search": {"anchor": None}}).search.anchor is None
    # the protocol defaults fit the data set (digits: ~180 images per class)
    assert (s.data.protocol.query_per_class, s.data.protocol.train_per_class, s.data.protocol.val_per_class) == (
        10,
        60,
        15,
    )
    assert s.data.normalize == "train" and s.data.stream and s.data.workers == 0 and s.data.image_size is None
    fm = parse_spec({**copy.deepcopy(MINIMAL), "data": {"dataset": "fashion-mnist"}}).data.protocol
    assert (fm.query_per_class, fm.train_per_class, fm.val_per_class) == (100, 500, 100)


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("budget.flops", 1.5, "spec: budget.flops: must be in (0, 1], got 1.5"),
        ("budget.flops", 0.0, "spec: budget.flops: must be in (0, 1], got 0.0"),
        ("budget.params", -0.1, "spec: budget.params: must be in (0, 1], got -0.1"),
        ("budget.latency_ms", 0, "spec: budget.latency_ms: must be > 0, got 0"),
        ("budget.flops", "half", "spec: budget.flops: "),
        ("train.epochs", "3", "spec: train.epochs: input should be a valid integer, got '3'"),
        ("train.epochs", 0, "spec: train.epochs: must be in [1, 10000], got 0"),
        ("train.epochs", True, "spec: train.epochs: input should be a valid integer"),
        ("train.lr", -1.0, "spec: train.lr: must be in (0, 10], got -1.0"),
        (
            "train.loss",
            "mse",
            "spec: train.loss: input should be 'csq', 'hashnet', 'dpsh', 'lagnh' or 'odh', got 'mse'",
        ),
        ("space.step", 0.7, "spec: space.step: must be in [0.01, 0.5], got 0.7"),
        ("space.criterion", "l3", "spec: space.criterion: input should be"),
        ("search.workers", 0, "spec: search.workers: must be in [1, 1024], got 0"),
        ("search.sampler", "cmaes", "spec: search.sampler: input should be"),
        ("search.rerank", "oracle", "spec: search.rerank: input should be"),
        ("search.anchor", "uniform", "spec: search.anchor: input should be 'magnitude'"),
        ("finetune.early_stop", "median", "spec: finetune.early_stop: input should be 'asha', got 'median'"),
        ("model.bits", 1, "spec: model.bits: must be in [2, 4096], got 1"),
        (
            "model.factory",
            "nocolon",
            "spec: model.factory: must be of the form 'package.module:function', got 'nocolon'",
        ),
        ("data.dataset", "imagenet", "spec: data.dataset: input should be"),
        ("data.protocol.train_per_class", 0, "spec: data.protocol.train_per_class: must be in [1, 10000000], got 0"),
        ("name", "bad name!", "spec: name: must match"),
        ("finetune.hflip", True, "spec: finetune.hflip: true needs augment: true"),
        ("train.hflip", True, "spec: train.hflip: true needs augment: true"),
        ("finetune.augment", "yes", "spec: finetune.augment: input should be a valid boolean, got 'yes'"),
        ("finetune.distill", -0.5, "spec: finetune.distill: must be in [0, 100], got -0.5"),
        ("finetune.distill", float("nan"), "spec: finetune.distill: must be in [0, 100], got nan"),
        # bounds (hardening): seeds, finite budgets, the grid step, counts a real study never reaches
        ("data.protocol.seed", -1, "spec: data.protocol.seed: must be in [0, 4294967296), got -1"),
        ("search.seed", 2**64, "spec: search.seed: must be in [0, 4294967296), got 18446744073709551616"),
        ("budget.latency_ms", float("nan"), "spec: budget.latency_ms: must be a finite number > 0, got nan"),
        ("budget.latency_ms", float("inf"), "spec: budget.latency_ms: must be a finite number > 0, got inf"),
        ("budget.params", float("inf"), "spec: budget.params: must be in (0, 1], got inf"),
        ("space.step", 1e-9, "spec: space.step: must be in [0.01, 0.5], got 1e-09"),
        ("space.step", 0.00999, "spec: space.step: must be in [0.01, 0.5], got 0.00999"),
        ("encoder.strategies", 10**12, "spec: encoder.strategies: must be in [1, 100000], got 1000000000000"),
        ("search.candidates", 100_001, "spec: search.candidates: must be in [1, 100000], got 100001"),
        ("search.rerank_top", 10**30, "spec: search.rerank_top: must be in [1, 100000], got 1" + "0" * 30),
        ("search.rounds", 101, "spec: search.rounds: must be in [1, 100], got 101"),
        ("search.workers", 1025, "spec: search.workers: must be in [1, 1024], got 1025"),
        ("finetune.top", 1001, "spec: finetune.top: must be in [1, 1000], got 1001"),
        ("train.epochs", 10_001, "spec: train.epochs: must be in [1, 10000], got 10001"),
        ("train.batch_size", 65_537, "spec: train.batch_size: must be in [1, 65536], got 65537"),
        (
            "data.protocol.query_per_class",
            10**7 + 1,
            "spec: data.protocol.query_per_class: must be in [1, 10000000], got",
        ),
        (
            "model.kwargs",
            {"bits": 16},
            "spec: model.kwargs.bits: 16 contradicts model.bits = 32 (the default); give the "
            "code length once, as model.bits",
        ),
        ("model.checkpoint", "", "spec: model.checkpoint: empty: leave it out to train a base network"),
        ("data.path", "", "spec: data.path: empty: leave it out"),
        ("name", "x\n", "spec: name: must match"),
        ("name", "a" * 101, "spec: name: must match"),
    ],
)
def test_bad_values_name_the_field(path, value, message):
    with pytest.raises(SpecError) as exc:
        parse_spec(_with(path, value))
    msg = str(exc.value)
    assert msg.startswith(message), msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "path,message",
    [
        (
            "search.foo",
            "spec: search.foo: unknown key (allowed: candidates, sampler, workers, seed, ranker, rerank, rerank_top, rounds, elite, anchor, resources)",
        ),
        (
            "foo",
            "spec: foo: unknown key (allowed: name, model, data, train, budget, space, encoder, search, finetune, code, task)",
        ),
        ("data.protocol.bogus", "spec: data.protocol.bogus: unknown key (allowed: query_per_class"),
        ("budget.latency", "spec: budget.latency: unknown key (allowed: flops, params, latency_ms, ops, bits)"),
    ],
)
def test_unknown_keys_are_errors(path, message):
    with pytest.raises(SpecError) as exc:
        parse_spec(_with(path, 1))
    assert str(exc.value).startswith(message), str(exc.value)


def test_missing_sections_and_cross_field_rules():
    for key in ("model", "data", "budget"):
        d = copy.deepcopy(MINIMAL)
        d.pop(key)
        with pytest.raises(SpecError, match=rf"^spec: {key}: required$"):
            parse_spec(d)
    with pytest.raises(SpecError, match="set at least one of flops, params, latency_ms"):
        parse_spec(_with("budget", {}))
    with pytest.raises(SpecError, match="user-supplied: set data.path"):
        parse_spec(_with("data", {"dataset": "cifar10"}))
    with pytest.raises(SpecError, match=r"finetune.top \(9\) must be <= search.candidates \(8\)"):
        parse_spec({**_with("search", {"candidates": 8}), "finetune": {"top": 9}})
    with pytest.raises(SpecError, match="give exactly one of 'zoo' or 'factory'"):
        parse_spec(_with("model", {"zoo": "resnet20", "factory": "a.b:c"}))
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec(_with("search", "fast"))
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec(["not", "a", "mapping"])


def test_yaml_file_errors_and_relative_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {zoo: resnet20\nbudget: [")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d+"):
        load_spec(bad)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")
    good = tmp_path / "sub" / "s.yaml"
    good.parent.mkdir()
    good.write_text(
        yaml.safe_dump({**_with("model.checkpoint", "base.pt"), "data": {"dataset": "npz", "path": "../data.npz"}})
    )
    s = load_spec(good)
    assert s.model.checkpoint == str((good.parent / "base.pt").resolve())
    assert s.data.path == str((tmp_path / "data.npz").resolve())
    # the stored form round-trips exactly (what a resumed runner reads back)
    assert spec_from_json(s.to_dict()) == s
    assert isinstance(StudySpec.model_validate(s.to_dict()), StudySpec)


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    s = load_spec(path)
    assert s.name == path.stem
    assert s.model.zoo in ("resnet20", "vgg11", "mobilenetv2")
    ratio = s.budget.flops
    assert ratio in (0.5, 0.25)
    assert f"{int(ratio * 100)}flops" in path.stem


def test_shipped_specs_cover_the_issue():
    names = {p.stem for p in (ROOT / "search_spaces").glob("*.yaml")}
    for model in ("resnet20", "vgg11", "mobilenetv2"):
        for pct in (50, 25):
            assert f"{model}-fashion-mnist-{pct}flops" in names
    assert any("cifar10" in n for n in names)


def test_finetune_recipe_follows_the_spec_and_reads_older_stored_specs():
    """The finalists' fine-tune uses the spec's augmentation; a spec stored before the field
    existed (no augment / hflip keys) fine-tunes without it instead of failing."""
    from acpsearch.service.tasks import finetune_recipe

    spec = parse_spec(_with("finetune", {"epochs": 3, "lr": 0.002, "augment": True, "hflip": True, "distill": 2.5}))
    assert finetune_recipe(spec) == {
        "loss": "csq",
        "epochs": 3,
        "lr": 0.002,
        "batch_size": 128,
        "seed": 0,
        "augment": True,
        "hflip": True,
        "distill": 2.5,
    }
    stored = spec.to_dict()
    for key in ("augment", "hflip", "distill"):
        del stored["finetune"][key]
    old = finetune_recipe(spec_from_json(stored))  # a stored spec is parsed back with the defaults
    assert old["augment"] is False and old["hflip"] is False and old["distill"] == 0.0 and old["epochs"] == 3


# --- hardening: bounds, YAML, echoed values -----------------------------------------------------
AT_BOUNDS = {  # every bounded number at an end of its range
    "name": "a" * 100,
    "model": {"zoo": "resnet20", "bits": 4096, "kwargs": {"bits": 4096}},
    "data": {
        "dataset": "digits",
        "protocol": {"query_per_class": 10_000_000, "train_per_class": 1, "val_per_class": 1, "seed": 2**32 - 1},
    },
    "train": {"epochs": 10_000, "lr": 10.0, "batch_size": 65_536},
    "budget": {"flops": 1.0, "params": 1e-12, "latency_ms": 1e300},
    "space": {"step": 0.01, "min_keep": 1.0},
    "encoder": {"epochs": 1, "strategies": 100_000},
    "search": {
        "candidates": 100_000,
        "workers": 1_024,
        "seed": 0,
        "rerank": "similarity",
        "rerank_top": 100_000,
        "rounds": 100,
        "elite": 100_000,
    },
    "finetune": {"top": 1_000, "epochs": 10_000, "lr": 1e-9, "batch_size": 1, "distill": 100.0},
}


def test_a_spec_at_the_bounds_is_accepted_and_round_trips():
    s = parse_spec(copy.deepcopy(AT_BOUNDS))
    assert s.search.workers == 1024 and s.data.protocol.seed == 2**32 - 1 and s.space.step == 0.01
    assert s.model.bits == 4096 and s.model.kwargs == {"bits": 4096}  # kwargs.bits equal to model.bits: fine
    assert spec_from_json(s.to_dict()) == s
    low = parse_spec(
        {
            **copy.deepcopy(MINIMAL),
            "search": {"seed": 0, "workers": 1, "candidates": 4},
            "space": {"step": 0.5},
            "budget": {"latency_ms": 1e-9},
        }
    )
    assert low.search.workers == 1 and low.space.step == 0.5


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    p = tmp_path / "anchors.yaml"
    p.write_text(
        "model: {zoo: resnet20}\ndata: {dataset: digits}\nbudget: {flops: &half 0.5}\n"
        "train: &recipe {lr: 0.003, batch_size: 64}\nfinetune: {<<: *recipe, lr: 0.001}\n"
        "space: {min_keep: *half}\n"
    )
    s = load_spec(p)
    assert s.space.min_keep == 0.5 and s.finetune.batch_size == 64 and s.finetune.lr == 0.001


def _bomb_text(levels: int, where: str) -> str:
    lines = ["  l0: &l0 [" + ", ".join(["lol"] * 9) + "]\n"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, levels + 1)]
    return (
        "model:\n zoo: resnet20\n kwargs:\n"
        + "".join(" " + ln for ln in lines)
        + f"data: {{dataset: digits}}\nbudget: {{flops: {where}}}\n"
    )


def test_yaml_alias_bomb_fails_fast_with_one_short_line(tmp_path):
    import time

    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb_text(9, "*l9"))  # 9**10 leaves once expanded
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as exc:
        load_spec(p)
    assert time.perf_counter() - t0 < 2.0
    msg = str(exc.value)
    assert msg.startswith(f"spec {str(p)!r}: too many YAML aliases at line ") and "100,000 values" in msg, msg
    assert "\n" not in msg and len(msg) < 300
    # the same limit without the alias into budget: model.kwargs alone would be stored expanded
    p.write_text(_bomb_text(9, "0.5"))
    with pytest.raises(SpecError, match="too many YAML aliases"):
        load_spec(p)


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "model: {zoo: resnet20}\ndata: {dataset: digits}\nbudget: {flops: 0.5}\nbudget: {flops: 0.9}\n",
            "not valid YAML at line 4 (duplicate key 'budget', first at line 3)",
        ),
        (
            "model: {zoo: resnet20, zoo: vgg11}\ndata: {dataset: digits}\nbudget: {flops: 0.5}\n",
            "not valid YAML at line 1 (duplicate key 'zoo', first at line 1)",
        ),
        ("model: &m {zoo: resnet20, kwargs: {x: *m}}\n", "recursive YAML alias at line 1"),
        ("budget: {flops: " + "9" * 5000 + "}\n", "not valid YAML at line 1 (integer with too many digits)"),
    ],
)
def test_yaml_refusals(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as exc:
        load_spec(p)
    assert str(exc.value).startswith(f"spec {str(p)!r}: {message}"), str(exc.value)


def test_echoed_values_are_short_whatever_the_value():
    """parse_spec is also called with Python data (not through the YAML loader): a value shared
    9 levels deep (9**9 leaves once printed) or a 1 MB string is still echoed in a short line, fast."""
    import time

    bomb: list = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    for value in (bomb, "x" * 1_000_000, {"k" * 10_000: list(range(100_000))}, 10**5000, [10**5000]):
        t0 = time.perf_counter()
        with pytest.raises(SpecError) as exc:
            parse_spec(_with("budget.flops", value))
        msg = str(exc.value)
        assert msg.startswith("spec: budget.flops: ") and "\n" not in msg and len(msg) < 300, msg[:500]
        assert time.perf_counter() - t0 < 2.0


def test_study_names_are_matched_whole():
    from acpsearch.service.spec import check_name, valid_name

    assert valid_name("a" * 100) and valid_name("resnet20-fmnist_50.v2")
    for bad in ("x\n", "x\r", "a\tb", "", "a" * 101, "-x", "x\x00", "é"):
        assert not valid_name(bad), repr(bad)
    with pytest.raises(SpecError, match=r"^--name: empty; leave it out to use the spec's name$"):
        check_name("")
    with pytest.raises(SpecError, match=r"^--name: must match .*got 'nl\\n'$"):
        check_name("nl\n")


@pytest.mark.parametrize("key,shown", [("k" * 100_000, "spec: 'kkkk"), ("a\nb", "spec: budget.'a\\nb': unknown key")])
def test_made_up_keys_are_echoed_on_one_short_line(key, shown):
    d = copy.deepcopy(MINIMAL)
    (d["budget"] if "\n" in key else d)[key] = 1
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    msg = str(exc.value)
    assert msg.startswith(shown) and "unknown key" in msg and "\n" not in msg and len(msg) < 400, msg[:500]


@pytest.mark.parametrize(
    "path,owner",
    [
        ("train.loss", "acpsearch.hashing.losses:LOSS_NAMES"),
        ("data.dataset", "acpsearch.hashing.data:DATASET_NAMES"),
        ("search.ranker", "acpsearch.search.rankers:RANKERS"),
        ("search.rerank", "acpsearch.search.rankers:RANKERS"),
        ("space.criterion", "acpsearch.service.spec:CRITERIA"),
        ("search.sampler", "acpsearch.service.spec:SAMPLERS"),
    ],
)
def test_choice_errors_list_every_choice_of_the_owning_registry(path, owner):
    """A choice field accepts exactly its registry's names, and its error line lists all of them."""
    import importlib

    module, name = owner.split(":")
    names = getattr(importlib.import_module(module), name)
    for value in names:  # accepted (a data set may still need data.path: another field's error)
        try:
            parse_spec(_with(path, value))
        except SpecError as exc:
            assert not str(exc).startswith(f"spec: {path}:"), exc
    with pytest.raises(SpecError) as info:
        parse_spec(_with(path, "no-such-choice"))
    msg = str(info.value)
    assert msg.startswith(f"spec: {path}: input should be ") and "\n" not in msg
    assert all(f"'{n}'" in msg for n in names), msg
