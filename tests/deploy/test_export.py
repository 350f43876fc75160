"""`acpsearch export --format torchscript|onnx|pt2` (and `prune --format`, `bench`): files that load
WITHOUT acpsearch, carry their metadata, give the same codes as `load_model`, and are verified (a
failed verification leaves nothing at --out).

The study here is a stored acpsearch study whose winner is a pruned tiny digits ResNet-20 (trained
3 epochs, pruned by `acpsearch prune`): `export` reads only the winner's checkpoint, so this is the
same code path as a finished study without running Ray. `test_export_a_finished_study` runs it on
the real finished study too."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import train_tiny_base

from acpsearch.cli import run

FORMATS = ("torchscript", "onnx", "pt2")
PREPROCESS = {"mean": [0.5], "std": [0.25], "input_shape": [1, 8, 8]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _study(url: str, name: str, winner: Path) -> None:
    """A stored acpsearch study (kind acpsearch-search) whose winner is `winner`."""
    import optuna

    from acpsearch.service.study import KIND

    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        study.set_user_attr("kind", KIND)
        study.set_user_attr("state", "done")
        study.set_user_attr("winner", {"path": str(winner), "finetune_trial": 3})
    finally:
        storage.remove_session()
        storage.engine.dispose()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """base.pt (trained), pruned.pt (`acpsearch prune --keep 0.5`, with meta.preprocess added as the
    data engineer's checkpoints carry it), and a storage whose study 'exp' has pruned.pt as winner."""
    root = tmp_path_factory.mktemp("export")
    base = train_tiny_base(root / "base.pt")
    pruned = root / "pruned.pt"
    assert run(["prune", str(base), "--keep", "0.5", "--out", str(pruned)]) == 0
    ckpt = torch.load(pruned, weights_only=True)
    assert ckpt["pruning"], "prune wrote no pruning record"
    ckpt["meta"]["preprocess"] = PREPROCESS
    torch.save(ckpt, pruned)
    url = f"sqlite:///{root / 'studies.db'}"
    _study(url, "exp", pruned)
    return SimpleNamespace(root=root, base=base, pruned=pruned, url=url)


def _json_run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any]:
    capsys.readouterr()
    code = run(argv + ["--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


@pytest.fixture(scope="module")
def exported(env: SimpleNamespace) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every format exported once from study 'exp' (module scope: the exporters take seconds)."""
    import io
    from contextlib import redirect_stdout

    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for fmt in ("acpsearch", *FORMATS):
        path = env.root / f"model.{fmt}"
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = run(["export", "exp", "--storage", env.url, "--format", fmt, "--out", str(path), "--json"])
        assert code == 0, fmt
        out[fmt] = (path, json.loads(buf.getvalue()))
    return out


def test_every_format_written_verified_and_described(exported, env):
    import onnx

    from acpsearch.export import load_exported

    for fmt in ("acpsearch", *FORMATS):
        path, res = exported[fmt]
        assert path.is_file() and res["format"] == fmt and res["out"] == str(path)
    assert exported["acpsearch"][0].read_bytes() == env.pruned.read_bytes()  # today's format: the checkpoint itself
    for fmt in FORMATS:
        path, res = exported[fmt]
        v = res["verification"]
        assert v["max_abs_diff"] <= 1e-4 and v["code_bits_differing"] == 0 and v["code_bits_compared"] == 16 * 9
        # the metadata stored IN the file, read back by each format's own reader
        if fmt == "onnx":
            props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
            meta = json.loads(props["acpsearch.json"])
            assert onnx.load(str(path)).opset_import[0].version >= 17
        elif fmt == "torchscript":
            extra = {"acpsearch.json": ""}
            torch.jit.load(str(path), _extra_files=extra)
            meta = json.loads(extra["acpsearch.json"])
        else:
            extra = {"acpsearch.json": ""}
            torch.export.load(str(path), extra_files=extra)
            meta = json.loads(extra["acpsearch.json"])
        assert meta == res["metadata"] == load_exported(path)[1]
        assert meta["format"] == fmt and meta["code_length"] == 16 and meta["input_shape"] == [1, 1, 8, 8]
        assert meta["preprocess"] == PREPROCESS and meta["dataset"] == "digits" and meta["pruned"] is True
        assert meta["source"] == {"study": "exp", "finetune_trial": 3, "checkpoint": str(env.pruned)}
        assert meta["acpsearch_version"] and meta["exporter"]
    assert exported["torchscript"][1]["exporter"] == "torch.jit.script"


# Runs with `python -I` (no PYTHONPATH, no user site, no script directory) and drops the editable
# install's finder of this checkout, so acpsearch cannot be imported: a deployment without it.
NO_ACPSEARCH = textwrap.dedent("""
    import importlib.util, json, sys
    editable = lambda f: (getattr(f, "__module__", None) or type(f).__module__ or "").startswith("__editable__")
    sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
    sys.path[:] = [p for p in sys.path if not (p and __import__("os").path.isdir(p + "/acpsearch"))]
    sys.path_importer_cache.clear()
    try:
        import acpsearch
    except ImportError:
        pass
    else:
        raise SystemExit("acpsearch is importable: " + acpsearch.__file__)
    assert importlib.util.find_spec("acpsearch") is None
    import numpy as np, torch
    ts, ox, p2, xs, out = sys.argv[1:6]
    x = np.load(xs)
    m = torch.jit.load(ts)
    with torch.no_grad():
        y_ts = m(torch.from_numpy(x)).numpy()
    import onnxruntime as ort
    sess = ort.InferenceSession(ox, providers=["CPUExecutionProvider"])
    y_ox = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    meta_ox = json.loads(sess.get_modelmeta().custom_metadata_map["acpsearch.json"])
    extra = {"acpsearch.json": ""}
    ep = torch.export.load(p2, extra_files=extra)
    with torch.no_grad():
        y_p2 = ep.module()(torch.from_numpy(x)).numpy()
    np.savez(out, torchscript=y_ts, onnx=y_ox, pt2=y_p2)
    print(json.dumps({"onnx": meta_ox["code_length"], "pt2": json.loads(extra["acpsearch.json"])["code_length"],
                      "modules": sorted(m for m in sys.modules if m.split(".")[0] == "acpsearch")}))
""")


def test_exported_files_run_without_acpsearch_and_give_load_models_codes(exported, env, tmp_path):
    import numpy as np

    import acpsearch
    from acpsearch.hashing import load_dataset

    # real digits images (the first 40, normalised as the network was trained on them) and noise
    imgs = load_dataset("digits").images[:40].float()
    assert imgs.shape == (40, 1, 8, 8)
    noise = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    x = torch.cat([imgs, noise]).numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            NO_ACPSEARCH,
            str(exported["torchscript"][0]),
            str(exported["onnx"][0]),
            str(exported["pt2"][0]),
            str(tmp_path / "x.npy"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"onnx": 16, "pt2": 16, "modules": []}
    ys = np.load(out)
    with torch.no_grad():
        ref = acpsearch.load_model(env.pruned)(torch.from_numpy(x)).numpy()
    assert ref.shape == (64, 16)
    for fmt in FORMATS:
        assert ys[fmt].shape == ref.shape, fmt
        assert np.abs(ys[fmt] - ref).max() <= 1e-4, fmt
        assert (np.sign(ys[fmt]) == np.sign(ref)).all(), f"{fmt}: codes differ from load_model's"


def test_bad_format_is_one_line_naming_the_flag(env, tmp_path, capsys):
    for argv in (
        ["export", "exp", "--storage", env.url, "--format", "tflite", "--out", str(tmp_path / "m.tflite")],
        ["prune", str(env.base), "--keep", "0.5", "--format", "onnx2", "--out", str(tmp_path / "m.tflite")],
    ):
        capsys.readouterr()
        assert run(argv) == 2
        err = capsys.readouterr().err
        bad = argv[argv.index("--format") + 1]
        assert err == f"error: --format: must be one of acpsearch, torchscript, onnx, pt2, got {bad!r}\n"
    assert list(tmp_path.iterdir()) == []


BRANCHY = textwrap.dedent('''
    import torch
    from torch import nn


    class Branchy(nn.Module):
        """A hash net whose forward takes a data-dependent branch: torch.export cannot capture it, so
        the ONNX export falls back to the legacy tracer, which records only the branch the example
        input took (all zeros: amax 0 -> the negated code)."""

        def __init__(self, bits: int = 16) -> None:
            super().__init__()
            self.fc = nn.Linear(64, bits)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x.flatten(1))
            if x.amax() > 1.0:
                return h
            return -h


    def make(bits: int = 16) -> nn.Module:
        torch.manual_seed(0)
        return Branchy(bits)
''')


@pytest.fixture
def branchy(env, tmp_path, monkeypatch) -> SimpleNamespace:
    from acpsearch.checkpoint import save_checkpoint

    (tmp_path / "branchy_net.py").write_text(BRANCHY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import branchy_net

    ckpt = save_checkpoint(
        tmp_path / "branchy.pt",
        branchy_net.make(),
        {"factory": "branchy_net:make", "kwargs": {}},
        [1, 1, 8, 8],
        meta={"dataset": "digits"},
    )
    url = f"sqlite:///{tmp_path / 'b.db'}"
    _study(url, "branchy", ckpt)
    return SimpleNamespace(url=url, ckpt=ckpt, dir=tmp_path)


def test_failed_verification_leaves_nothing_at_out(branchy, capsys):
    """A real failure, no mock: the ONNX file of the branchy net returns -h on the verification batch
    of 8 N(0, 1) images (where PyTorch returns h: its amax is > 1), so every code bit differs. The
    export must exit 2 with one line naming --format, leave nothing at --out, and no temporary file.
    TorchScript scripts the branch (verified, written); pt2 cannot capture it (one line, nothing)."""
    out_dir = branchy.dir / "out"
    out_dir.mkdir()
    base = ["export", "branchy", "--storage", branchy.url, "--allow-factory", "branchy_net"]
    capsys.readouterr()
    assert run(base + ["--format", "onnx", "--out", str(out_dir / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format onnx: verification failed: outputs differ from PyTorch by up to ")
    # the example batch (2 zeros: both take -h) agrees, the 8 N(0, 1) images (8 x 16 bits) all differ
    assert ", 128 of 144 code bits differ; nothing written\n" in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    assert run(base + ["--format", "pt2", "--out", str(out_dir / "m.pt2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format pt2: torch.export cannot capture the model (") and err.count("\n") == 1
    assert list(out_dir.iterdir()) == []
    # an old file at --out stays as it was when the new export fails
    (out_dir / "m.onnx").write_bytes(b"old")
    assert run(base + ["--format", "onnx", "--out", str(out_dir / "m.onnx")]) == 2
    assert (out_dir / "m.onnx").read_bytes() == b"old" and len(list(out_dir.iterdir())) == 1
    code, res = _json_run(capsys, base + ["--format", "torchscript", "--out", str(out_dir / "m.ts")])
    assert code == 0 and res["exporter"] == "torch.jit.script" and res["verification"]["code_bits_differing"] == 0


def test_library_export_model_and_its_tolerance(env, tmp_path):
    """acpsearch.export_model on a loaded model; the same ONNX file fails a tolerance of 0 only if
    onnxruntime's convolutions are not bit-identical to PyTorch's, so that check is on `verify`."""
    import acpsearch
    from acpsearch.errors import SpecError
    from acpsearch.export import export_model, load_exported, verify

    assert acpsearch.export_model is export_model
    model = acpsearch.load_model(env.pruned)
    rep = acpsearch.export_model(
        model, tmp_path / "m.onnx", "onnx", torch.zeros(1, 1, 8, 8), {"source": {"note": "library"}}
    )
    assert rep["verification"]["max_abs_diff"] <= 1e-4 and rep["metadata"]["source"] == {"note": "library"}
    assert "preprocess" not in rep["metadata"]  # only what the caller gives (or the checkpoint has)
    assert rep["exporter"] == "torch.onnx.export(dynamo=True, opset 18)"
    legacy = export_model(model, tmp_path / "l.onnx", "onnx", torch.zeros(1, 1, 8, 8), onnx_exporter="legacy")
    assert legacy["exporter"] == "torch.onnx.export(dynamo=False, opset 17)"
    assert legacy["verification"]["max_abs_diff"] <= 1e-4 and legacy["verification"]["code_bits_differing"] == 0
    run_onnx = load_exported(tmp_path / "m.onnx")[0]
    flipped = lambda x: -run_onnx(x)  # noqa: E731 - a runtime returning the opposite codes
    with pytest.raises(SpecError, match=r"--format onnx: verification failed: .* 144 of 144 code bits differ"):
        verify(flipped, model, torch.zeros(1, 1, 8, 8), "onnx")
    with pytest.raises(SpecError, match=r"^--format: must be one of acpsearch, torchscript, onnx, pt2, got 'tf'$"):
        export_model(model, tmp_path / "x", "tf", torch.zeros(1, 1, 8, 8))
    assert not (tmp_path / "x").exists()


def test_benchmark_in_the_files_own_runtime(exported, env, capsys):
    path = env.root / "bench.onnx"
    code, res = _json_run(
        capsys,
        [
            "export",
            "exp",
            "--storage",
            env.url,
            "--format",
            "onnx",
            "--out",
            str(path),
            "--benchmark",
            "--rounds",
            "7",
            "--batch",
            "4",
        ],
    )
    assert code == 0, res
    b = res["benchmark"]
    assert b["format"] == "onnx" and b["batch"] == 4 and b["threads"] == 1 and b["rounds"] == 7
    assert set(b["latency"]) == {"eager", "onnx"} and all(
        v["median_ms"] > 0 and v["rounds"] == 7 for v in b["latency"].values()
    )
    code, res = _json_run(capsys, ["bench", str(exported["torchscript"][0]), "--rounds", "5"])
    assert code == 0 and res["format"] == "torchscript" and res["eager_checkpoint"] == str(env.pruned)
    assert set(res["latency"]) == {"eager", "torchscript"}
    code, res = _json_run(capsys, ["bench", str(exported["pt2"][0]), "--checkpoint", str(env.pruned), "--rounds", "3"])
    assert code == 0 and set(res["latency"]) == {"eager", "pt2"}
    capsys.readouterr()
    assert run(["bench", str(env.root / "nosuch.onnx")]) == 2
    assert capsys.readouterr().err == f"error: FILE: {str(env.root / 'nosuch.onnx')!r} not found\n"


def test_prune_format_writes_a_deployable_file(env, tmp_path, capsys):
    code, res = _json_run(
        capsys, ["prune", str(env.base), "--keep", "0.5", "--format", "torchscript", "--out", str(tmp_path / "p.ts")]
    )
    assert code == 0 and res["format"] == "torchscript" and res["verification"]["max_abs_diff"] <= 1e-4
    extra = {"acpsearch.json": ""}
    m = torch.jit.load(str(tmp_path / "p.ts"), _extra_files=extra)
    meta = json.loads(extra["acpsearch.json"])
    assert meta["source"]["checkpoint"] == str(env.base) and meta["pruned"] is True
    assert meta["cost"]["flops"] == res["after"]["flops"]
    with torch.no_grad():
        assert m(torch.zeros(3, 1, 8, 8)).shape == (3, 16)


@pytest.mark.slow
def test_export_a_finished_study(finished_studies, tmp_path, capsys):
    """The winner of a study run end to end (Ray workers, fine-tuning) exports to ONNX, verified."""
    import acpsearch

    fs = finished_studies
    out = tmp_path / "winner.onnx"
    code, res = _json_run(capsys, ["export", "tiny-a", "--storage", fs["url"], "--format", "onnx", "--out", str(out)])
    assert code == 0 and out.is_file() and res["verification"]["max_abs_diff"] <= 1e-4
    assert res["metadata"]["source"]["study"] == "tiny-a" and res["metadata"]["code_length"] == 16
    from acpsearch.export import load_exported

    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = acpsearch.load_model(res["metadata"]["source"]["checkpoint"])(x)
    assert torch.equal(torch.sign(load_exported(out)[0](x)), torch.sign(ref))


def test_write_failure_is_one_line_naming_out_and_leaves_nothing(exported, env, tmp_path):
    """A file-size limit (EFBIG, as on a full disk) while each format is written, in a real process:
    torch's own archive writer would abort the process (std::terminate) on a failed write, so archives
    are built in memory first; the failure is one line naming --out, exit 2, nothing left behind."""
    import os
    import re
    import resource
    import signal

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))  # the files are ~360-530 KB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG

    root = Path(__file__).resolve().parents[2]
    env_vars = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for fmt in FORMATS:
        assert exported[fmt][0].stat().st_size > 200 * 1024
        target = tmp_path / f"m.{fmt}"
        res = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from acpsearch.cli import main; main()",
                "export",
                "exp",
                "--storage",
                env.url,
                "--format",
                fmt,
                "--out",
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env_vars,
            cwd=tmp_path,
            preexec_fn=limit,
        )
        assert res.returncode == 2, res.stderr[-2000:]
        assert re.fullmatch(re.escape(f"error: --out: cannot write '{target}' (File too large)") + "\n", res.stderr)
        assert list(tmp_path.iterdir()) == []
