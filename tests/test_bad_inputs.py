"""Bad input, as a table: each row is one-line reason, exit 2, no traceback, stored studies untouched.

Every row goes through the real CLI (`acpsearch.cli.run`) against a real SQLite storage that
already holds one submitted study ("stored", TINY_SPEC). After each bad command the test checks
exit status 2, stderr = exactly one line starting with "error:" that matches the row's pattern
(which names the field, module, file or study), no "Traceback", and that the storage still holds
the same studies with the same user attributes, system attributes and trials.

A row is (id, build, argv, expect):
    build(ctx) writes the bad input under ctx.tmp and returns placeholders for argv / expect
    argv       CLI arguments; "{url}" is the stored storage, "{name}" the stored study, others from build
    expect     regular expression the error line must match (re.search)
"""
from __future__ import annotations

import copy
import gzip
import json
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import optuna
import pytest
import yaml

from acpsearch.cli import run
from conftest import PIPELINE_LAYERS, TINY_SPEC, layers_missing

pytestmark = [
    pytest.mark.skipif(bool(layers_missing(*PIPELINE_LAYERS)), reason=str(layers_missing(*PIPELINE_LAYERS))),
    pytest.mark.usefixtures("one_torch_thread"),
]

STORED = "stored"


# --- builders ------------------------------------------------------------------------------------
def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


DROP = object()  # `replace` value: leave the section out


def spec(changes: dict[str, Any] | None = None, *, replace: dict[str, Any] | None = None, name: str = "bad",
         then: Callable[[Any], dict[str, str]] | None = None) -> Callable[[Any], dict[str, str]]:
    """A spec file: TINY_SPEC with dotted keys set (`changes`) or whole sections replaced (`replace`);
    values may be callables of ctx (paths made by `then`, which runs first)."""

    def build(ctx: Any) -> dict[str, str]:
        extra = then(ctx) if then else {}
        data = copy.deepcopy(TINY_SPEC)
        data["name"] = name
        for key, value in (replace or {}).items():
            if value is DROP:
                data.pop(key, None)
            else:
                data[key] = value(ctx) if callable(value) else value
        for key, value in (changes or {}).items():
            _set(data, key, value(ctx) if callable(value) else value)
        path = ctx.tmp / "spec.yaml"
        path.write_text(yaml.safe_dump(data))
        return {"spec": str(path), **extra}

    return build


def text_file(content: str | bytes, filename: str = "spec.yaml") -> Callable[[Any], dict[str, str]]:
    def build(ctx: Any) -> dict[str, str]:
        path = ctx.tmp / filename
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return {"spec": str(path)}

    return build


def nothing(ctx: Any) -> dict[str, str]:
    return {}


UNTRACEABLE = '''
import torch
from torch import nn


class Gate(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


class Net(nn.Module):
    def __init__(self, bits=16, in_channels=1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.gate = Gate()
        self.hash = nn.Linear(8, bits)

    def forward(self, x):
        return self.hash(self.gate(self.stem(x)).mean((2, 3)))


class Plain(nn.Module):
    def __init__(self, bits=16, in_channels=3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.hash = nn.Linear(8, bits)

    def forward(self, x):
        return self.hash(self.stem(x).mean((2, 3)))


def make(bits=16):
    return Net(bits)


def three_channels(bits=16):
    return Plain(bits, in_channels=3)


def broken(bits=16):
    raise ValueError("no weights for this size")
'''


def user_module(ctx: Any) -> dict[str, str]:
    """A user's model file on sys.path (the factory module `untraceable_net`)."""
    mod_dir = ctx.tmp / "usercode"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "untraceable_net.py").write_text(UNTRACEABLE)
    ctx.monkeypatch.syspath_prepend(str(mod_dir))
    sys.modules.pop("untraceable_net", None)
    return {}


class _Evil:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + str(self.marker),))


def checkpoint(kind: str) -> Callable[[Any], dict[str, str]]:
    """A bad checkpoint file at {ckpt}: corrupt | foreign | evil (plain pickle) | evil-torch (torch.save
    zip) | empty | wrong-input (3x32x32 net) | wrong-bits (32-bit net) | wrong-weights."""

    def build(ctx: Any) -> dict[str, str]:
        import torch

        path = ctx.tmp / f"{kind}.pt"
        if kind == "corrupt":
            path.write_bytes(np.random.default_rng(0).bytes(4096))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "foreign":
            torch.save({"a": 1}, path)
        elif kind == "evil":
            with open(path, "wb") as f:
                pickle.dump(_Evil(ctx.marker), f)
        elif kind == "evil-torch":
            torch.save({"format": "acpsearch", "model": _Evil(ctx.marker)}, path)
        else:
            from acpsearch.checkpoint import save_checkpoint
            from acpsearch.hashing import create_model

            kw = {"bits": 16, "in_channels": 1, "image_size": 8}
            if kind == "wrong-input":
                kw = {"bits": 16, "in_channels": 3, "image_size": 32}
            elif kind == "wrong-bits":
                kw = {"bits": 32, "in_channels": 1, "image_size": 8}
            shape = [1, kw["in_channels"], kw["image_size"], kw["image_size"]]
            save_checkpoint(path, create_model("resnet20", **kw), {"zoo": "resnet20", "kwargs": kw}, shape,
                            meta={"dataset": "digits"})
            if kind == "wrong-weights":
                ckpt = torch.load(path, weights_only=True)
                ckpt["model"]["kwargs"]["bits"] = 24
                torch.save(ckpt, path)
        return {"ckpt": str(path)}

    return build


def data(kind: str) -> Callable[[Any], dict[str, str]]:
    """A bad data location at {data}: empty-dir | missing-npz | garbage-npz | damaged-npz | wrong-npz |
    garbage-idx | damaged-idx."""

    def build(ctx: Any) -> dict[str, str]:
        path = ctx.tmp / kind
        if kind == "empty-dir":
            path.mkdir()
        elif kind == "garbage-npz":
            path = ctx.tmp / "garbage.npz"
            path.write_bytes(np.random.default_rng(1).bytes(2048))
        elif kind == "wrong-npz":
            path = ctx.tmp / "wrong.npz"
            np.savez(path, images=np.zeros((20, 8, 8)), labels=np.zeros(20, dtype=np.int64))
        elif kind == "garbage-idx":
            path.mkdir()
            for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                         "t10k-labels-idx1-ubyte"):
                (path / f"{stem}.gz").write_bytes(b"this is not gzip data at all")
        elif kind == "damaged-idx":  # real gzip files whose deflate stream is broken (zlib.error)
            path.mkdir()
            good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x10" + bytes(range(16)), mtime=0)
            for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                         "t10k-labels-idx1-ubyte"):
                (path / f"{stem}.gz").write_bytes(good[:10] + b"\xff" + good[11:])
        elif kind == "damaged-npz":  # a real .npz with its zip directory overwritten (BadZipFile)
            path = ctx.tmp / "damaged.npz"
            np.savez(path, X=np.zeros((20, 8, 8)), y=np.zeros(20, dtype=np.int64))
            raw = path.read_bytes()
            path.write_bytes(raw[:200] + b"\0" * 100 + raw[-100:])
        elif kind == "missing-npz":
            path = ctx.tmp / "missing.npz"
        return {"data": str(path)}

    return build


def sqlite_garbage(ctx: Any) -> dict[str, str]:
    path = ctx.tmp / "garbage.db"
    path.write_bytes(b"definitely not a SQLite database" * 64)
    return {"bad_url": f"sqlite:///{path}"}


def sqlite_dir(ctx: Any) -> dict[str, str]:
    return {"bad_url": f"sqlite:///{ctx.tmp}"}


# --- storage builders (hardening) ----------------------------------------------------------------
def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _keep_bytes(ctx: Any, path: Path) -> None:
    """After the row: the file is byte-identical to what it was when the build finished."""
    digest = _md5(path)
    ctx.checks.append(lambda: _md5(path) == digest or pytest.fail(f"{path.name} was modified"))


def foreign_sqlite(kind: str) -> Callable[[Any], dict[str, str]]:
    """Another application's SQLite file at {bad_url}: app (a `users` table) | studies (its own
    `studies` table, not Optuna's, next to a `version_info`); it must stay byte-identical."""

    def build(ctx: Any) -> dict[str, str]:
        import sqlite3

        path = ctx.tmp / f"other-{kind}.db"
        con = sqlite3.connect(path)
        if kind == "app":
            con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT)")
        else:
            con.execute("CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT)")
            con.execute("CREATE TABLE version_info (v TEXT)")
        con.execute("INSERT INTO " + ("users" if kind == "app" else "studies") + " VALUES (1, 'x')")
        con.commit()
        con.close()
        _keep_bytes(ctx, path)
        return {"bad_url": f"sqlite:///{path}"}

    return build


def _stored_copy(ctx: Any, filename: str) -> Path:
    """A copy of the stored storage in ctx.tmp (a row that needs a changed storage leaves the
    shared one alone), checked unchanged (snapshot) after the row."""
    import shutil

    src = _sqlite_file(ctx.stored_url)
    path = ctx.tmp / filename
    shutil.copyfile(src, path)
    return path


def _sqlite_file(url: str) -> Path:
    return Path(url[len("sqlite:///"):])


def _keep_studies(ctx: Any, url: str) -> None:
    before = snapshot(url)
    ctx.checks.append(lambda: snapshot(url) == before or pytest.fail(f"studies in {url} changed"))


def readonly_sqlite(how: str) -> Callable[[Any], dict[str, str]]:
    """A read-only copy of the stored storage at {ro_url}. Tests run as root here, and chmod does not
    stop root, so: `uri` opens it through SQLite's read-only URI mode (SQLAlchemy's
    sqlite:///file:PATH?mode=ro&uri=true; every write fails with "attempt to write a readonly
    database", also for root); `immutable` sets chattr +i on the file (root cannot write it either;
    the row is skipped where the file system or capabilities do not allow the flag)."""

    def build(ctx: Any) -> dict[str, str]:
        path = _stored_copy(ctx, f"ro-{how}.db")
        _keep_studies(ctx, f"sqlite:///{path}")
        _keep_bytes(ctx, path)
        if how == "uri":
            return {"ro_url": f"sqlite:///file:{path}?mode=ro&uri=true"}
        res = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"chattr +i not possible here: {res.stderr.strip()}")
        ctx.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=False))
        try:
            with open(path, "r+b"):
                pass
        except OSError:
            pass
        else:
            pytest.skip("chattr +i does not stop this user from writing")
        return {"ro_url": f"sqlite:///{path}"}

    return build


def foreign_companion(ctx: Any) -> dict[str, str]:
    """A copy of the stored storage in which someone else made a study named '<stored>.finetune'
    (as `acpsearch submit --name stored.finetune` did before names were checked: an acpsearch
    search study of its own, with a trial), at {hijack_url}; it must stay as it is."""
    import json as _json

    path = _stored_copy(ctx, "hijack.db")
    url = f"sqlite:///{path}"
    storage = optuna.storages.RDBStorage(url)
    try:
        other = optuna.create_study(storage=storage, study_name=STORED + ".finetune", direction="maximize")
        other.set_user_attr("kind", "acpsearch-search")
        other.set_user_attr("spec", _json.loads(_json.dumps({**TINY_SPEC, "name": STORED + ".finetune"})))
        other.set_user_attr("state", "submitted")
        other.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    finally:
        storage.remove_session()
        storage.engine.dispose()
    _keep_studies(ctx, url)
    return {"hijack_url": url}


def fail_midway(exc: BaseException) -> Callable[[Any], dict[str, str]]:
    """The spec of the stored study under a new name, and a storage that fails after create_study:
    the one function that writes a new study's attributes writes the first one, then raises `exc`.
    A monkeypatch, because a full disk cannot be produced reliably in a test (see also
    test_submit_under_a_file_size_limit_leaves_nothing for a real EFBIG)."""

    def build(ctx: Any) -> dict[str, str]:
        from acpsearch.search import study as st

        def write_then_fail(put: Any, attrs: dict[str, Any], objectives: list[str]) -> None:
            first = next(iter(attrs))
            put(first, attrs[first])  # the study exists and is half-written now
            raise exc

        ctx.monkeypatch.setattr(st, "_write_attrs", write_then_fail)
        return spec(name="midway")(ctx)

    return build


def in_tmp(ctx: Any) -> dict[str, str]:
    """Work in ctx.tmp; afterwards no default storage file may have appeared there."""
    ctx.monkeypatch.chdir(ctx.tmp)
    ctx.monkeypatch.delenv("ACPSEARCH_STORAGE", raising=False)
    ctx.checks.append(lambda: not (ctx.tmp / "acpsearch.db").exists() or pytest.fail("acpsearch.db created"))
    return {}


def in_tmp_spec(ctx: Any) -> dict[str, str]:
    in_tmp(ctx)
    return spec()(ctx)


SUBMIT = ["submit", "{spec}", "--storage", "{url}"]
Q = re.escape  # literal parts of the patterns

# (id, build, argv, expect)
BAD_INPUTS: list[tuple[str, Callable[[Any], dict[str, str]], list[str], str]] = [
    # --- the spec file itself
    ("spec-not-yaml", text_file("model: [unclosed\n  : : {\n"), SUBMIT,
     Q("spec '{spec}': not valid YAML at line 2")),
    ("spec-not-text", text_file(b"\xff\xfe\x00\x81binary"), SUBMIT, Q("spec '{spec}': not a text file")),
    ("spec-not-mapping", text_file("- model\n- data\n"), SUBMIT, Q("spec: must be a mapping of sections, got list")),
    ("spec-missing-file", nothing, ["submit", "/nonexistent/spec.yaml", "--storage", "{url}"],
     Q("spec '/nonexistent/spec.yaml': file not found")),
    ("spec-unknown-section", spec({"bogus": 1}), SUBMIT, Q("spec: bogus: unknown key (allowed: name, model, data,")),
    ("spec-unknown-key", spec({"search.bogus": 1}), SUBMIT, Q("spec: search.bogus: unknown key (allowed: candidates,")),
    ("spec-missing-section", spec(replace={"budget": DROP}), SUBMIT, Q("spec: budget: required")),
    ("spec-null-section", spec(replace={"budget": None}), SUBMIT, Q("spec: budget: ")),
    ("spec-wrong-type-int", spec({"train.epochs": "3"}), SUBMIT,
     Q("spec: train.epochs: input should be a valid integer, got '3'")),
    ("spec-wrong-type-float", spec({"budget.flops": "half"}), SUBMIT, Q("spec: budget.flops: ") + ".*" + Q("got 'half'")),
    ("spec-wrong-type-section", spec(replace={"search": [1, 2]}), SUBMIT, Q("spec: search: must be a mapping")),
    ("spec-bad-choice", spec({"space.criterion": "l7"}), SUBMIT, Q("spec: space.criterion: ") + ".*'l1'.*" + Q("got 'l7'")),
    ("spec-bad-name", spec(name="no spaces allowed"), SUBMIT, Q("spec: name: must match")),
    ("spec-inconsistent", spec({"finetune.top": 99}), SUBMIT, Q("finetune.top (99) must be <= search.candidates (24)")),
    ("spec-two-model-sources", spec({"model.factory": "x.y:z"}), SUBMIT, Q("spec: model: give exactly one of 'zoo' or 'factory'")),
    # --- budget
    ("budget-zero", spec({"budget.flops": 0}), SUBMIT, Q("spec: budget.flops: must be in (0, 1], got 0")),
    ("budget-above-one", spec({"budget.flops": 1.5}), SUBMIT, Q("spec: budget.flops: must be in (0, 1], got 1.5")),
    ("budget-negative-params", spec({"budget.params": -0.2}), SUBMIT, Q("spec: budget.params: must be in (0, 1], got -0.2")),
    ("budget-empty", spec(replace={"budget": {}}), SUBMIT, Q("spec: budget: set at least one of flops, params, latency_ms")),
    ("budget-unreachable-flops", spec({"budget.flops": 0.001}), SUBMIT,
     Q("budget.flops=0.001 is below the smallest reachable FLOPs ratio ") + r"0\.\d+"),
    ("budget-unreachable-params", spec({"budget.params": 0.001}), SUBMIT,
     Q("budget.params=0.001 is below the smallest reachable params ratio ") + r"0\.\d+"),
    ("budget-unreachable-latency", spec({"budget.latency_ms": 1e-6}), SUBMIT,
     Q("budget.latency_ms=1e-06 is below the smallest reachable latency")),
    # --- model
    ("zoo-unknown", spec({"model.zoo": "resnet999"}), SUBMIT, Q("unknown zoo model 'resnet999'; known: resnet20")),
    ("zoo-bad-kwargs", spec({"model.kwargs": {"depth_multiplier": 3}}), SUBMIT,
     Q("model.kwargs: resnet20: ") + ".*" + Q("unexpected keyword argument 'depth_multiplier'")),
    ("factory-malformed", spec(replace={"model": {"factory": "nocolon", "bits": 16}}), SUBMIT,
     Q("spec: model.factory: must be of the form 'package.module:function', got 'nocolon'")),
    ("factory-import-fails", spec(replace={"model": {"factory": "nosuchpkg.mod:make", "bits": 16}}), SUBMIT,
     Q("model.factory: cannot import module 'nosuchpkg.mod' (ModuleNotFoundError")),
    ("factory-no-callable", spec(replace={"model": {"factory": "untraceable_net:nope", "bits": 16}}, then=user_module),
     SUBMIT, Q("model.factory: module 'untraceable_net' has no callable 'nope'")),
    ("factory-raises", spec(replace={"model": {"factory": "untraceable_net:broken", "bits": 16}}, then=user_module),
     SUBMIT, Q("model.factory: 'untraceable_net:broken' raised ValueError: no weights for this size")),
    ("model-untraceable", spec(replace={"model": {"factory": "untraceable_net:make", "bits": 16}}, then=user_module),
     SUBMIT, Q("model Net: torch.fx cannot trace the forward of module 'gate' (Gate, untraceable_net.py:") + r"\d+\)"),
    ("model-wrong-input", spec(replace={"model": {"factory": "untraceable_net:three_channels", "bits": 16}},
                               then=user_module),
     SUBMIT, Q("model Plain: forward on the example input failed (RuntimeError")),
    ("model-hash-layer-missing", spec({"model.hash_layer": "head.nosuch"}), SUBMIT,
     Q("hash_layer 'head.nosuch': no such module is called in forward")),
    # --- data
    ("data-missing-fashion-mnist", spec({"data.dataset": "fashion-mnist", "data.path": lambda c: str(c.tmp / "empty-dir")},
                                        then=data("empty-dir")), SUBMIT,
     Q("dataset fashion-mnist: train-images-idx3-ubyte(.gz) not found in '{data}'; install it with "
       "'apt-get install dataset-fashion-mnist'")),
    ("data-unreadable-fashion-mnist", spec({"data.dataset": "fashion-mnist", "data.path": lambda c: str(c.tmp / "garbage-idx")},
                                           then=data("garbage-idx")), SUBMIT,
     Q("dataset fashion-mnist: cannot read '{data}/train-images-idx3-ubyte.gz' (Not a gzipped file")),
    ("data-damaged-fashion-mnist", spec({"data.dataset": "fashion-mnist", "data.path": lambda c: str(c.tmp / "damaged-idx")},
                                        then=data("damaged-idx")), SUBMIT,
     Q("dataset fashion-mnist: cannot read '{data}/train-images-idx3-ubyte.gz' (Error -3 while decompressing data")),
    ("data-missing-npz", spec({"data.dataset": "npz", "data.path": "/nonexistent/data.npz"}), SUBMIT,
     Q("dataset npz: '/nonexistent/data.npz' not found (an .npz file with arrays X and y: write one with numpy.savez(")),
    ("data-garbage-npz", spec({"data.dataset": "npz", "data.path": lambda c: str(c.tmp / "garbage.npz")},
                              then=data("garbage-npz")), SUBMIT,
     Q("dataset npz: cannot read '{data}' (not an .npz archive")),
    ("data-damaged-npz", spec({"data.dataset": "npz", "data.path": lambda c: str(c.tmp / "damaged.npz")},
                              then=data("damaged-npz")), SUBMIT,
     Q("dataset npz: cannot read '{data}' (")),
    ("data-wrong-arrays-npz", spec({"data.dataset": "npz", "data.path": lambda c: str(c.tmp / "wrong.npz")},
                                   then=data("wrong-npz")), SUBMIT,
     Q("dataset npz: '{data}' must contain arrays 'X' and 'y', has ['images', 'labels']")),
    ("data-no-path", spec({"data.dataset": "cifar10"}), SUBMIT,
     Q("spec: data: dataset 'cifar10' is user-supplied: set data.path")),
    ("data-protocol-too-large", spec({"data.protocol.train_per_class": 1000}), SUBMIT,
     Q("protocol.train_per_class: class 0 has only ") + r"\d+" + Q(" images, fewer than query_per_class + ")),
    # --- checkpoints, in a spec and for `evaluate`
    ("spec-checkpoint-missing", spec({"model.checkpoint": "/nonexistent/base.pt"}), SUBMIT,
     Q("checkpoint '/nonexistent/base.pt': file not found")),
    ("spec-checkpoint-corrupt", spec({"model.checkpoint": lambda c: str(c.tmp / "corrupt.pt")}, then=checkpoint("corrupt")),
     SUBMIT, Q("checkpoint '{ckpt}': corrupt or not a torch checkpoint (")),
    ("spec-checkpoint-foreign", spec({"model.checkpoint": lambda c: str(c.tmp / "foreign.pt")}, then=checkpoint("foreign")),
     SUBMIT, Q("checkpoint '{ckpt}': not an acpsearch checkpoint (foreign format)")),
    ("spec-checkpoint-runs-code", spec({"model.checkpoint": lambda c: str(c.tmp / "evil.pt")}, then=checkpoint("evil")),
     SUBMIT, Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system)")),
    ("spec-checkpoint-runs-code-torch", spec({"model.checkpoint": lambda c: str(c.tmp / "evil-torch.pt")},
                                             then=checkpoint("evil-torch")),
     SUBMIT, Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system)")),
    ("spec-checkpoint-wrong-input", spec({"model.checkpoint": lambda c: str(c.tmp / "wrong-input.pt")},
                                         then=checkpoint("wrong-input")),
     SUBMIT, Q("model.checkpoint: '{ckpt}' expects input (3, 32, 32), the data set 'digits' has (1, 8, 8)")),
    ("spec-checkpoint-wrong-bits", spec({"model.checkpoint": lambda c: str(c.tmp / "wrong-bits.pt")},
                                        then=checkpoint("wrong-bits")),
     SUBMIT, Q("model.checkpoint: the network outputs 32 bits, model.bits is 16")),
    ("spec-checkpoint-wrong-weights", spec({"model.checkpoint": lambda c: str(c.tmp / "wrong-weights.pt")},
                                           then=checkpoint("wrong-weights")),
     SUBMIT, Q("model.checkpoint '{ckpt}': weights do not match the architecture (")),
    ("evaluate-missing", nothing, ["evaluate", "/nonexistent/base.pt"], Q("checkpoint '/nonexistent/base.pt': file not found")),
    ("evaluate-corrupt", checkpoint("corrupt"), ["evaluate", "{ckpt}"], Q("checkpoint '{ckpt}': corrupt or not a torch checkpoint (")),
    ("evaluate-empty", checkpoint("empty"), ["evaluate", "{ckpt}"],
     Q("checkpoint '{ckpt}': corrupt or not a torch checkpoint (EOFError: empty or truncated file)")),
    ("evaluate-foreign", checkpoint("foreign"), ["evaluate", "{ckpt}"],
     Q("checkpoint '{ckpt}': not an acpsearch checkpoint (foreign format)")),
    ("evaluate-runs-code", checkpoint("evil"), ["evaluate", "{ckpt}"],
     Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system); only weights-only checkpoints")),
    ("evaluate-runs-code-torch", checkpoint("evil-torch"), ["evaluate", "{ckpt}"],
     Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system)")),
    ("evaluate-wrong-weights", checkpoint("wrong-weights"), ["evaluate", "{ckpt}"],
     Q("checkpoint '{ckpt}': weights do not match the architecture (")),
    # --- storage
    ("storage-dir-missing", spec(), ["submit", "{spec}", "--storage", "sqlite:////nonexistent/dir/x.db"],
     Q("storage 'sqlite:////nonexistent/dir/x.db': directory '/nonexistent/dir' does not exist")),
    ("storage-pg-unreachable", spec(), ["submit", "{spec}", "--storage", "postgresql://nobody@127.0.0.1:1/x"],
     Q("storage 'postgresql://nobody@127.0.0.1:1/x': cannot open (OperationalError")),
    ("storage-pg-unreachable-status", nothing, ["status", "--storage", "postgresql://nobody@127.0.0.1:1/x"],
     Q("storage 'postgresql://nobody@127.0.0.1:1/x': cannot open")),
    ("storage-unknown-dialect", nothing, ["show", "{name}", "--storage", "nosuchdialect://x/y"],
     Q("storage 'nosuchdialect://x/y': cannot open")),
    ("storage-not-a-database", sqlite_garbage, ["status", "--storage", "{bad_url}"],
     Q("storage '{bad_url}': cannot open (DatabaseError")),
    ("storage-is-a-directory", sqlite_dir, ["status", "--storage", "{bad_url}"], Q("storage '{bad_url}': ") + ".* is a directory"),
    # --- studies
    ("run-ghost", nothing, ["run", "ghost", "--storage", "{url}"], Q("study 'ghost': no such study in this storage")),
    ("show-ghost", nothing, ["show", "ghost", "--storage", "{url}"], Q("study 'ghost': no such study in this storage")),
    ("export-ghost", nothing, ["export", "ghost", "--storage", "{url}", "--out", "{tmp}/x.pt"],
     Q("study 'ghost': no such study in this storage")),
    ("export-no-winner", nothing, ["export", "{name}", "--storage", "{url}", "--out", "{tmp}/x.pt"],
     Q("study '{name}': has no winner yet (state 'submitted')")),
    ("export-no-finalists", nothing, ["export", "{name}", "--storage", "{url}", "--trial", "0", "--out", "{tmp}/x.pt"],
     Q("study '{name}': has no fine-tuned finalists yet")),
    ("submit-name-taken", spec(), ["submit", "{spec}", "--storage", "{url}", "--name", "{name}"],
     Q("name: a study named '{name}' already exists in this storage (use --name)")),
    ("run-spec-name-taken", spec({"budget.flops": 0.25}, name=STORED), ["run", "{spec}", "--storage", "{url}"],
     Q("name: study '{name}' exists with a different spec (use --name for a new study)")),
    ("run-bad-spec", spec({"search.bogus": 1}), ["run", "{spec}", "--storage", "{url}"], Q("spec: search.bogus: unknown key")),
    ("run-bad-address", nothing, ["run", "{name}", "--storage", "{url}", "--address", "127.0.0.1:1"],
     Q("--address: cannot reach a Ray head at 127.0.0.1:1")),
    ("run-zero-workers", nothing, ["run", "{name}", "--storage", "{url}", "--workers", "0"], Q("--workers")),
    # --- hardening: storage ---
    ("name-finetune-suffix-flag", spec(), ["submit", "{spec}", "--storage", "{url}", "--name", "{name}.finetune"],
     Q("--name: '{name}.finetune' ends in '.finetune', which is reserved for the companion study acpsearch makes "
       "for '{name}'")),
    ("name-finetune-suffix-spec", spec(name="other.finetune"), SUBMIT,
     Q("spec: name: 'other.finetune' ends in '.finetune', which is reserved")),
    ("name-collision-hijack-run", foreign_companion, ["run", "{name}", "--storage", "{hijack_url}"],
     Q("study '{name}.finetune': exists but is not the fine-tuning study of '{name}' (kind 'acpsearch-search', "
       "parent None); acpsearch leaves it alone")),
    ("storage-foreign-app-status", foreign_sqlite("app"), ["status", "--storage", "{bad_url}"],
     Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables users); refusing to add tables")),
    ("storage-foreign-app-submit", foreign_sqlite("app"), ["submit", "{spec}", "--storage", "{bad_url}"],
     Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables users); refusing to add tables")),
    ("storage-foreign-app-show", foreign_sqlite("app"), ["show", "{name}", "--storage", "{bad_url}"],
     Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables users)")),
    ("storage-foreign-studies-table", foreign_sqlite("studies"), ["status", "--storage", "{bad_url}"],
     Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables studies, version_info); refusing")),
    ("storage-readonly-submit-uri", spec(name="ro1", then=readonly_sqlite("uri")),
     ["submit", "{spec}", "--storage", "{ro_url}"],
     Q("storage '{ro_url}': read-only (attempt to write a readonly database)")),
    ("storage-readonly-submit-immutable", spec(name="ro2", then=readonly_sqlite("immutable")),
     ["submit", "{spec}", "--storage", "{ro_url}"],
     Q("storage '{ro_url}': read-only (attempt to write a readonly database)")),
    ("storage-readonly-run", readonly_sqlite("uri"), ["run", "{name}", "--storage", "{ro_url}"],
     Q("storage '{ro_url}': read-only (attempt to write a readonly database)")),
    ("submit-fails-midway-storage", fail_midway(optuna.exceptions.StorageInternalError("disk full (simulated)")),
     SUBMIT, Q("storage '{url}': cannot write (StorageInternalError: disk full (simulated))")),
    ("submit-fails-midway-oserror", fail_midway(OSError(27, "File too large")),
     SUBMIT, Q("storage '{url}': cannot write (OSError: [Errno 27] File too large)")),
    ("storage-url-empty-status", in_tmp, ["status", "--storage", ""],
     Q("--storage: empty; leave it out for the default")),
    ("storage-url-empty-submit", in_tmp_spec, ["submit", "{spec}", "--storage", ""],
     Q("--storage: empty; leave it out for the default")),
    ("storage-url-memory-submit", spec(), ["submit", "{spec}", "--storage", "sqlite://"],
     Q("storage 'sqlite://': in-memory database, a study stored there vanishes when this command exits")),
    ("storage-url-memory-run", spec(), ["run", "{spec}", "--storage", "sqlite:///:memory:"],
     Q("storage 'sqlite:///:memory:': in-memory database")),
    ("storage-url-memory-worker", nothing, ["worker", "--storage", "sqlite://"],
     Q("storage 'sqlite://': in-memory database")),
    ("storage-url-password", nothing, ["status", "--storage", "postgresql://admin:S3cretPW@127.0.0.1:1/db"],
     r"^(?!.*S3cretPW)" + Q("error: storage 'postgresql://admin:***@127.0.0.1:1/db': cannot open (OperationalError")),
    ("storage-url-password-submit", spec(),
     ["submit", "{spec}", "--storage", "postgresql://admin:S3cretPW@127.0.0.1:1/db"],
     r"^(?!.*S3cretPW)" + Q("error: storage 'postgresql://admin:***@127.0.0.1:1/db': cannot open")),
]


# --- the stored study ----------------------------------------------------------------------------
def snapshot(url: str) -> dict[str, Any]:
    """Everything a bad command could have changed: the studies, their attributes and trials."""
    storage = optuna.storages.RDBStorage(url)  # a fresh connection, not the CLI's cached one
    try:
        out = {}
        for s in storage.get_all_studies():
            sid = s._study_id
            out[s.study_name] = {
                "user_attrs": storage.get_study_user_attrs(sid),
                "system_attrs": storage.get_study_system_attrs(sid),
                "directions": storage.get_study_directions(sid),
                "trials": [(t.number, t.state, t.params, t.values, t.user_attrs, t.system_attrs, t.intermediate_values)
                           for t in storage.get_all_trials(sid)],
            }
        return out
    finally:
        storage.remove_session()
        storage.engine.dispose()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A SQLite storage holding one submitted (not run) study, made through the CLI."""
    root = tmp_path_factory.mktemp("badinput")
    url = f"sqlite:///{root / 'studies.db'}"
    good = root / "good.yaml"
    good.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": STORED}))
    assert run(["submit", str(good), "--storage", url]) == 0
    before = snapshot(url)
    assert list(before) == [STORED] and before[STORED]["user_attrs"]["state"] == "submitted"
    return SimpleNamespace(url=url, root=root, before=before)


@pytest.fixture
def user_warnings(monkeypatch: pytest.MonkeyPatch):
    """Warnings as a user's process shows them (Python's default filters, printed to stderr), so
    a warning the CLI lets through counts as an extra stderr line."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category in (("ignore", DeprecationWarning), ("ignore", PendingDeprecationWarning),
                                 ("ignore", ImportWarning), ("ignore", ResourceWarning)):
            warnings.simplefilter(action, category)
        monkeypatch.setattr(warnings, "showwarning", show)
        yield


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _pattern(expect: str, values: dict[str, str]) -> str:
    """The row's regex with its placeholders (escaped by Q or not) replaced by the literal values."""
    for key, value in values.items():
        for placeholder in (re.escape("{" + key + "}"), "{" + key + "}"):
            expect = expect.replace(placeholder, re.escape(value))
    return expect


@pytest.mark.parametrize("case_id,build,argv,expect", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_storage_untouched(case_id, build, argv, expect, stored, tmp_path,
                                                            monkeypatch, capsys, user_warnings):
    # checks: callables run after the row's assertions (a file the row must leave alone);
    # cleanups: run in any case (e.g. chattr -i)
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch, marker=tmp_path / "PWNED", stored_url=stored.url,
                          checks=[], cleanups=[])
    try:
        values = {"url": stored.url, "name": STORED, "tmp": str(tmp_path), **build(ctx)}
        argv = [_fill(a, values) for a in argv]
        pattern = _pattern(expect, values)
        capsys.readouterr()

        code = run(argv)

        err = capsys.readouterr().err
        assert code == 2, f"exit {code} for {argv}: {err}"
        assert "Traceback" not in err, err
        lines = err.splitlines()
        assert len(lines) == 1 and err.endswith("\n"), f"not one line: {err!r}"
        assert lines[0].startswith("error: "), lines[0]
        assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
        assert not ctx.marker.exists(), "a checkpoint ran code while being read"
        assert snapshot(stored.url) == stored.before, "the stored study changed"
        for check in ctx.checks:
            check()
    finally:
        for cleanup in ctx.cleanups:
            cleanup()


def test_every_issue_case_is_in_the_table():
    """The issue's list, each with at least one row (ids are prefixes here)."""
    ids = [row[0] for row in BAD_INPUTS]
    assert len(set(ids)) == len(ids)
    for needed in ("spec-not-yaml", "spec-unknown-key", "spec-wrong-type", "budget-zero", "budget-above-one",
                   "budget-unreachable", "zoo-unknown", "factory-import-fails", "model-untraceable",
                   "data-missing", "data-unreadable", "spec-checkpoint-corrupt", "spec-checkpoint-foreign",
                   "spec-checkpoint-runs-code", "evaluate-corrupt", "evaluate-foreign", "evaluate-runs-code",
                   "storage-dir-missing", "storage-pg-unreachable", "run-ghost", "show-ghost", "export-ghost",
                   "export-no-winner",
                   # hardening: storage
                   "name-finetune-suffix", "name-collision-hijack", "storage-foreign-app-status",
                   "storage-foreign-app-submit", "storage-foreign-studies-table", "storage-readonly-submit",
                   "storage-readonly-run", "submit-fails-midway", "storage-url-empty", "storage-url-memory",
                   "storage-url-password"):
        assert any(i.startswith(needed) for i in ids), needed


@pytest.mark.parametrize("case_id", ["spec-not-yaml", "model-untraceable", "evaluate-runs-code"])
def test_bad_input_in_a_real_process(case_id, tmp_path, stored):
    """The same rows through the `acpsearch` executable: nothing else reaches stderr (warnings,
    logging), exit status 2."""
    _, build, argv, expect = next(row for row in BAD_INPUTS if row[0] == case_id)
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=pytest.MonkeyPatch(), marker=tmp_path / "PWNED",
                          stored_url=stored.url, checks=[], cleanups=[])
    try:
        values = {"url": stored.url, "name": STORED, "tmp": str(tmp_path), **build(ctx)}
    finally:
        ctx.monkeypatch.undo()  # the subprocess gets the user's module dir through PYTHONPATH instead
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "usercode"), "ACPSEARCH_TORCH_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(Path(sys.executable).parent / "acpsearch"), *[_fill(a, values) for a in argv]],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert re.search(_pattern(expect, values), lines[0]), lines[0]
    assert res.stdout == "" and not ctx.marker.exists()
    assert snapshot(stored.url) == stored.before


# --- dashboard: local by default -----------------------------------------------------------------
def test_dashboard_bind_defaults_to_localhost_and_warns_otherwise():
    from acpsearch.commands.service import dashboard_bind

    assert dashboard_bind(None, None) == ("127.0.0.1", 8080, None)
    assert dashboard_bind(None, None, {"host": None, "port": None}) == ("127.0.0.1", 8080, None)
    for local in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert dashboard_bind(local, 9000)[2] is None, local
    host, port, note = dashboard_bind("0.0.0.0", 9000)
    assert (host, port) == ("0.0.0.0", 9000)
    assert note.startswith("note: serving on 0.0.0.0, not 127.0.0.1") and "no authentication" in note
    assert "0.0.0.0:9000" in note and "\n" not in note
    # the config file's host counts as well, and the flag wins over it
    assert dashboard_bind(None, None, {"host": "10.1.2.3", "port": 8888})[:2] == ("10.1.2.3", 8888)
    assert dashboard_bind(None, None, {"host": "10.1.2.3"})[2] is not None
    assert dashboard_bind("127.0.0.1", None, {"host": "10.1.2.3"}) == ("127.0.0.1", 8080, None)


@pytest.mark.parametrize("flags,host,noted", [([], "127.0.0.1", False), (["--host", "0.0.0.0"], "0.0.0.0", True),
                                              (["--host", "localhost", "--port", "8123"], "localhost", False)])
def test_dashboard_command_binds_what_it_says(flags, host, noted, stored, tmp_path, monkeypatch, capsys):
    """`acpsearch dashboard` up to the server call (optuna_dashboard.run_server replaced): it binds
    127.0.0.1 unless told otherwise, and says so when the address is not a loopback one."""
    import optuna_dashboard

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: calls.append(kw))
    monkeypatch.chdir(tmp_path)  # no dashboards/dashboard.yaml here: the packaged one (127.0.0.1) applies
    capsys.readouterr()
    assert run(["dashboard", "--storage", stored.url, "--artifacts", str(tmp_path / "art"), *flags]) == 0
    err = capsys.readouterr().err
    assert len(calls) == 1 and calls[0]["host"] == host
    assert calls[0]["port"] == (8123 if "--port" in flags else 8080)
    lines = err.splitlines()
    assert len(lines) == 1 + noted, err  # the note and the address, one unwrapped line each
    if noted:
        assert lines[0].startswith(f"note: serving on {host}, not 127.0.0.1:") and "no authentication" in lines[0]
    assert lines[-1].startswith(f"optuna-dashboard: http://{host}:{calls[0]['port']}/  storage={stored.url}")
    assert snapshot(stored.url) == stored.before


# --- not bad input -------------------------------------------------------------------------------
def test_internal_error_is_not_masked(stored, tmp_path, monkeypatch):
    """An unexpected exception is an internal error (exit 1 from the console script), not exit 2: the
    CLI re-raises it as itself; the exception handling must not replace it with one of its own."""
    import acpsearch.spec

    def boom(path):  # noqa: ANN001
        raise RuntimeError("boom inside load_spec")

    monkeypatch.setattr(acpsearch.spec, "load_spec", boom)
    with pytest.raises(RuntimeError, match="boom inside load_spec"):
        run(["submit", str(tmp_path / "any.yaml"), "--storage", stored.url])
    assert snapshot(stored.url) == stored.before


# --- hardening: storage (checks a table row cannot express) --------------------------------------
def _copy_of_stored(stored: SimpleNamespace, tmp_path: Path, filename: str = "copy.db") -> tuple[Path, str]:
    import shutil

    path = tmp_path / filename
    shutil.copyfile(_sqlite_file(stored.url), path)
    return path, f"sqlite:///{path}"


@pytest.mark.parametrize("limit", [8192, 28672])
def test_submit_under_a_file_size_limit_leaves_nothing(limit, stored, tmp_path):
    """A real failing write (no monkeypatch): `acpsearch submit` in a process whose file-size limit
    is below the storage file's size (RLIMIT_FSIZE with SIGXFSZ ignored: every write above the limit
    fails with EFBIG, also for root, as on a full disk). At 28672 bytes the old submit created the
    study and then failed on its attributes, leaving a study without attributes behind; now the
    study and its attributes are one transaction: exit 2, one line naming the storage, and the
    storage holds exactly what it held before."""
    import resource
    import signal

    path, url = _copy_of_stored(stored, tmp_path)
    assert path.stat().st_size > limit
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "fs2"}))
    before = snapshot(url)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "ACPSEARCH_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([str(Path(sys.executable).parent / "acpsearch"), "submit", str(good), "--storage", url],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, preexec_fn=limited)
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: storage {url!r}: cannot write ("), res.stderr[-3000:]
    assert res.stdout == ""
    assert snapshot(url) == before


def test_submit_interrupted_midway_leaves_nothing(stored, monkeypatch, tmp_path, capsys):
    """Ctrl-C while the new study's attributes are written (KeyboardInterrupt raised by the one
    function that writes them, after the first attribute: a monkeypatch, since a signal cannot be
    timed into that window): the KeyboardInterrupt goes on, no study name is printed, and no study
    of that name is left. (The exit status of an interrupted command is cli.run's business.)"""
    from acpsearch.search import study as st
    from acpsearch.search.storage import open_storage

    def interrupted(put: Any, attrs: dict[str, Any], objectives: list[str]) -> None:
        put(next(iter(attrs)), "x")
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "_write_attrs", interrupted)
    from acpsearch.spec import spec_from_json

    with pytest.raises(KeyboardInterrupt):
        st.submit(open_storage(stored.url), spec_from_json({**copy.deepcopy(TINY_SPEC), "name": "ctrlc"}))
    assert snapshot(stored.url) == stored.before
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "ctrlc"}))
    capsys.readouterr()
    assert run(["submit", str(good), "--storage", stored.url]) != 2  # an interrupt is not reported as bad input
    assert "ctrlc" not in capsys.readouterr().out
    assert snapshot(stored.url) == stored.before


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_half_made_studies_are_removed(kind, tmp_path, monkeypatch):
    """All or nothing on both kinds of storage (SQL: one transaction; journal: the half-made study
    is deleted again), for a submitted study and for the companion NAME.finetune."""
    from acpsearch.errors import SpecError
    from acpsearch.search import study as st
    from acpsearch.search.storage import open_storage
    from acpsearch.spec import spec_from_json

    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 's.log'}"
    storage = open_storage(url)
    spec_obj = spec_from_json({**copy.deepcopy(TINY_SPEC), "name": "p"})
    real = st._write_attrs

    def fail(put: Any, attrs: dict[str, Any], objectives: list[str]) -> None:
        put(next(iter(attrs)), "half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "_write_attrs", fail)
    with pytest.raises(OSError):
        st.submit(storage, spec_obj, "p")
    assert [s.study_name for s in storage.get_all_studies()] == []
    monkeypatch.setattr(st, "_write_attrs", real)
    assert st.submit(storage, spec_obj, "p") == "p"  # the name is still free
    parent = st.load_search_study(storage, "p")
    assert parent.user_attrs["kind"] == st.KIND and parent.user_attrs["state"] == "submitted"
    assert parent.metric_names == [st.CANDIDATE_OBJECTIVE]
    monkeypatch.setattr(st, "_write_attrs", fail)
    with pytest.raises(OSError):
        st.finetune_study(storage, parent)
    assert [s.study_name for s in storage.get_all_studies()] == ["p"]
    monkeypatch.setattr(st, "_write_attrs", real)
    ft = st.finetune_study(storage, parent)
    assert ft.user_attrs == {"kind": st.FINETUNE_KIND, "parent": "p"} and ft.metric_names == [st.FINETUNE_OBJECTIVE]
    assert st.finetune_study(storage, parent)._study_id == ft._study_id  # its own companion is reused
    with pytest.raises(SpecError, match=re.escape("'p.finetune' ends in '.finetune'")):
        st.submit(storage, spec_obj, "p.finetune")  # a user study can never take the companion's name


def test_finetune_study_never_adopts_a_foreign_study(tmp_path):
    """A study named NAME.finetune that is not acpsearch's companion of NAME (no attributes, another
    kind, or the companion of another study) is refused with one line and left as it was."""
    from acpsearch.errors import StorageError as _StorageError
    from acpsearch.search import study as st
    from acpsearch.search.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    parents = {}
    for parent, attrs in (("a", {}), ("b", {"kind": st.KIND}), ("c", {"kind": st.FINETUNE_KIND, "parent": "other"})):
        parents[parent] = optuna.create_study(storage=storage, study_name=parent)
        other = optuna.create_study(storage=storage, study_name=parent + ".finetune", direction="minimize")
        for key, value in attrs.items():
            other.set_user_attr(key, value)
        other.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    before = {s.study_name: (s.user_attrs, s.directions) for s in storage.get_all_studies()}
    for parent, study in parents.items():
        with pytest.raises(_StorageError, match=re.escape(f"study '{parent}.finetune': exists but is not the "
                                                          f"fine-tuning study of '{parent}'")):
            st.finetune_study(storage, study)
        with pytest.raises(_StorageError):
            st.check_companion(storage, parent)
    assert {s.study_name: (s.user_attrs, s.directions) for s in storage.get_all_studies()} == before
    assert all(len(storage.get_all_trials(s._study_id)) == 1 for s in storage.get_all_studies() if "." in s.study_name)


@pytest.mark.parametrize("how", ["uri", "immutable"])
def test_readonly_storage_can_still_be_read(how, stored, tmp_path, monkeypatch, capsys):
    """`status` and `show` work on a read-only storage (only writes are refused)."""
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch, stored_url=stored.url, checks=[], cleanups=[])
    try:
        ro_url = readonly_sqlite(how)(ctx)["ro_url"]
        capsys.readouterr()
        assert run(["status", "--storage", ro_url, "--json"]) == 0
        assert [r["name"] for r in json.loads(capsys.readouterr().out)["studies"]] == [STORED]
        assert run(["show", STORED, "--storage", ro_url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["summary"]["state"] == "submitted"
        for check in ctx.checks:
            check()
    finally:
        for cleanup in ctx.cleanups:
            cleanup()


def test_new_empty_and_shared_databases_still_open(tmp_path, capsys):
    """What the foreign-database check must let through: a missing file in an existing directory
    and an empty file (both become Optuna databases), and an Optuna database that also holds
    another application's table (that table is left alone)."""
    import sqlite3

    missing, empty, shared = tmp_path / "new.db", tmp_path / "empty.db", tmp_path / "shared.db"
    empty.write_bytes(b"")
    optuna.storages.RDBStorage(f"sqlite:///{shared}").engine.dispose()
    con = sqlite3.connect(shared)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    for path in (missing, empty, shared):
        assert run(["status", "--storage", f"sqlite:///{path}", "--json"]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["studies"] == []
        con = sqlite3.connect(path)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        con.close()
        assert {"studies", "version_info"} <= tables and (("users" in tables) == (path == shared))


def test_storage_password_is_never_printed(stored, tmp_path, monkeypatch, capsys):
    """A server URL's password is masked in the `status` title and JSON, `show --json`, `submit
    --json` and the dashboard line (the storage is the stored SQLite one behind a PostgreSQL URL)."""
    import optuna_dashboard

    from acpsearch.search import storage as storage_mod
    from acpsearch.search.storage import redact

    path, copy_url = _copy_of_stored(stored, tmp_path)
    real_open = storage_mod.open_storage
    monkeypatch.setattr(storage_mod, "open_storage", lambda url=None: real_open(copy_url))
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: None)
    url = "postgresql://admin:S3cret/PW@db.example:5432/acp"
    assert redact(url) == "postgresql://admin:***@db.example:5432/acp"
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "pw"}))
    capsys.readouterr()
    for argv in (["status"], ["status", "--json"], ["show", STORED, "--json"], ["submit", str(good), "--json"],
                 ["dashboard", "--artifacts", str(tmp_path / "art")]):
        assert run([*argv, "--storage", url]) == 0, argv
        res = capsys.readouterr()
        assert "S3cret" not in res.out + res.err, argv
        assert "postgresql://admin:***@db.example:5432/acp" in res.out + res.err, argv


def test_redact():
    from acpsearch.search.storage import redact

    assert redact("postgresql://admin:S3cretPW@127.0.0.1:1/db") == "postgresql://admin:***@127.0.0.1:1/db"
    assert redact("mysql+pymysql://u:p%40ss@h/db?charset=utf8") == "mysql+pymysql://u:***@h/db?charset=utf8"
    assert redact("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    assert redact("postgresql://u:p@ss/w@h/db") == "postgresql://u:***@h/db"  # unescaped '@' and '/' in it
    for unchanged in ("postgresql://nobody@127.0.0.1:1/x", "sqlite:///a/b.db", "journal:///x/y.log", "sqlite://", ""):
        assert redact(unchanged) == unchanged


def test_sqlite_url_forms():
    """In-memory URLs are recognised (refused by the CLI), and the read-only URI form names its file
    (for the directory checks, the foreign-database check and the artifact directory)."""
    from acpsearch.search.storage import _sqlite_path, is_memory

    for memory in ("sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://",
                   "sqlite:///file::memory:?cache=shared&uri=true", "sqlite:///file:x?mode=memory&uri=true"):
        assert is_memory(memory) and _sqlite_path(memory) is None, memory
    assert not is_memory("sqlite:///x.db") and not is_memory("postgresql://h/db")
    assert _sqlite_path("sqlite:///file:/abs/s.db?mode=ro&uri=true") == Path("/abs/s.db")
    assert _sqlite_path("sqlite:///file:rel/s.db?mode=ro&uri=true") == Path("rel/s.db")
    assert _sqlite_path("sqlite:////abs/s.db") == Path("/abs/s.db")
    assert _sqlite_path("sqlite:///rel.db?timeout=5") == Path("rel.db")
    assert _sqlite_path("sqlite:///file:odd-name.db") == Path("file:odd-name.db")  # no uri=true: a plain file name


def test_run_study_refuses_a_foreign_companion_before_writing(stored, tmp_path, monkeypatch):
    """run_study (what `run` and `worker` call) refuses a foreign NAME.finetune before it takes the
    lease or starts Ray, as a StudyBlocked, which is a StudyBusy: a worker skips such a study
    instead of retrying it forever (nothing was written, so it stays claimable)."""
    from acpsearch.search import cluster, pipeline

    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch, stored_url=stored.url, checks=[], cleanups=[])
    url = foreign_companion(ctx)["hijack_url"]
    with pytest.raises(pipeline.StudyBlocked, match=re.escape(f"study '{STORED}.finetune': exists but is not")) as exc:
        pipeline.run_study(url, STORED)
    assert isinstance(exc.value, pipeline.StudyBusy)
    for check in ctx.checks:
        check()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_racing_submits_create_one_study(kind, tmp_path):
    """Four submits of one name at once (threads; the one-transaction submit must keep the race
    safe): exactly one wins, the others are the one-line "already exists", and the winner's study
    has all its attributes."""
    import threading

    from acpsearch.search import study as st
    from acpsearch.search.storage import open_storage
    from acpsearch.spec import spec_from_json

    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:///{tmp_path / 's.log'}"
    storage = open_storage(url)
    spec_obj = spec_from_json({**copy.deepcopy(TINY_SPEC), "name": "race"})
    results: list[str] = []
    start = threading.Barrier(4)

    def submit_one() -> None:
        start.wait()
        try:
            results.append(st.submit(storage, spec_obj))
        except Exception as exc:  # noqa: BLE001 - collected and checked below
            results.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=submit_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = "SpecError: name: a study named 'race' already exists in this storage (use --name)"
    assert sorted(results) == [taken] * 3 + ["race"]
    assert [s.study_name for s in storage.get_all_studies()] == ["race"]
    assert st.load_search_study(storage, "race").user_attrs["state"] == "submitted"
