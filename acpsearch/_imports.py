"""Optional extras: the one place where a missing package becomes a user error.

acpsearch's hard dependencies (pyproject ``dependencies``) are imported plainly. A package of an
extra (``pip install 'acpsearch[export]'``: onnx, onnxruntime, onnxscript; ``acpsearch[postgres]``:
psycopg2) is imported inside `try_import`, which turns its ImportError into one SpecError line
naming the package and the extra that installs it::

    with try_import("export", "--format onnx"):
        import onnx
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from acpsearch.errors import SpecError


@contextmanager
def try_import(extra: str, where: str) -> Iterator[None]:
    """Run the imports in the block; a missing package is `SpecError("WHERE: needs the package NAME
    (pip install 'acpsearch[EXTRA]')")`."""
    try:
        yield
    except ImportError as exc:
        name = exc.name or str(exc)
        raise SpecError(f"{where}: needs the package {name} (pip install 'acpsearch[{extra}]')") from None
