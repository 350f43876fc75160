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
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from conftest import TINY_SPEC
from datagen import write_bad_list

from acpsearch.cli import run
from acpsearch.trust import ALLOW_ENV

pytestmark = [
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


def spec(
    changes: dict[str, Any] | None = None,
    *,
    replace: dict[str, Any] | None = None,
    name: str = "bad",
    then: Callable[[Any], dict[str, str]] | None = None,
) -> Callable[[Any], dict[str, str]]:
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
            save_checkpoint(
                path,
                create_model("resnet20", **kw),
                {"zoo": "resnet20", "kwargs": kw},
                shape,
                meta={"dataset": "digits"},
            )
            if kind == "wrong-weights":
                ckpt = torch.load(path, weights_only=True)
                ckpt["model"]["kwargs"]["bits"] = 24
                torch.save(ckpt, path)
        return {"ckpt": str(path)}

    return build


def state_dict_file(bits: int) -> Callable[[Any], dict[str, str]]:
    """A plain `torch.save(model.state_dict())` file of a ResNet-20 hash net for digits at {ckpt}."""

    def build(ctx: Any) -> dict[str, str]:
        import torch

        from acpsearch.hashing import create_model

        path = ctx.tmp / "state_dict.pt"
        torch.save(create_model("resnet20", bits=bits, in_channels=1, image_size=8).state_dict(), path)
        return {"ckpt": str(path)}

    return build


def crafted(kind: str) -> Callable[[Any], dict[str, str]]:
    """A checkpoint that loads with torch.load(weights_only=True) but whose entries are hostile or
    malformed, at {ckpt}: factory-system | factory-subprocess (its factory would touch ctx.marker) |
    model-str | input-shape-str | input-shape-huge | state-dict-list | meta-protocol | bits-huge |
    complex-weights ({key}: the complex tensor) | missing-kept | groups-str (pruned checkpoints)."""

    def build(ctx: Any) -> dict[str, str]:
        import torch

        from acpsearch.checkpoint import save_checkpoint
        from acpsearch.hashing import create_model

        path = ctx.tmp / f"{kind}.pt"
        kw = {"bits": 16, "in_channels": 1, "image_size": 8}
        model = create_model("resnet20", **kw)
        save_checkpoint(path, model, {"zoo": "resnet20", "kwargs": kw}, [1, 1, 8, 8], meta={"dataset": "digits"})
        if kind in ("missing-kept", "groups-str"):
            from acpsearch.checkpoint import save_pruned
            from acpsearch.graph import ChannelGraph
            from acpsearch.pruning import PruningStrategy, prune

            example = torch.zeros(1, 1, 8, 8)
            s = PruningStrategy.uniform(ChannelGraph.from_model(model, example), 0.5)
            save_pruned(
                path,
                prune(model, s, example),
                s,
                {"zoo": "resnet20", "kwargs": kw},
                [1, 1, 8, 8],
                meta={"dataset": "digits"},
            )
        c = torch.load(path, weights_only=True)
        extra: dict[str, str] = {}
        if kind == "factory-system":
            c["model"] = {"factory": "os:system", "kwargs": {"command": f"touch {ctx.marker}"}}
        elif kind == "factory-subprocess":
            c["model"] = {"factory": "subprocess:getoutput", "kwargs": {"cmd": f"touch {ctx.marker}"}}
        elif kind == "model-str":
            c["model"] = "resnet20"
        elif kind == "input-shape-str":
            c["input_shape"] = ["a", "b"]
        elif kind == "input-shape-huge":
            c["input_shape"] = [1, 1, 60000, 60000]
        elif kind == "state-dict-list":
            c["state_dict"] = [1, 2, 3]
        elif kind == "meta-protocol":
            c["meta"]["protocol"] = {"query_per_class": "abc"}
        elif kind == "bits-huge":
            c["model"]["kwargs"]["bits"] = 10**9
        elif kind == "complex-weights":
            key = next(k for k, v in c["state_dict"].items() if v.ndim == 4)
            c["state_dict"][key] = c["state_dict"][key].to(torch.complex64)
            extra["key"] = key
        elif kind == "missing-kept":
            group = next(iter(c["pruning"]["groups"]))
            del c["pruning"]["groups"][group]["kept"]
            extra["group"] = group
        elif kind == "groups-str":
            c["pruning"]["groups"] = "x"
        else:
            raise ValueError(kind)
        torch.save(c, path)
        return {"ckpt": str(path), **extra}

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
            for stem in (
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ):
                (path / f"{stem}.gz").write_bytes(b"this is not gzip data at all")
        elif kind == "damaged-idx":  # real gzip files whose deflate stream is broken (zlib.error)
            path.mkdir()
            good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x10" + bytes(range(16)), mtime=0)
            for stem in (
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ):
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


def _png_claiming(path: Path, width: int, height: int) -> None:
    """An 8x8 PNG whose IHDR says width x height (the CRC fixed): only the header is big."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0))


def bad_data(kind: str) -> Callable[[Any], dict[str, str]]:
    """A malformed data set at {data} (a folder, an .npz file, cifar10 batches or fashion-mnist IDX
    files); folder data sets have class folders a/ and b/ and the bad file is a/x.npy or a/x.png."""

    def build(ctx: Any) -> dict[str, str]:
        path = ctx.tmp / kind
        if kind.startswith("folder-"):
            (path / "a").mkdir(parents=True)
            (path / "b").mkdir()
            for cls in ("a", "b"):
                for i in range(3):
                    np.save(path / cls / f"{i}.npy", np.full((8, 8), i, dtype=np.uint8))
            bad = path / "a" / "x.npy"
            if kind == "folder-garbage-npy":
                bad.write_bytes(np.random.default_rng(2).bytes(512))
            elif kind == "folder-object-npy":
                np.save(bad, np.array([_Evil(ctx.marker), 1], dtype=object), allow_pickle=True)
            elif kind == "folder-1d-npy":
                np.save(bad, np.zeros(64, dtype=np.uint8))
            elif kind == "folder-nan-npy":
                img = np.zeros((8, 8), dtype=np.float32)
                img[2, 5] = np.nan
                np.save(bad, img)
            elif kind == "folder-bomb-png":
                _png_claiming(path / "a" / "x.png", 20000, 20000)
            elif kind == "folder-bombwarn-png":  # Pillow only warns (between 1x and 2x its MAX_IMAGE_PIXELS)
                _png_claiming(path / "a" / "x.png", 10000, 10000)
            elif kind == "folder-huge-png":  # below Pillow's own limit, above MAX_SIDE
                _png_claiming(path / "a" / "x.png", 5000, 5000)
            elif kind == "folder-one-class":
                for f in (path / "b").iterdir():
                    f.unlink()
        elif kind.startswith("npz-"):
            path = ctx.tmp / f"{kind}.npz"
            x = np.random.default_rng(3).random((200, 8, 8)).astype(np.float32)
            y = np.arange(200) % 2
            if kind == "npz-no-arrays":
                np.savez(path)
            elif kind == "npz-zero-images":
                np.savez(path, X=np.zeros((0, 8, 8)), y=np.zeros(0, dtype=np.int64))
            elif kind == "npz-nan":
                x[12, 1, 1] = np.nan
                np.savez(path, X=x, y=y)
            elif kind == "npz-huge-class-id":
                y[5] = 2**40
                np.savez(path, X=x, y=y)
            elif kind == "npz-one-class":
                np.savez(path, X=x, y=np.zeros(200, dtype=np.int64))
            elif kind == "npz-negative-label":
                y[7] = -3
                np.savez(path, X=x, y=y)
            elif kind == "npz-complex":
                np.savez(path, X=x.astype(np.complex64), y=y)
        elif kind.startswith("cifar-"):
            path.mkdir()
            batch: dict[bytes, Any] = {b"data": np.zeros((10, 3072), dtype=np.uint8), b"labels": list(range(10))}
            if kind == "cifar-labels-int":
                batch[b"labels"] = 5
            elif kind == "cifar-data-shape":
                batch[b"data"] = np.zeros((10, 3071), dtype=np.uint8)
            for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
                with open(path / name, "wb") as f:
                    pickle.dump(batch, f)
        elif kind.startswith("fmnist-"):
            path.mkdir()
            images = np.zeros(100) if kind == "fmnist-1d" else np.zeros((100, 4, 4))
            labels = np.zeros((100, 1)) if kind == "fmnist-2d-labels" else np.arange(100) % 10
            for part in ("train", "t10k"):
                _idx(path / f"{part}-images-idx3-ubyte.gz", images)
                _idx(path / f"{part}-labels-idx1-ubyte.gz", labels)
        return {"data": str(path)}

    return build


def data_spec(dataset: str, kind: str) -> Callable[[Any], dict[str, str]]:
    """A spec whose data section points at bad_data(kind)."""
    made: dict[str, str] = {}

    def then(ctx: Any) -> dict[str, str]:
        made.update(bad_data(kind)(ctx))
        return made

    return spec({"data.dataset": dataset, "data.path": lambda c: made["data"]}, then=then)


def both(*builds: Callable[[Any], dict[str, str]]) -> Callable[[Any], dict[str, str]]:
    def build(ctx: Any) -> dict[str, str]:
        values: dict[str, str] = {}
        for b in builds:
            values.update(b(ctx))
        return values

    return build


def sqlite_garbage(ctx: Any) -> dict[str, str]:
    path = ctx.tmp / "garbage.db"
    path.write_bytes(b"definitely not a SQLite database" * 64)
    return {"bad_url": f"sqlite:///{path}"}


def sqlite_dir(ctx: Any) -> dict[str, str]:
    return {"bad_url": f"sqlite:///{ctx.tmp}"}


# --- builders: processes (listeners that are not Ray, busy ports, dashboard configs, caches)
def bare_listener(mode: str = "silent") -> Callable[[Any], dict[str, str]]:
    """A TCP listener on a free port at {port} that is not a Ray head: silent (accepts and never
    answers) | closes (accepts and closes at once). Stopped when the test ends."""

    def build(ctx: Any) -> dict[str, str]:
        import socket
        import threading

        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        conns: list[socket.socket] = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                if mode == "closes":
                    conn.close()
                else:
                    conns.append(conn)

        threading.Thread(target=serve, daemon=True).start()

        def stop() -> None:
            try:
                srv.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            except OSError:
                pass
            srv.close()
            for conn in conns:
                conn.close()

        ctx.finalize(stop)
        return {"port": str(srv.getsockname()[1])}

    return build


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


def no_dashboard_server(ctx: Any) -> dict[str, str]:
    """optuna_dashboard.run_server replaced: a bad dashboard input must fail before the server starts."""
    import optuna_dashboard

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the dashboard server was started")

    ctx.monkeypatch.setattr(optuna_dashboard, "run_server", started)
    return {}


def busy_port(ctx: Any) -> dict[str, str]:
    """A port at {port} that another socket listens on (127.0.0.1)."""
    import socket

    no_dashboard_server(ctx)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    ctx.finalize(sock.close)
    return {"port": str(sock.getsockname()[1])}


def dash_config(text: str) -> Callable[[Any], dict[str, str]]:
    """A dashboard config file at {cfg}."""

    def build(ctx: Any) -> dict[str, str]:
        no_dashboard_server(ctx)
        path = ctx.tmp / "dash.yaml"
        path.write_text(text)
        return {"cfg": str(path)}

    return build


def env(name: str, value: str) -> Callable[[Any], dict[str, str]]:
    def build(ctx: Any) -> dict[str, str]:
        ctx.monkeypatch.setenv(name, value)
        return {}

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
    return Path(url[len("sqlite:///") :])


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
        from acpsearch.service import study as st

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


def device_study(device: str) -> Callable[[Any], dict[str, str]]:
    """A study whose spec trains its base network on `device`, submitted to a storage of its own
    (`run` must refuse it before anything is written there either)."""

    def build(ctx: Any) -> dict[str, str]:
        url = f"sqlite:///{ctx.tmp / 'devices.db'}"
        path = ctx.tmp / "device.yaml"
        path.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "on-gpu", "train": {"device": device}}))
        assert run(["submit", str(path), "--storage", url]) == 0
        before = snapshot(url)
        ctx.checks.append(lambda: snapshot(url) == before or pytest.fail("the study on its own storage changed"))
        return {"dev_url": url}

    return build


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


SUBMIT = ["submit", "{spec}", "--storage", "{url}"]
Q = re.escape  # literal parts of the patterns


# --- hardening: spec (builders) -------------------------------------------------------------------
def spec_text(model_extra: str = "", budget: str = "  flops: 0.5\n", tail: str = "") -> str:
    """TINY_SPEC (name 'bad') as YAML text, with lines added under `model:` (indented 2) and `budget:`
    given as text: for what yaml.safe_dump cannot write (anchors, aliases, duplicate keys)."""
    rest = {k: v for k, v in copy.deepcopy(TINY_SPEC).items() if k not in ("model", "budget")}
    return (
        "name: bad\nmodel:\n  zoo: resnet20\n  bits: 16\n"
        + model_extra
        + "budget:\n"
        + budget
        + yaml.safe_dump(rest, sort_keys=False)
        + tail
    )


def alias_bomb(levels: int) -> str:
    """Billion laughs under model.kwargs: level i is a list of 9 aliases of level i-1 (9**(i+1) leaves)."""
    lines = ["    l0: &l0 [" + ", ".join(["lol"] * 9) + "]\n"]
    lines += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, levels + 1)]
    return "  kwargs:\n" + "".join(lines)


TOO_MANY_ALIASES = (
    Q("spec '{spec}': too many YAML aliases at line ") + r"\d+" + Q(" (they expand the document to more than")
)
SEED_RANGE = Q("must be in [0, 4294967296), got ")


# (id, build, argv, expect)
BAD_INPUTS: list[tuple[str, Callable[[Any], dict[str, str]], list[str], str]] = [
    # --- the spec file itself
    ("spec-not-yaml", text_file("model: [unclosed\n  : : {\n"), SUBMIT, Q("spec '{spec}': not valid YAML at line 2")),
    ("spec-not-text", text_file(b"\xff\xfe\x00\x81binary"), SUBMIT, Q("spec '{spec}': not a text file")),
    ("spec-not-mapping", text_file("- model\n- data\n"), SUBMIT, Q("spec: must be a mapping of sections, got list")),
    (
        "spec-missing-file",
        nothing,
        ["submit", "/nonexistent/spec.yaml", "--storage", "{url}"],
        Q("spec '/nonexistent/spec.yaml': file not found"),
    ),
    ("spec-unknown-section", spec({"bogus": 1}), SUBMIT, Q("spec: bogus: unknown key (allowed: name, model, data,")),
    ("spec-unknown-key", spec({"search.bogus": 1}), SUBMIT, Q("spec: search.bogus: unknown key (allowed: candidates,")),
    ("spec-missing-section", spec(replace={"budget": DROP}), SUBMIT, Q("spec: budget: required")),
    ("spec-null-section", spec(replace={"budget": None}), SUBMIT, Q("spec: budget: ")),
    (
        "spec-wrong-type-int",
        spec({"train.epochs": "3"}),
        SUBMIT,
        Q("spec: train.epochs: input should be a valid integer, got '3'"),
    ),
    (
        "spec-wrong-type-float",
        spec({"budget.flops": "half"}),
        SUBMIT,
        Q("spec: budget.flops: ") + ".*" + Q("got 'half'"),
    ),
    ("spec-wrong-type-section", spec(replace={"search": [1, 2]}), SUBMIT, Q("spec: search: must be a mapping")),
    (
        "spec-bad-choice",
        spec({"space.criterion": "l7"}),
        SUBMIT,
        Q("spec: space.criterion: ") + ".*'l1'.*" + Q("got 'l7'"),
    ),
    ("spec-bad-name", spec(name="no spaces allowed"), SUBMIT, Q("spec: name: must match")),
    ("spec-inconsistent", spec({"finetune.top": 99}), SUBMIT, Q("finetune.top (99) must be <= search.candidates (24)")),
    (
        "spec-two-model-sources",
        spec({"model.factory": "x.y:z"}),
        SUBMIT,
        Q("spec: model: give exactly one of 'zoo' or 'factory'"),
    ),
    # --- budget
    ("budget-zero", spec({"budget.flops": 0}), SUBMIT, Q("spec: budget.flops: must be in (0, 1], got 0")),
    ("budget-above-one", spec({"budget.flops": 1.5}), SUBMIT, Q("spec: budget.flops: must be in (0, 1], got 1.5")),
    (
        "budget-negative-params",
        spec({"budget.params": -0.2}),
        SUBMIT,
        Q("spec: budget.params: must be in (0, 1], got -0.2"),
    ),
    (
        "budget-empty",
        spec(replace={"budget": {}}),
        SUBMIT,
        Q("spec: budget: set at least one of flops, params, latency_ms"),
    ),
    (
        "budget-unreachable-flops",
        spec({"budget.flops": 0.001}),
        SUBMIT,
        Q("budget.flops=0.001 is below the smallest reachable FLOPs ratio ") + r"0\.\d+",
    ),
    (
        "budget-unreachable-params",
        spec({"budget.params": 0.001}),
        SUBMIT,
        Q("budget.params=0.001 is below the smallest reachable params ratio ") + r"0\.\d+",
    ),
    (
        "budget-unreachable-latency",
        spec({"budget.latency_ms": 1e-6}),
        SUBMIT,
        Q("budget.latency_ms=1e-06 is below the smallest reachable latency"),
    ),
    # --- model
    ("zoo-unknown", spec({"model.zoo": "resnet999"}), SUBMIT, Q("unknown zoo model 'resnet999'; known: resnet20")),
    (
        "zoo-bad-kwargs",
        spec({"model.kwargs": {"depth_multiplier": 3}}),
        SUBMIT,
        Q("model.kwargs: resnet20: ") + ".*" + Q("unexpected keyword argument 'depth_multiplier'"),
    ),
    (
        "factory-malformed",
        spec(replace={"model": {"factory": "nocolon", "bits": 16}}),
        SUBMIT,
        Q("spec: model.factory: must be of the form 'package.module:function', got 'nocolon'"),
    ),
    (
        "factory-import-fails",
        spec(replace={"model": {"factory": "nosuchpkg.mod:make", "bits": 16}}),
        SUBMIT,
        Q("model.factory: cannot import module 'nosuchpkg.mod' (ModuleNotFoundError"),
    ),
    (
        "factory-no-callable",
        spec(replace={"model": {"factory": "untraceable_net:nope", "bits": 16}}, then=user_module),
        SUBMIT,
        Q("model.factory: module 'untraceable_net' has no callable 'nope'"),
    ),
    (
        "factory-raises",
        spec(replace={"model": {"factory": "untraceable_net:broken", "bits": 16}}, then=user_module),
        SUBMIT,
        Q("model.factory: 'untraceable_net:broken' raised ValueError: no weights for this size"),
    ),
    (
        "model-untraceable",
        spec(replace={"model": {"factory": "untraceable_net:make", "bits": 16}}, then=user_module),
        SUBMIT,
        Q("model Net: torch.fx cannot trace the forward of module 'gate' (Gate, untraceable_net.py:") + r"\d+\)",
    ),
    (
        "model-wrong-input",
        spec(replace={"model": {"factory": "untraceable_net:three_channels", "bits": 16}}, then=user_module),
        SUBMIT,
        Q("model Plain: forward on the example input failed (RuntimeError"),
    ),
    (
        "model-hash-layer-missing",
        spec({"model.hash_layer": "head.nosuch"}),
        SUBMIT,
        Q("hash_layer 'head.nosuch': no such module is called in forward"),
    ),
    # --- data
    (
        "data-missing-fashion-mnist",
        spec(
            {"data.dataset": "fashion-mnist", "data.path": lambda c: str(c.tmp / "empty-dir")}, then=data("empty-dir")
        ),
        SUBMIT,
        Q(
            "dataset fashion-mnist: train-images-idx3-ubyte(.gz) not found in '{data}'; install it with "
            "'apt-get install dataset-fashion-mnist'"
        ),
    ),
    (
        "data-unreadable-fashion-mnist",
        spec(
            {"data.dataset": "fashion-mnist", "data.path": lambda c: str(c.tmp / "garbage-idx")},
            then=data("garbage-idx"),
        ),
        SUBMIT,
        Q("dataset fashion-mnist: cannot read '{data}/train-images-idx3-ubyte.gz' (Not a gzipped file"),
    ),
    (
        "data-damaged-fashion-mnist",
        spec(
            {"data.dataset": "fashion-mnist", "data.path": lambda c: str(c.tmp / "damaged-idx")},
            then=data("damaged-idx"),
        ),
        SUBMIT,
        Q("dataset fashion-mnist: cannot read '{data}/train-images-idx3-ubyte.gz' (Error -3 while decompressing data"),
    ),
    (
        "data-missing-npz",
        spec({"data.dataset": "npz", "data.path": "/nonexistent/data.npz"}),
        SUBMIT,
        Q(
            "dataset npz: '/nonexistent/data.npz' not found (an .npz file with arrays X and y: write one with numpy.savez("
        ),
    ),
    (
        "data-garbage-npz",
        spec({"data.dataset": "npz", "data.path": lambda c: str(c.tmp / "garbage.npz")}, then=data("garbage-npz")),
        SUBMIT,
        Q("dataset npz: cannot read '{data}' (not an .npz archive"),
    ),
    (
        "data-damaged-npz",
        spec({"data.dataset": "npz", "data.path": lambda c: str(c.tmp / "damaged.npz")}, then=data("damaged-npz")),
        SUBMIT,
        Q("dataset npz: cannot read '{data}' ("),
    ),
    (
        "data-wrong-arrays-npz",
        spec({"data.dataset": "npz", "data.path": lambda c: str(c.tmp / "wrong.npz")}, then=data("wrong-npz")),
        SUBMIT,
        Q("dataset npz: '{data}' must contain arrays 'X' and 'y', has ['images', 'labels']"),
    ),
    (
        "data-no-path",
        spec({"data.dataset": "cifar10"}),
        SUBMIT,
        Q("spec: data: dataset 'cifar10' is user-supplied: set data.path"),
    ),
    (
        "data-protocol-too-large",
        spec({"data.protocol.train_per_class": 1000}),
        SUBMIT,
        Q("protocol.train_per_class: class 0 has only ") + r"\d+" + Q(" images, fewer than query_per_class + "),
    ),
    # --- checkpoints, in a spec and for `evaluate`
    (
        "spec-checkpoint-missing",
        spec({"model.checkpoint": "/nonexistent/base.pt"}),
        SUBMIT,
        Q("checkpoint '/nonexistent/base.pt': file not found"),
    ),
    (
        "spec-checkpoint-corrupt",
        spec({"model.checkpoint": lambda c: str(c.tmp / "corrupt.pt")}, then=checkpoint("corrupt")),
        SUBMIT,
        Q("checkpoint '{ckpt}': corrupt or not a torch checkpoint ("),
    ),
    (
        "spec-checkpoint-foreign",
        spec({"model.checkpoint": lambda c: str(c.tmp / "foreign.pt")}, then=checkpoint("foreign")),
        SUBMIT,
        Q("checkpoint '{ckpt}': not an acpsearch checkpoint (foreign format)"),
    ),
    (
        "spec-checkpoint-runs-code",
        spec({"model.checkpoint": lambda c: str(c.tmp / "evil.pt")}, then=checkpoint("evil")),
        SUBMIT,
        Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system)"),
    ),
    (
        "spec-checkpoint-runs-code-torch",
        spec({"model.checkpoint": lambda c: str(c.tmp / "evil-torch.pt")}, then=checkpoint("evil-torch")),
        SUBMIT,
        Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system)"),
    ),
    (
        "spec-checkpoint-wrong-input",
        spec({"model.checkpoint": lambda c: str(c.tmp / "wrong-input.pt")}, then=checkpoint("wrong-input")),
        SUBMIT,
        Q("model.checkpoint: '{ckpt}' expects input (3, 32, 32), the data set 'digits' has (1, 8, 8)"),
    ),
    (
        "spec-checkpoint-wrong-bits",
        spec({"model.checkpoint": lambda c: str(c.tmp / "wrong-bits.pt")}, then=checkpoint("wrong-bits")),
        SUBMIT,
        Q("model.bits: 16 contradicts model.checkpoint '{ckpt}', whose network has bits=32; set model.bits: 32"),
    ),
    (
        "spec-checkpoint-wrong-weights",
        spec({"model.checkpoint": lambda c: str(c.tmp / "wrong-weights.pt")}, then=checkpoint("wrong-weights")),
        SUBMIT,
        Q("model.checkpoint '{ckpt}': weights do not match the architecture ("),
    ),
    (
        "evaluate-missing",
        nothing,
        ["evaluate", "/nonexistent/base.pt"],
        Q("checkpoint '/nonexistent/base.pt': file not found"),
    ),
    (
        "evaluate-corrupt",
        checkpoint("corrupt"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': corrupt or not a torch checkpoint ("),
    ),
    (
        "evaluate-empty",
        checkpoint("empty"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': corrupt or not a torch checkpoint (EOFError: empty or truncated file)"),
    ),
    (
        "evaluate-foreign",
        checkpoint("foreign"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': not an acpsearch checkpoint (foreign format)"),
    ),
    (
        "evaluate-runs-code",
        checkpoint("evil"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system); only weights-only checkpoints"),
    ),
    (
        "evaluate-runs-code-torch",
        checkpoint("evil-torch"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': refused, loading it would run code (posix.system)"),
    ),
    (
        "evaluate-wrong-weights",
        checkpoint("wrong-weights"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': weights do not match the architecture ("),
    ),
    # --- storage
    (
        "storage-dir-missing",
        spec(),
        ["submit", "{spec}", "--storage", "sqlite:////nonexistent/dir/x.db"],
        Q("storage 'sqlite:////nonexistent/dir/x.db': directory '/nonexistent/dir' does not exist"),
    ),
    (
        "storage-pg-unreachable",
        spec(),
        ["submit", "{spec}", "--storage", "postgresql://nobody@127.0.0.1:1/x"],
        Q("storage 'postgresql://nobody@127.0.0.1:1/x': cannot open (OperationalError"),
    ),
    (
        "storage-pg-unreachable-status",
        nothing,
        ["status", "--storage", "postgresql://nobody@127.0.0.1:1/x"],
        Q("storage 'postgresql://nobody@127.0.0.1:1/x': cannot open"),
    ),
    (
        "storage-unknown-dialect",
        nothing,
        ["show", "{name}", "--storage", "nosuchdialect://x/y"],
        Q("storage 'nosuchdialect://x/y': cannot open"),
    ),
    (
        "storage-not-a-database",
        sqlite_garbage,
        ["status", "--storage", "{bad_url}"],
        Q("storage '{bad_url}': cannot open (DatabaseError"),
    ),
    (
        "storage-is-a-directory",
        sqlite_dir,
        ["status", "--storage", "{bad_url}"],
        Q("storage '{bad_url}': ") + ".* is a directory",
    ),
    # --- studies
    ("run-ghost", nothing, ["run", "ghost", "--storage", "{url}"], Q("study 'ghost': no such study in this storage")),
    ("show-ghost", nothing, ["show", "ghost", "--storage", "{url}"], Q("study 'ghost': no such study in this storage")),
    (
        "export-ghost",
        nothing,
        ["export", "ghost", "--storage", "{url}", "--out", "{tmp}/x.pt"],
        Q("study 'ghost': no such study in this storage"),
    ),
    (
        "export-no-winner",
        nothing,
        ["export", "{name}", "--storage", "{url}", "--out", "{tmp}/x.pt"],
        Q("study '{name}': has no winner yet (state 'submitted')"),
    ),
    (
        "export-no-finalists",
        nothing,
        ["export", "{name}", "--storage", "{url}", "--trial", "0", "--out", "{tmp}/x.pt"],
        Q("study '{name}': has no fine-tuned finalists yet"),
    ),
    (
        "submit-name-taken",
        spec(),
        ["submit", "{spec}", "--storage", "{url}", "--name", "{name}"],
        Q("name: a study named '{name}' already exists in this storage (use --name)"),
    ),
    (
        "run-spec-name-taken",
        spec({"budget.flops": 0.25}, name=STORED),
        ["run", "{spec}", "--storage", "{url}"],
        Q("name: study '{name}' exists with a different spec (use --name for a new study)"),
    ),
    (
        "run-bad-spec",
        spec({"search.bogus": 1}),
        ["run", "{spec}", "--storage", "{url}"],
        Q("spec: search.bogus: unknown key"),
    ),
    (
        "run-bad-address",
        nothing,
        ["run", "{name}", "--storage", "{url}", "--address", "127.0.0.1:1"],
        Q("--address: cannot reach a Ray head at 127.0.0.1:1"),
    ),
    ("run-zero-workers", nothing, ["run", "{name}", "--storage", "{url}", "--workers", "0"], Q("--workers")),
    # --- hardening: data ---
    (
        "data-folder-garbage-npy",
        data_spec("folder", "folder-garbage-npy"),
        SUBMIT,
        Q("dataset folder: '{data}/a/x.npy' is not an .npy file (no NumPy header)"),
    ),
    (
        "data-folder-pickle-npy",
        data_spec("folder", "folder-object-npy"),
        SUBMIT,
        Q("dataset folder: '{data}/a/x.npy' holds Python objects (object), not numbers"),
    ),
    (
        "data-folder-1d-npy",
        data_spec("folder", "folder-1d-npy"),
        SUBMIT,
        Q("dataset folder: '{data}/a/x.npy' is a 1-D array of shape (64,); an .npy image must be (H, W)"),
    ),
    (
        "data-folder-nan-npy",
        data_spec("folder", "folder-nan-npy"),
        SUBMIT,
        Q("dataset folder: '{data}': images[3] ('{data}/a/x.npy') has a non-finite value (nan) at index (0, 2, 5)"),
    ),
    (
        "data-folder-bomb-png",
        data_spec("folder", "folder-bomb-png"),
        SUBMIT,
        Q("dataset folder: cannot read image '{data}/a/x.png' (Image size (400000000 pixels) exceeds limit"),
    ),
    (
        "data-folder-bomb-warning-png",
        data_spec("folder", "folder-bombwarn-png"),
        SUBMIT,
        Q("dataset folder: cannot read image '{data}/a/x.png' (Image size (100000000 pixels) exceeds limit"),
    ),
    (
        "data-folder-huge-png",
        data_spec("folder", "folder-huge-png"),
        SUBMIT,
        Q("dataset folder: image '{data}/a/x.png' is 5000x5000 pixels, each side must be 1 to 4096"),
    ),
    (
        "data-folder-one-class",
        data_spec("folder", "folder-one-class"),
        SUBMIT,
        Q("dataset folder: '{data}': all 3 images are of one class ('a'); retrieval needs at least 2 classes"),
    ),
    (
        "evaluate-bomb-folder",
        both(checkpoint("base"), bad_data("folder-bomb-png")),
        ["evaluate", "{ckpt}", "--dataset", "folder", "--data-dir", "{data}"],
        Q("dataset folder: cannot read image '{data}/a/x.png' (Image size (400000000 pixels) exceeds limit"),
    ),
    (
        "evaluate-garbage-npy-folder",
        both(checkpoint("base"), bad_data("folder-garbage-npy")),
        ["evaluate", "{ckpt}", "--dataset", "folder", "--data-dir", "{data}"],
        Q("dataset folder: '{data}/a/x.npy' is not an .npy file (no NumPy header)"),
    ),
    (
        "data-npz-no-arrays",
        data_spec("npz", "npz-no-arrays"),
        SUBMIT,
        Q("dataset npz: '{data}' must contain arrays 'X' and 'y', has []"),
    ),
    (
        "data-npz-zero-images",
        data_spec("npz", "npz-zero-images"),
        SUBMIT,
        Q("dataset npz: '{data}': no images (X has shape (0, 1, 8, 8))"),
    ),
    (
        "data-npz-nan",
        data_spec("npz", "npz-nan"),
        SUBMIT,
        Q("dataset npz: '{data}': X[12] has a non-finite value (nan) at index (0, 1, 1)"),
    ),
    (
        "data-npz-huge-class-id",
        data_spec("npz", "npz-huge-class-id"),
        SUBMIT,
        Q("protocol.query_per_class: class 1099511627776 has only 1 images, fewer than query_per_class")
        + ".*"
        + Q("(dataset npz '{data}')"),
    ),
    (
        "data-npz-one-class",
        data_spec("npz", "npz-one-class"),
        SUBMIT,
        Q("dataset npz: '{data}': all 200 images are of one class (0); retrieval needs at least 2 classes"),
    ),
    (
        "data-npz-negative-label",
        data_spec("npz", "npz-negative-label"),
        SUBMIT,
        Q("dataset npz: '{data}': y[7] is -3; class ids must be non-negative integers"),
    ),
    (
        "data-npz-complex",
        data_spec("npz", "npz-complex"),
        SUBMIT,
        Q("dataset npz: '{data}': X holds complex numbers (complex64), not numbers"),
    ),
    (
        "data-cifar-labels-int",
        data_spec("cifar10", "cifar-labels-int"),
        SUBMIT,
        Q("dataset cifar10: data_batch_1 in '{data}': 'labels' is of type int, not a list of class ids"),
    ),
    (
        "data-cifar-data-shape",
        data_spec("cifar10", "cifar-data-shape"),
        SUBMIT,
        Q("dataset cifar10: data_batch_1 in '{data}' has data of shape (10, 3071), expected (N, 3072)"),
    ),
    (
        "data-fmnist-1d",
        data_spec("fashion-mnist", "fmnist-1d"),
        SUBMIT,
        Q(
            "dataset fashion-mnist: '{data}/train-images-idx3-ubyte.gz' holds 1-dimensional data (100,), an IDX file "
            "of images must be 3-dimensional"
        ),
    ),
    (
        "data-fmnist-2d-labels",
        data_spec("fashion-mnist", "fmnist-2d-labels"),
        SUBMIT,
        Q("dataset fashion-mnist: '{data}/train-labels-idx1-ubyte.gz' holds 2-dimensional data (100, 1)"),
    ),
    # --- hardening: checkpoints ---
    # a checkpoint is data: the factory it names is imported only from an allowed module (nothing runs)
    (
        "ckpt-factory-system-inspect",
        crafted("factory-system"),
        ["inspect", "{ckpt}"],
        Q(
            "checkpoint '{ckpt}': model.factory 'os:system' is not allowed: module 'os' is imported only if you allow "
            "it (--allow-factory os, or ACPSEARCH_ALLOW_FACTORIES=os)"
        ),
    ),
    (
        "ckpt-factory-system-evaluate",
        crafted("factory-system"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': model.factory 'os:system' is not allowed: module 'os'"),
    ),
    (
        "ckpt-factory-subprocess-prune",
        crafted("factory-subprocess"),
        ["prune", "{ckpt}", "--keep", "0.5", "--out", "{tmp}/p.pt"],
        Q("checkpoint '{ckpt}': model.factory 'subprocess:getoutput' is not allowed: module 'subprocess'"),
    ),
    (
        "ckpt-factory-subprocess-evaluate-other-allowed",
        crafted("factory-subprocess"),
        ["evaluate", "{ckpt}", "--allow-factory", "subprocessx,os.path", "--allow-factory", "sub"],
        Q("checkpoint '{ckpt}': model.factory 'subprocess:getoutput' is not allowed: module 'subprocess'"),
    ),
    (
        "ckpt-factory-system-submit",
        spec({"model.checkpoint": lambda c: str(c.tmp / "factory-system.pt")}, then=crafted("factory-system")),
        SUBMIT,
        Q("model.checkpoint '{ckpt}': model.factory 'os:system' is not allowed: module 'os'"),
    ),
    (
        "ckpt-factory-system-run-spec",
        spec({"model.checkpoint": lambda c: str(c.tmp / "factory-system.pt")}, then=crafted("factory-system")),
        ["run", "{spec}", "--storage", "{url}"],
        Q("model.checkpoint '{ckpt}': model.factory 'os:system' is not allowed"),
    ),
    (
        "ckpt-allow-factory-malformed",
        crafted("factory-system"),
        ["inspect", "{ckpt}", "--allow-factory", "os:system"],
        Q("--allow-factory: 'os:system' is not a module name"),
    ),
    # malformed entries: one line naming the file and the entry, before anything is built or allocated
    (
        "ckpt-model-str-inspect",
        crafted("model-str"),
        ["inspect", "{ckpt}"],
        Q("checkpoint '{ckpt}': entry 'model' must be a mapping with 'zoo' or 'factory', got str"),
    ),
    (
        "ckpt-input-shape-str-inspect",
        crafted("input-shape-str"),
        ["inspect", "{ckpt}"],
        Q("checkpoint '{ckpt}': input_shape: must be a list of 2 to 4 integers, got ['a', 'b']"),
    ),
    (
        "ckpt-input-shape-huge-inspect",
        crafted("input-shape-huge"),
        ["inspect", "{ckpt}"],
        Q("checkpoint '{ckpt}': input_shape: every size must be in [1, 4096], got [1, 1, 60000, 60000]"),
    ),
    (
        "ckpt-state-dict-list-evaluate",
        crafted("state-dict-list"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': state_dict: must be a mapping of names to tensors, got list"),
    ),
    (
        "ckpt-meta-protocol-evaluate",
        crafted("meta-protocol"),
        ["evaluate", "{ckpt}"],
        Q("checkpoint '{ckpt}': meta.protocol.query_per_class: must be an integer in [0, 2**32), got 'abc'"),
    ),
    (
        "ckpt-zoo-bits-huge-inspect",
        crafted("bits-huge"),
        ["inspect", "{ckpt}"],
        Q("checkpoint '{ckpt}': model.kwargs.bits: 1000000000 is out of range"),
    ),
    (
        "ckpt-prune-missing-kept-inspect",
        crafted("missing-kept"),
        ["inspect", "{ckpt}"],
        Q("checkpoint '{ckpt}': pruning.groups['{group}']: missing 'kept'"),
    ),
    (
        "ckpt-prune-groups-str-inspect",
        crafted("groups-str"),
        ["inspect", "{ckpt}"],
        Q("checkpoint '{ckpt}': pruning.groups: must be a mapping of group names to kept channels, got str"),
    ),
    (
        "ckpt-complex-weights-inspect",
        crafted("complex-weights"),
        ["inspect", "{ckpt}", "--json"],
        Q("checkpoint '{ckpt}': state_dict['{key}']: complex64 tensor; only real floating-point or integer weights"),
    ),
    (
        "ckpt-state-dict-list-spec",
        spec({"model.checkpoint": lambda c: str(c.tmp / "state-dict-list.pt")}, then=crafted("state-dict-list")),
        SUBMIT,
        Q("checkpoint '{ckpt}': state_dict: must be a mapping of names to tensors, got list"),
    ),
    # --- hardening: processes ---
    (
        "addr-not-ray",
        bare_listener("silent"),
        ["run", "{name}", "--storage", "{url}", "--address", "127.0.0.1:{port}"],
        Q("--address: 127.0.0.1:{port} is not a Ray head (no gRPC answer within 5 s)"),
    ),
    (
        "addr-not-ray-closes",
        bare_listener("closes"),
        ["run", "{name}", "--storage", "{url}", "--address", "127.0.0.1:{port}"],
        Q("--address: 127.0.0.1:{port} is not a Ray head ("),
    ),
    (
        "addr-not-ray-worker",
        bare_listener("silent"),
        ["worker", "--storage", "{url}", "--address", "127.0.0.1:{port}"],
        Q("--address: 127.0.0.1:{port} is not a Ray head (no gRPC answer within 5 s)"),
    ),
    (
        "export-out-dir",
        nothing,
        ["export", "{name}", "--storage", "{url}", "--out", "{tmp}"],
        Q("--out: '{tmp}' is a directory; give a file name"),
    ),
    (
        "export-out-proc",
        nothing,
        ["export", "{name}", "--storage", "{url}", "--out", "/proc/x.pt"],
        Q("--out: cannot write '/proc/x.pt': cannot create a file in '/proc' ("),
    ),
    (
        "export-out-under-file",
        checkpoint("base"),
        ["export", "{name}", "--storage", "{url}", "--out", "{ckpt}/x.pt"],
        Q("--out: '{ckpt}' is not a directory, cannot write '{ckpt}/x.pt'"),
    ),
    (
        "prune-out-dir",
        checkpoint("base"),
        ["prune", "{ckpt}", "--keep", "0.5", "--out", "{tmp}"],
        Q("--out: '{tmp}' is a directory; give a file name"),
    ),
    (
        "prune-out-proc",
        checkpoint("base"),
        ["prune", "{ckpt}", "--keep", "0.5", "--out", "/proc/p.pt"],
        Q("--out: cannot write '/proc/p.pt': cannot create a file in '/proc' ("),
    ),
    (
        "prune-out-device",
        checkpoint("base"),
        ["prune", "{ckpt}", "--keep", "0.5", "--out", "/dev/null"],
        Q("--out: '/dev/null' exists and is not a regular file"),
    ),
    (
        "train-out-dir",
        nothing,
        ["train", "--dataset", "digits", "--epochs", "1", "--out", "{tmp}"],
        Q("--out: '{tmp}' is a directory; give a file name"),
    ),
    (
        "dashboard-host",
        no_dashboard_server,
        ["dashboard", "--storage", "{url}", "--host", "nosuch.invalid", "--port", "48124"],
        Q("--host: cannot resolve 'nosuch.invalid' ("),
    ),
    (
        "dashboard-host-not-local",
        no_dashboard_server,
        ["dashboard", "--storage", "{url}", "--host", "192.0.2.77"],
        Q("--host: cannot listen on 192.0.2.77:8080 (Cannot assign requested address)"),
    ),
    (
        "dashboard-port-busy",
        busy_port,
        ["dashboard", "--storage", "{url}", "--port", "{port}"],
        Q("--port: port {port} on 127.0.0.1 is already in use (Address already in use)"),
    ),
    (
        "dashboard-config-port",
        dash_config("port: abc\n"),
        ["dashboard", "--storage", "{url}", "--config", "{cfg}"],
        Q("dashboard config '{cfg}': port: must be an integer in 1..65535, got 'abc'"),
    ),
    (
        "dashboard-config-port-range",
        dash_config("port: 70000\n"),
        ["dashboard", "--storage", "{url}", "--config", "{cfg}"],
        Q("dashboard config '{cfg}': port: must be an integer in 1..65535, got 70000"),
    ),
    (
        "dashboard-config-host",
        dash_config("host: [1, 2]\n"),
        ["dashboard", "--storage", "{url}", "--config", "{cfg}"],
        Q("dashboard config '{cfg}': host: must be a non-empty string, got [1, 2]"),
    ),
    (
        "dashboard-config-dupkeys",
        dash_config("port: 8081\nport: 8082\n"),
        ["dashboard", "--storage", "{url}", "--config", "{cfg}"],
        Q("dashboard config '{cfg}': not valid YAML (duplicate key 'port', first at line 1)"),
    ),
    (
        "dashboard-config-not-yaml",
        dash_config("port: [\n"),
        ["dashboard", "--storage", "{url}", "--config", "{cfg}"],
        Q("dashboard config '{cfg}': not valid YAML ("),
    ),
    (
        "dashboard-config-host-unresolvable",
        dash_config("host: nosuch.invalid\nport: 48126\n"),
        ["dashboard", "--storage", "{url}", "--config", "{cfg}"],
        Q("dashboard config '{cfg}': host: cannot resolve 'nosuch.invalid' ("),
    ),
    (
        "latency-cache-unwritable",
        spec(replace={"budget": {"latency_ms": 1000.0}}, then=env("ACPSEARCH_CACHE", "/proc/acpcache")),
        SUBMIT,
        Q("ACPSEARCH_CACHE: cannot write the latency cache in '/proc/acpcache/latency' ("),
    ),
    # --- hardening: spec
    # the YAML itself: duplicate keys, alias bombs (9**9 leaves; refused before anything is built), recursion
    (
        "spec-dupkeys",
        text_file(spec_text(tail="budget:\n  flops: 0.9\n")),
        SUBMIT,
        Q("spec '{spec}': not valid YAML at line ") + r"\d+" + Q(" (duplicate key 'budget', first at line 5)"),
    ),
    (
        "spec-dupkeys-nested",
        text_file(spec_text(budget="  flops: 0.5\n  flops: 0.9\n")),
        SUBMIT,
        Q("spec '{spec}': not valid YAML at line 7 (duplicate key 'flops', first at line 6)"),
    ),
    ("spec-bomb9-flops", text_file(spec_text(alias_bomb(9), budget="  flops: *l9\n")), SUBMIT, TOO_MANY_ALIASES),
    ("spec-bomb9-kwargs-only", text_file(spec_text(alias_bomb(9))), SUBMIT, TOO_MANY_ALIASES),
    (
        "spec-bomb-recursive",
        text_file(spec_text("  kwargs: &k {self: *k}\n")),
        SUBMIT,
        Q("spec '{spec}': recursive YAML alias at line 5 (an anchor is used inside itself)"),
    ),
    (
        "spec-int-5000-digits",
        text_file(spec_text(budget="  flops: " + "9" * 5000 + "\n")),
        SUBMIT,
        Q("spec '{spec}': not valid YAML at line 6 (integer with too many digits)"),
    ),
    # long values are echoed short (see also test_long_values_are_echoed_short)
    (
        "spec-long-value-bomb3",
        text_file(spec_text(alias_bomb(3), budget="  flops: *l3\n")),
        SUBMIT,
        Q("spec: budget.flops: input should be a valid number, got [[["),
    ),
    (
        "spec-long-value-string",
        spec({"budget.flops": "x" * 100_000}),
        SUBMIT,
        Q("spec: budget.flops: input should be a valid number, got 'xxxx"),
    ),
    ("spec-long-value-name", spec(name="n" * 100_000), SUBMIT, Q("spec: name: must match ")),
    # bounds: seeds in [0, 2**32), finite budgets, step >= 0.01, counts with upper limits
    (
        "spec-seed-protocol-negative",
        spec({"data.protocol.seed": -1}),
        SUBMIT,
        Q("spec: data.protocol.seed: ") + SEED_RANGE + "-1$",
    ),
    (
        "spec-seed-protocol-2p64",
        spec({"data.protocol.seed": 2**64}),
        SUBMIT,
        Q("spec: data.protocol.seed: ") + SEED_RANGE + Q("18446744073709551616"),
    ),
    ("spec-seed-search-negative", spec({"search.seed": -1}), SUBMIT, Q("spec: search.seed: ") + SEED_RANGE + "-1$"),
    (
        "spec-seed-search-2p64",
        spec({"search.seed": 2**64}),
        SUBMIT,
        Q("spec: search.seed: ") + SEED_RANGE + Q("18446744073709551616"),
    ),
    (
        "spec-seed-search-2p32",
        spec({"search.seed": 2**32}),
        SUBMIT,
        Q("spec: search.seed: ") + SEED_RANGE + Q("4294967296"),
    ),
    (
        "budget-latency-nan",
        spec(replace={"budget": {"latency_ms": float("nan")}}),
        SUBMIT,
        Q("spec: budget.latency_ms: must be a finite number > 0, got nan"),
    ),
    (
        "budget-latency-inf",
        spec(replace={"budget": {"latency_ms": float("inf")}}),
        SUBMIT,
        Q("spec: budget.latency_ms: must be a finite number > 0, got inf"),
    ),
    (
        "budget-flops-nan",
        spec({"budget.flops": float("nan")}),
        SUBMIT,
        Q("spec: budget.flops: must be in (0, 1], got nan"),
    ),
    ("spec-step-tiny", spec({"space.step": 1e-9}), SUBMIT, Q("spec: space.step: must be in [0.01, 0.5], got 1e-09")),
    (
        "spec-strategies-huge",
        spec({"encoder.strategies": 10**12}),
        SUBMIT,
        Q("spec: encoder.strategies: must be in [1, 100000], got 1000000000000"),
    ),
    (
        "spec-candidates-huge",
        spec({"search.candidates": 10**30}),
        SUBMIT,
        Q("spec: search.candidates: must be in [1, 100000], got 1" + "0" * 30),
    ),
    (
        "spec-epochs-huge-train",
        spec({"train.epochs": 10**30}),
        SUBMIT,
        Q("spec: train.epochs: must be in [1, 10000], got 1" + "0" * 30),
    ),
    (
        "spec-epochs-huge-encoder",
        spec({"encoder.epochs": 10**30}),
        SUBMIT,
        Q("spec: encoder.epochs: must be in [1, 10000], got 1"),
    ),
    (
        "spec-epochs-huge-finetune",
        spec({"finetune.epochs": 10**30}),
        SUBMIT,
        Q("spec: finetune.epochs: must be in [1, 10000], got 1"),
    ),
    (
        "spec-workers-huge",
        spec({"search.workers": 10**9}),
        SUBMIT,
        Q("spec: search.workers: must be in [1, 1024], got 1000000000"),
    ),
    (
        "spec-batch-size-huge",
        spec({"finetune.batch_size": 10**9}),
        SUBMIT,
        Q("spec: finetune.batch_size: must be in [1, 65536], got 1"),
    ),
    # silent meanings
    (
        "spec-kwargs-bits-conflict",
        spec({"model.kwargs": {"bits": 32}}),
        SUBMIT,
        Q("spec: model.kwargs.bits: 32 contradicts model.bits = 16; give the code length once, as model.bits"),
    ),
    (
        "spec-checkpoint-empty",
        spec({"model.checkpoint": ""}),
        SUBMIT,
        Q("spec: model.checkpoint: empty: leave it out to train a base network"),
    ),
    ("name-empty-flag", spec(), SUBMIT + ["--name", ""], Q("--name: empty; leave it out to use the spec's name")),
    ("name-newline-spec", spec(name="x\n"), SUBMIT, Q("spec: name: must match ") + ".*" + Q("got 'x\\n'")),
    ("name-newline-flag", spec(), SUBMIT + ["--name", "nl\n"], Q("--name: must match ") + ".*" + Q("got 'nl\\n'")),
    ("name-newline-run", spec(), ["run", "{spec}", "--storage", "{url}", "--name", "nl\n"], Q("--name: must match ")),
    ("name-control-char", spec(name="a\tb"), SUBMIT, Q("spec: name: must match ") + ".*" + Q("got 'a\\tb'")),
    # numeric CLI options
    (
        "evaluate-seed-negative",
        checkpoint("good"),
        ["evaluate", "{ckpt}", "--seed", "-1"],
        Q("Invalid value for '--seed'"),
    ),
    (
        "evaluate-seed-2p32",
        checkpoint("good"),
        ["evaluate", "{ckpt}", "--seed", str(2**32)],
        Q("Invalid value for '--seed'"),
    ),
    (
        "train-seed-negative",
        nothing,
        [
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--query-per-class",
            "10",
            "--train-per-class",
            "50",
            "--val-per-class",
            "10",
            "--seed",
            "-1",
            "--out",
            "{tmp}/t.pt",
        ],
        Q("Invalid value for '--seed'"),
    ),
    (
        "train-epochs-huge",
        nothing,
        ["train", "--dataset", "digits", "--epochs", str(10**30), "--out", "{tmp}/t.pt"],
        Q("--epochs: must be in [1, 10000], got 1"),
    ),
    (
        "prune-seed-negative",
        checkpoint("good"),
        ["prune", "{ckpt}", "--keep", "0.5", "--seed", "-1", "--out", "{tmp}/p.pt"],
        Q("Invalid value for '--seed'"),
    ),
    # --- hardening: storage ---
    (
        "name-finetune-suffix-flag",
        spec(),
        ["submit", "{spec}", "--storage", "{url}", "--name", "{name}.finetune"],
        Q(
            "--name: '{name}.finetune' ends in '.finetune', which is reserved for the companion study acpsearch makes "
            "for '{name}'"
        ),
    ),
    (
        "name-finetune-suffix-spec",
        spec(name="other.finetune"),
        SUBMIT,
        Q("spec: name: 'other.finetune' ends in '.finetune', which is reserved"),
    ),
    (
        "name-collision-hijack-run",
        foreign_companion,
        ["run", "{name}", "--storage", "{hijack_url}"],
        Q(
            "study '{name}.finetune': exists but is not the fine-tuning study of '{name}' (kind 'acpsearch-search', "
            "parent None); acpsearch leaves it alone"
        ),
    ),
    (
        "storage-foreign-app-status",
        foreign_sqlite("app"),
        ["status", "--storage", "{bad_url}"],
        Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables users); refusing to add tables"),
    ),
    (
        "storage-foreign-app-submit",
        foreign_sqlite("app"),
        ["submit", "{spec}", "--storage", "{bad_url}"],
        Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables users); refusing to add tables"),
    ),
    (
        "storage-foreign-app-show",
        foreign_sqlite("app"),
        ["show", "{name}", "--storage", "{bad_url}"],
        Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables users)"),
    ),
    (
        "storage-foreign-studies-table",
        foreign_sqlite("studies"),
        ["status", "--storage", "{bad_url}"],
        Q("storage '{bad_url}': not an Optuna/acpsearch database (has tables studies, version_info); refusing"),
    ),
    (
        "storage-readonly-submit-uri",
        spec(name="ro1", then=readonly_sqlite("uri")),
        ["submit", "{spec}", "--storage", "{ro_url}"],
        Q("storage '{ro_url}': read-only (attempt to write a readonly database)"),
    ),
    (
        "storage-readonly-submit-immutable",
        spec(name="ro2", then=readonly_sqlite("immutable")),
        ["submit", "{spec}", "--storage", "{ro_url}"],
        Q("storage '{ro_url}': read-only (attempt to write a readonly database)"),
    ),
    (
        "storage-readonly-run",
        readonly_sqlite("uri"),
        ["run", "{name}", "--storage", "{ro_url}"],
        Q("storage '{ro_url}': read-only (attempt to write a readonly database)"),
    ),
    (
        "submit-fails-midway-storage",
        fail_midway(optuna.exceptions.StorageInternalError("disk full (simulated)")),
        SUBMIT,
        Q("storage '{url}': cannot write (StorageInternalError: disk full (simulated))"),
    ),
    (
        "submit-fails-midway-oserror",
        fail_midway(OSError(27, "File too large")),
        SUBMIT,
        Q("storage '{url}': cannot write (OSError: [Errno 27] File too large)"),
    ),
    (
        "storage-url-empty-status",
        in_tmp,
        ["status", "--storage", ""],
        Q("--storage: empty; leave it out for the default"),
    ),
    (
        "storage-url-empty-submit",
        in_tmp_spec,
        ["submit", "{spec}", "--storage", ""],
        Q("--storage: empty; leave it out for the default"),
    ),
    (
        "storage-url-memory-submit",
        spec(),
        ["submit", "{spec}", "--storage", "sqlite://"],
        Q("storage 'sqlite://': in-memory database, a study stored there vanishes when this command exits"),
    ),
    (
        "storage-url-memory-run",
        spec(),
        ["run", "{spec}", "--storage", "sqlite:///:memory:"],
        Q("storage 'sqlite:///:memory:': in-memory database"),
    ),
    (
        "storage-url-memory-worker",
        nothing,
        ["worker", "--storage", "sqlite://"],
        Q("storage 'sqlite://': in-memory database"),
    ),
    (
        "storage-url-password",
        nothing,
        ["status", "--storage", "postgresql://admin:S3cretPW@127.0.0.1:1/db"],
        r"^(?!.*S3cretPW)" + Q("error: storage 'postgresql://admin:***@127.0.0.1:1/db': cannot open (OperationalError"),
    ),
    (
        "storage-url-password-submit",
        spec(),
        ["submit", "{spec}", "--storage", "postgresql://admin:S3cretPW@127.0.0.1:1/db"],
        r"^(?!.*S3cretPW)" + Q("error: storage 'postgresql://admin:***@127.0.0.1:1/db': cannot open"),
    ),
    # --- devices ---
    (
        "device-spec-unknown",
        spec({"train.device": "gpu"}),
        SUBMIT,
        Q("spec: train.device: must be one of auto, cpu, cuda, cuda:N, got 'gpu'"),
    ),
    (
        "device-spec-not-a-word",
        spec({"train.device": ["cuda"]}),
        SUBMIT,
        Q("spec: train.device: input should be a valid string, got ['cuda']"),
    ),
    (
        "resources-gpu-negative",
        spec({"finetune.resources": {"cpu": 1, "gpu": -0.25}}),
        SUBMIT,
        Q("spec: finetune.resources.gpu: must be in [0, 1], got -0.25"),
    ),
    (
        "resources-gpu-fraction-above-one",
        spec({"finetune.resources.gpu": 1.5}),
        SUBMIT,
        Q("spec: finetune.resources.gpu: must be in [0, 1], got 1.5"),
    ),
    (
        "resources-gpu-text",
        spec({"search.resources.gpu": "0.5"}),
        SUBMIT,
        Q("spec: search.resources.gpu: input should be a valid number, got '0.5'"),
    ),
    (
        "resources-cpu-zero",
        spec({"search.resources.cpu": 0}),
        SUBMIT,
        Q("spec: search.resources.cpu: must be in [1, 1024], got 0"),
    ),
    (
        "resources-unknown-key",
        spec({"finetune.resources.gpus": 1}),
        SUBMIT,
        Q("spec: finetune.resources.gpus: unknown key (allowed: cpu, gpu)"),
    ),
    (
        "device-train-flag-unknown",
        nothing,
        ["train", "--dataset", "digits", "--epochs", "1", "--device", "tpu", "--out", "{tmp}/t.pt"],
        Q("--device: must be one of auto, cpu, cuda, cuda:N, got 'tpu'"),
    ),
    (
        "device-train-flag-missing-gpu",
        nothing,
        ["train", "--dataset", "digits", "--epochs", "1", "--device", "cuda:99", "--out", "{tmp}/t.pt"],
        Q("--device: 'cuda:99' asked, but torch sees"),
    ),
    (
        "device-evaluate-flag-missing-gpu",
        checkpoint("good"),
        ["evaluate", "{ckpt}", "--device", "cuda:99"],
        Q("--device: 'cuda:99' asked, but torch sees"),
    ),
    (
        "device-run-flag-missing-gpu",
        nothing,
        ["run", "{name}", "--storage", "{url}", "--device", "cuda:99"],
        Q("--device: 'cuda:99' asked, but torch sees"),
    ),
    (
        "device-worker-flag-unknown",
        nothing,
        ["worker", "--storage", "{url}", "--device", "cuda:-1"],
        Q("--device: must be one of auto, cpu, cuda, cuda:N, got 'cuda:-1'"),
    ),
    (
        "device-run-spec-missing-gpu",
        device_study("cuda:99"),
        ["run", "on-gpu", "--storage", "{dev_url}"],
        Q("train.device: 'cuda:99' asked, but torch sees"),
    ),
    *(
        [
            (
                "device-train-cuda-without-gpu",
                nothing,
                ["train", "--dataset", "digits", "--epochs", "1", "--device", "cuda", "--out", "{tmp}/t.pt"],
                Q(
                    "--device: 'cuda' asked, but torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False)"
                ),
            ),
            (
                "device-run-spec-cuda-without-gpu",
                device_study("cuda"),
                ["run", "on-gpu", "--storage", "{dev_url}"],
                Q("train.device: 'cuda' asked, but torch sees no CUDA GPU on this machine"),
            ),
        ]
        if _no_cuda()
        else []
    ),
    # --- own network ---
    (
        "own-factory-not-found",
        spec(replace={"model": {"factory": "own_missing_net:make", "bits": 16}}),
        SUBMIT,
        Q(
            "model.factory: cannot import module 'own_missing_net' (ModuleNotFoundError: No module named "
            "'own_missing_net'); looked in '{tmp}'"
        )
        + ".*"
        + Q(
            "set model.path to the directory that holds it (relative to the spec file) or add that directory "
            "to PYTHONPATH"
        ),
    ),
    (
        "own-state-dict-mismatch",
        spec({"model.checkpoint": lambda c: str(c.tmp / "state_dict.pt")}, then=state_dict_file(bits=32)),
        SUBMIT,
        Q(
            "model.checkpoint '{ckpt}': the state dict does not match the network: 'hash_layer.weight' has shape "
            "[32, 64] in the file, the network expects [16, 64]"
        ),
    ),
    (
        "own-spec-bits-contradict-checkpoint",
        spec({"model.checkpoint": lambda c: str(c.tmp / "good.pt"), "model.bits": 24}, then=checkpoint("good")),
        SUBMIT,
        Q("model.bits: 24 contradicts model.checkpoint '{ckpt}', whose network has bits=16; set model.bits: 16"),
    ),
    (
        "own-spec-kwargs-contradict-checkpoint",
        spec(
            {"model.checkpoint": lambda c: str(c.tmp / "good.pt"), "model.kwargs": {"image_size": 32}},
            then=checkpoint("good"),
        ),
        SUBMIT,
        Q("model.kwargs.image_size: 32 contradicts model.checkpoint '{ckpt}', whose network has image_size=8"),
    ),
    (
        "own-exclude-unknown",
        spec({"space.exclude": ["layer9.*"]}),
        SUBMIT,
        Q("space.exclude: 'layer9.*' names no module of the network; close matches: "),
    ),
    (
        "own-bounds-out-of-range",
        spec({"space.bounds": {"layer1.*": [0.5, 1.5]}}),
        SUBMIT,
        Q(
            "spec: space.bounds.layer1.*: must be [min_keep, max_keep] with 0 < min_keep <= max_keep <= 1, got [0.5, 1.5]"
        ),
    ),
    (
        "own-bounds-unknown-group",
        spec({"space.bounds": {"layer9.*": [0.5, 1.0]}}),
        SUBMIT,
        Q("space.bounds: 'layer9.*' names no channel group of the network; "),
    ),
    ("own-round-to-zero", spec({"space.round_to": 0}), SUBMIT, Q("spec: space.round_to: must be in [1, 1024], got 0")),
    # --- data for real users
    (
        "data-listfile-missing-image",
        spec(
            {"data": lambda c: {"dataset": "listfile", "path": str(c.tmp / "ls" / "list.txt")}},
            then=lambda c: write_bad_list(c.tmp / "ls", "missing-image"),
        ),
        SUBMIT,
        Q("dataset listfile: list '{list}' line 2: image 'img/nope.png' not found under '{root}'"),
    ),
    (
        "data-listfile-bad-label",
        spec(
            {"data": lambda c: {"dataset": "listfile", "path": str(c.tmp / "ls" / "list.txt")}},
            then=lambda c: write_bad_list(c.tmp / "ls", "bad-label"),
        ),
        SUBMIT,
        Q("dataset listfile: list '{list}' line 1: label vector must be 0/1 values separated by spaces, got 'x'"),
    ),
    (
        "data-listfile-no-lists",
        spec({"data": {"dataset": "listfile"}}),
        SUBMIT,
        Q(
            "spec: data.train_list: dataset 'listfile' needs data.path (one list) or train_list, database_list and test_list"
        ),
    ),
    (
        "data-list-key-not-listfile",
        spec({"data.train_list": "train.txt"}),
        SUBMIT,
        Q("spec: data.train_list: only for dataset 'listfile'"),
    ),
    (
        "data-normalize-word",
        spec({"data.normalize": "whole"}),
        SUBMIT,
        Q("spec: data.normalize: must be 'train', 'none' or {mean: [...], std: [...]}, got 'whole'"),
    ),
    (
        "data-normalize-zero-std",
        spec({"data.normalize": {"mean": [0.5], "std": [0]}}),
        SUBMIT,
        Q("spec: data.normalize: std.0: input should be greater than 0, got 0"),
    ),
    (
        "data-normalize-channels",
        spec({"data.normalize": {"mean": [0.1, 0.2, 0.3], "std": [1.0]}}),
        SUBMIT,
        Q("data.normalize.mean: has 3 values, the images have 1 channels"),
    ),
    (
        "train-normalize-word",
        nothing,
        ["train", "--dataset", "digits", "--normalize", "whole", "--out", "x.pt"],
        Q("--normalize: must be 'train' or 'none', got 'whole'"),
    ),
    # --- export formats ---
    (
        "export-format-bad",
        nothing,
        ["export", "{name}", "--storage", "{url}", "--format", "tflite", "--out", "{tmp}/m.tflite"],
        Q("--format: must be one of acpsearch, torchscript, onnx, pt2, got 'tflite'") + "$",
    ),
    (
        "export-format-empty",
        nothing,
        ["export", "{name}", "--storage", "{url}", "--format", "", "--out", "{tmp}/m.onnx"],
        Q("--format: must be one of acpsearch, torchscript, onnx, pt2, got ''") + "$",
    ),
    (
        "prune-format-bad",
        checkpoint("base"),
        ["prune", "{ckpt}", "--keep", "0.5", "--format", "onnx2", "--out", "{tmp}/p.onnx"],
        Q("--format: must be one of acpsearch, torchscript, onnx, pt2, got 'onnx2'") + "$",
    ),
    ("bench-missing", nothing, ["bench", "/nonexistent/m.onnx"], Q("FILE: '/nonexistent/m.onnx' not found")),
    (
        "bench-not-a-model",
        checkpoint("corrupt"),
        ["bench", "{ckpt}"],
        Q("file '{ckpt}': not a TorchScript, pt2, ONNX or acpsearch file"),
    ),
    (
        "bench-foreign-zip",
        checkpoint("foreign"),
        ["bench", "{ckpt}"],
        Q("checkpoint '{ckpt}': not an acpsearch checkpoint (foreign format)"),
    ),
    ("bench-batch-zero", checkpoint("good"), ["bench", "{ckpt}", "--batch", "0"], Q("Invalid value for '--batch'")),
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
                "trials": [
                    (t.number, t.state, t.params, t.values, t.user_attrs, t.system_attrs, t.intermediate_values)
                    for t in storage.get_all_trials(sid)
                ],
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
        for action, category in (
            ("ignore", DeprecationWarning),
            ("ignore", PendingDeprecationWarning),
            ("ignore", ImportWarning),
            ("ignore", ResourceWarning),
        ):
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
def test_bad_input_is_one_line_exit_2_and_storage_untouched(
    case_id, build, argv, expect, stored, tmp_path, monkeypatch, capsys, user_warnings, request
):
    # checks: callables run after the row's assertions (a file the row must leave alone);
    # cleanups: run in any case (e.g. chattr -i)
    ctx = SimpleNamespace(
        tmp=tmp_path,
        monkeypatch=monkeypatch,
        marker=tmp_path / "PWNED",
        stored_url=stored.url,
        checks=[],
        cleanups=[],
        finalize=request.addfinalizer,
    )
    monkeypatch.delenv(ALLOW_ENV, raising=False)  # no factory module allowed unless a row says so
    try:
        values = {"url": stored.url, "name": STORED, "tmp": str(tmp_path), **build(ctx)}
        argv = [_fill(a, values) for a in argv]
        pattern = _pattern(expect, values)
        capsys.readouterr()

        code = run(argv)

        cap = capsys.readouterr()
        err = cap.err
        assert code == 2, f"exit {code} for {argv}: {err}"
        if "--json" in argv:  # stdout: one JSON object with the same reason
            assert json.loads(cap.out) == {"error": err.splitlines()[0][len("error: ") :], "exit": 2}, cap.out
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
    for needed in (
        "spec-not-yaml",
        "spec-unknown-key",
        "spec-wrong-type",
        "budget-zero",
        "budget-above-one",
        "budget-unreachable",
        "zoo-unknown",
        "factory-import-fails",
        "model-untraceable",
        "data-missing",
        "data-unreadable",
        "spec-checkpoint-corrupt",
        "spec-checkpoint-foreign",
        "spec-checkpoint-runs-code",
        "evaluate-corrupt",
        "evaluate-foreign",
        "evaluate-runs-code",
        "storage-dir-missing",
        "storage-pg-unreachable",
        "run-ghost",
        "show-ghost",
        "export-ghost",
        "export-no-winner",
        # hardening: data
        "data-folder-garbage-npy",
        "data-folder-pickle-npy",
        "data-folder-1d-npy",
        "data-folder-bomb-png",
        "evaluate-bomb-folder",
        "data-npz-no-arrays",
        "data-npz-zero-images",
        "data-npz-nan",
        "data-npz-huge-class-id",
        "data-cifar-labels-int",
        "data-fmnist-1d",
        "data-folder-one-class",
        # hardening: checkpoints
        "ckpt-factory-system-inspect",
        "ckpt-factory-system-evaluate",
        "ckpt-factory-subprocess-prune",
        "ckpt-factory-system-submit",
        "ckpt-model-str",
        "ckpt-input-shape-str",
        "ckpt-input-shape-huge",
        "ckpt-state-dict-list",
        "ckpt-meta-protocol",
        "ckpt-zoo-bits-huge",
        "ckpt-prune-missing-kept",
        "ckpt-prune-groups-str",
        "ckpt-complex-weights",
        # hardening: processes
        "addr-not-ray",
        "export-out-dir",
        "export-out-proc",
        "prune-out-dir",
        "dashboard-host",
        "dashboard-port-busy",
        "dashboard-config-port",
        "dashboard-config-host",
        "latency-cache-unwritable",
        # hardening: spec
        "spec-dupkeys",
        "spec-bomb9",
        "spec-long-value",
        "spec-seed-protocol",
        "spec-seed-search",
        "budget-latency-nan",
        "budget-latency-inf",
        "spec-step-tiny",
        "spec-strategies-huge",
        "spec-candidates-huge",
        "spec-epochs-huge",
        "spec-kwargs-bits-conflict",
        "spec-checkpoint-empty",
        "name-empty-flag",
        "name-newline-spec",
        "name-newline-flag",
        "evaluate-seed-negative",
        "train-seed-negative",
        # hardening: storage
        "name-finetune-suffix",
        "name-collision-hijack",
        "storage-foreign-app-status",
        "storage-foreign-app-submit",
        "storage-foreign-studies-table",
        "storage-readonly-submit",
        "storage-readonly-run",
        "submit-fails-midway",
        "storage-url-empty",
        "storage-url-memory",
        "storage-url-password",
        # export formats
        "export-format-bad",
        "prune-format-bad",
        "bench-missing",
        "bench-not-a-model",
    ):
        assert any(i.startswith(needed) for i in ids), needed


@pytest.mark.parametrize(
    "case_id",
    ["spec-not-yaml", "model-untraceable", "evaluate-runs-code", "ckpt-factory-system-inspect", "addr-not-ray"],
)
def test_bad_input_in_a_real_process(case_id, tmp_path, stored, request):
    """The same rows through the `acpsearch` executable: nothing else reaches stderr (warnings,
    logging, Ray's C++ log lines), exit status 2."""
    _, build, argv, expect = next(row for row in BAD_INPUTS if row[0] == case_id)
    ctx = SimpleNamespace(
        tmp=tmp_path,
        monkeypatch=pytest.MonkeyPatch(),
        marker=tmp_path / "PWNED",
        stored_url=stored.url,
        checks=[],
        cleanups=[],
        finalize=request.addfinalizer,
    )
    try:
        values = {"url": stored.url, "name": STORED, "tmp": str(tmp_path), **build(ctx)}
    finally:
        ctx.monkeypatch.undo()  # the subprocess gets the user's module dir through PYTHONPATH instead
    # the user's module dir, this checkout (the installed `acpsearch` may be another checkout's editable
    # install), then the caller's path
    pythonpath = os.pathsep.join(
        [
            str(tmp_path / "usercode"),
            str(Path(__file__).resolve().parents[2]),
            *filter(None, [os.environ.get("PYTHONPATH")]),
        ]
    )
    env = {**os.environ, "PYTHONPATH": pythonpath, "ACPSEARCH_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop(ALLOW_ENV, None)
    res = subprocess.run(
        [str(Path(sys.executable).parent / "acpsearch"), *[_fill(a, values) for a in argv]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert re.search(_pattern(expect, values), lines[0]), lines[0]
    assert res.stdout == "" and not ctx.marker.exists()
    assert snapshot(stored.url) == stored.before


# --- hardening: spec (beside the table) ----------------------------------------------------------
@pytest.mark.parametrize(
    "case_id",
    [
        "spec-bomb9-flops",
        "spec-bomb9-kwargs-only",
        "spec-long-value-bomb3",
        "spec-long-value-string",
        "spec-long-value-name",
    ],
)
def test_long_values_are_echoed_short(case_id, stored, tmp_path, monkeypatch, capsys):
    """An alias bomb is refused in well under a second (before: 136 s, then MemoryError), and a huge
    value is echoed in a short error line (before: the whole value, megabytes)."""
    import time

    _, build, argv, _ = next(row for row in BAD_INPUTS if row[0] == case_id)
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch, marker=tmp_path / "PWNED")
    values = {"url": stored.url, "name": STORED, "tmp": str(tmp_path), **build(ctx)}
    argv = [_fill(a, values) for a in argv]
    capsys.readouterr()
    t0 = time.perf_counter()
    code = run(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err[:1000]
    assert len(err) - len(values["spec"]) < 400, f"{len(err)} characters: {err[:1000]}"
    assert elapsed < 5.0, f"{elapsed:.1f} s"
    assert snapshot(stored.url) == stored.before


# --- dashboard: local by default -----------------------------------------------------------------
def test_dashboard_bind_defaults_to_localhost_and_warns_otherwise():
    from acpsearch.commands.dashboard import dashboard_bind

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


@pytest.mark.parametrize(
    "flags,host,noted",
    [
        ([], "127.0.0.1", False),
        (["--host", "0.0.0.0"], "0.0.0.0", True),
        (["--host", "localhost", "--port", "8123"], "localhost", False),
    ],
)
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
    import acpsearch.service.spec

    def boom(path):  # noqa: ANN001
        raise RuntimeError("boom inside load_spec")

    monkeypatch.setattr(acpsearch.service.spec, "load_spec", boom)
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
    res = subprocess.run(
        [str(Path(sys.executable).parent / "acpsearch"), "submit", str(good), "--storage", url],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        preexec_fn=limited,
    )
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
    from acpsearch.service import study as st
    from acpsearch.service.storage import open_storage

    def interrupted(put: Any, attrs: dict[str, Any], objectives: list[str]) -> None:
        put(next(iter(attrs)), "x")
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "_write_attrs", interrupted)
    from acpsearch.service.spec import spec_from_json

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
    from acpsearch.service import study as st
    from acpsearch.service.spec import spec_from_json
    from acpsearch.service.storage import open_storage

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
    from acpsearch.service import study as st
    from acpsearch.service.storage import open_storage

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
        with pytest.raises(
            _StorageError,
            match=re.escape(f"study '{parent}.finetune': exists but is not the fine-tuning study of '{parent}'"),
        ):
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

    from acpsearch.service import storage as storage_mod
    from acpsearch.service.storage import redact

    path, copy_url = _copy_of_stored(stored, tmp_path)
    real_open = storage_mod.open_storage
    monkeypatch.setattr(storage_mod, "open_storage", lambda url=None: real_open(copy_url))
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: None)
    url = "postgresql://admin:S3cret/PW@db.example:5432/acp"
    assert redact(url) == "postgresql://admin:***@db.example:5432/acp"
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPEC), "name": "pw"}))
    capsys.readouterr()
    for argv in (
        ["status"],
        ["status", "--json"],
        ["show", STORED, "--json"],
        ["submit", str(good), "--json"],
        ["dashboard", "--artifacts", str(tmp_path / "art")],
    ):
        assert run([*argv, "--storage", url]) == 0, argv
        res = capsys.readouterr()
        assert "S3cret" not in res.out + res.err, argv
        assert "postgresql://admin:***@db.example:5432/acp" in res.out + res.err, argv


def test_redact():
    from acpsearch.service.storage import redact

    assert redact("postgresql://admin:S3cretPW@127.0.0.1:1/db") == "postgresql://admin:***@127.0.0.1:1/db"
    assert redact("mysql+pymysql://u:p%40ss@h/db?charset=utf8") == "mysql+pymysql://u:***@h/db?charset=utf8"
    assert redact("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    assert redact("postgresql://u:p@ss/w@h/db") == "postgresql://u:***@h/db"  # unescaped '@' and '/' in it
    for unchanged in ("postgresql://nobody@127.0.0.1:1/x", "sqlite:///a/b.db", "journal:///x/y.log", "sqlite://", ""):
        assert redact(unchanged) == unchanged


def test_sqlite_url_forms():
    """In-memory URLs are recognised (refused by the CLI), and the read-only URI form names its file
    (for the directory checks, the foreign-database check and the artifact directory)."""
    from acpsearch.service.storage import _sqlite_path, is_memory

    for memory in (
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+pysqlite://",
        "sqlite:///file::memory:?cache=shared&uri=true",
        "sqlite:///file:x?mode=memory&uri=true",
    ):
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
    from acpsearch.service import cluster, runner

    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    ctx = SimpleNamespace(tmp=tmp_path, monkeypatch=monkeypatch, stored_url=stored.url, checks=[], cleanups=[])
    url = foreign_companion(ctx)["hijack_url"]
    with pytest.raises(runner.StudyBlocked, match=re.escape(f"study '{STORED}.finetune': exists but is not")) as exc:
        runner.run_study(url, STORED)
    assert isinstance(exc.value, runner.StudyBusy)
    for check in ctx.checks:
        check()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_racing_submits_create_one_study(kind, tmp_path):
    """Four submits of one name at once (threads; the one-transaction submit must keep the race
    safe): exactly one wins, the others are the one-line "already exists", and the winner's study
    has all its attributes."""
    import threading

    from acpsearch.service import study as st
    from acpsearch.service.spec import spec_from_json
    from acpsearch.service.storage import open_storage

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


def test_worker_skips_a_study_whose_companion_name_is_taken(stored, tmp_path):
    """A foreign study named NAME.finetune blocks study NAME: `acpsearch worker` reports it as
    blocked, decides so before starting Ray, and leaves the storage as it was."""
    import shutil

    path = tmp_path / "blocked.db"
    shutil.copyfile(_sqlite_file(stored.url), path)
    url = f"sqlite:///{path}"
    storage = optuna.storages.RDBStorage(url)
    try:
        optuna.create_study(storage=storage, study_name=STORED + ".finetune")  # someone else's study
    finally:
        storage.remove_session()
        storage.engine.dispose()
    before = snapshot(url)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "acpsearch"),
            "worker",
            "--storage",
            url,
            "--json",
            "--artifacts",
            str(tmp_path / "art"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout)
    assert [(r["name"], r["state"]) for r in rep["ran"]] == [(STORED, "blocked")], rep
    assert f"{STORED}.finetune" in rep["ran"][0]["error"]
    assert rep["ray_inits"] == 0  # refused before Ray was started
    assert snapshot(url) == before
