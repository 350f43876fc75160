"""Export a (pruned) hash network for deployment, where acpsearch is not installed.

Formats (`FORMATS`):

* ``acpsearch``   - acpsearch's own checkpoint (weights-only state dict + pruning record); loading it
  needs acpsearch (``acpsearch.load_model``).
* ``torchscript`` - ``torch.jit.script`` (``torch.jit.trace`` on the example input when scripting
  fails; the report says which). Loads with ``torch.jit.load`` alone.
* ``onnx``        - ``torch.onnx.export`` with a dynamic batch axis (the dynamo exporter, opset 18;
  the legacy TorchScript-based exporter, opset 17, when dynamo cannot capture the model). Runs in
  onnxruntime.
* ``pt2``         - ``torch.export.export`` + ``torch.export.save`` (dynamic batch axis); loads with
  ``torch.export.load(...).module()``.

Every non-acpsearch file carries the same JSON document (`export_metadata`): code length, input
shape, preprocessing, source study / trial / checkpoint, acpsearch and torch versions. It is the
extra file ``acpsearch.json`` of a TorchScript or pt2 archive and the ``metadata_props`` entry
``acpsearch.json`` of an ONNX model.

After writing, the file is loaded back in its own runtime and run on two batches (the example input
and a seeded N(0, 1) batch of 8); the outputs must agree with the eager PyTorch model within `atol`
(max abs diff, default 1e-4) and give identical codes (signs). A failure is one SpecError line
naming --format, and nothing is left at the target: the file is written through
acpsearch.outputs.atomic_out (temporary file + rename).

The modules: `formats` (the formats, the metadata document, shared helpers), `runtime` (loading an
exported file in its runtime, `verify`), `writers` (one writer per format, `export_model`), `bench`
(latency).
"""

from acpsearch.export.bench import bench_file, benchmark
from acpsearch.export.formats import (
    DEFAULT_ATOL,
    FORMATS,
    META_KEY,
    check_format,
    export_metadata,
    metadata_from_checkpoint,
    verification_inputs,
)
from acpsearch.export.runtime import compare, detect_format, load_exported, verify
from acpsearch.export.writers import export_model

__all__ = [
    "DEFAULT_ATOL",
    "FORMATS",
    "META_KEY",
    "bench_file",
    "benchmark",
    "check_format",
    "compare",
    "detect_format",
    "export_metadata",
    "export_model",
    "load_exported",
    "metadata_from_checkpoint",
    "verification_inputs",
    "verify",
]
