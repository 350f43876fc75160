"""What every `acpsearch` command shares: the typer `app` the commands register on, the line
printed when a command is interrupted, the stderr console and JSON output, and the storage / spec
helpers of the study commands.

Tables by default, `--json` prints one JSON document on stdout (progress goes to stderr).
Bad input (spec, model, data, budget, storage URL, checkpoint, Ray address) is an AcpError:
one line on stderr, exit 2, and the stored studies are untouched.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from acpsearch.errors import SpecError, StorageError
from acpsearch.service import keys
from acpsearch.service.storage import redact

app = typer.Typer(
    name="acpsearch",
    help="Automatic channel pruning of deep hash networks (ACP-SSE) as a search service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

INTERRUPTED = "interrupted"
_interrupt_line = [INTERRUPTED]


def on_interrupt(line: str) -> None:
    """The line `run` prints on stderr if this command is interrupted (Ctrl-C), e.g. how to resume."""
    _interrupt_line[0] = line


def interrupt_line() -> str:
    """The line to print on stderr when the running command is interrupted."""
    return _interrupt_line[0]


def reset_interrupt() -> None:
    """Back to the plain "interrupted" line (at the start of each command)."""
    _interrupt_line[0] = INTERRUPTED


STORAGE_HELP = (
    "Optuna storage URL (default $ACPSEARCH_STORAGE or sqlite:///acpsearch.db); journal:///file.log for a journal file"
)
DEVICE_HELP = (
    "where the base network is trained: auto, cpu, cuda, cuda:N (default: the spec's train.device); "
    "Ray workers use finetune/search.resources"
)
ADDRESS_HELP = "Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray with --workers CPUs)"
ARTIFACTS_HELP = "artifact directory (default: next to the storage file, or $ACPSEARCH_ARTIFACTS)"

err = Console(stderr=True, highlight=False)


def out(obj: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def console() -> Console:
    return Console(highlight=False)


def _storage(url: str | None) -> tuple[str, Any]:
    """The storage of a command: (URL in force, opened storage). Refused before anything is
    created: an empty --storage (it used to mean the default file in the working directory) and
    an in-memory SQLite database (a study stored there vanishes when the command exits)."""
    import warnings

    import optuna

    from acpsearch.service.storage import is_memory, open_storage, resolve_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI prints its own progress
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    if url is not None and not url.strip():
        raise SpecError("--storage: empty; leave it out for the default ($ACPSEARCH_STORAGE or sqlite:///acpsearch.db)")
    url = resolve_url(url)
    if is_memory(url):
        raise StorageError(
            f"storage {redact(url)!r}: in-memory database, a study stored there vanishes when this "
            "command exits; give a file (sqlite:///studies.db) or a server database"
        )
    return url, open_storage(url)


def _is_spec_path(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def _submit(
    spec_path: str, storage: Any, name: str | None, check: bool = True, reuse: bool = False, allow_factories: Any = None
) -> str:
    """Validate the spec and its inputs, then create the study. With `reuse`, a study of the same
    name and the same spec is taken as is (so `run SPEC.yaml` resumes). The spec's own factory is
    the user's code; a factory its model.checkpoint names needs `allow_factories`."""
    from acpsearch.service import study as st
    from acpsearch.service.inputs import preflight
    from acpsearch.service.spec import check_name, load_spec

    if name is not None:  # '' is refused, not taken as "no --name"
        check_name(name)
    spec = load_spec(spec_path)
    final_name = name or spec.name
    if final_name:  # before the (slow) preflight: a name that can never be stored fails at once
        st.check_name(final_name, "--name" if name else "spec: name")
    if reuse and final_name:
        try:
            existing = st.load_search_study(storage, final_name)
        except StorageError:
            existing = None
        if existing is not None:
            stored = existing.user_attrs.get(keys.SPEC) or {}
            mine = spec.model_copy(update={"name": final_name}).to_dict()
            if stored != mine:
                raise SpecError(f"name: study {final_name!r} exists with a different spec (use --name for a new study)")
            return final_name
    if check:
        preflight(spec, allow_factories=allow_factories)
    from acpsearch.service.storage import url_of, writes

    with writes(url_of(storage)):  # a read-only or full storage is one line; st.submit leaves no half study
        return st.submit(storage, spec, name)


def print_metrics(title: str, rows: dict[str, Any]) -> None:
    """A two-column table (metric, value) on stdout; floats to 4 decimals."""
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        if isinstance(v, float):
            v = "nan" if math.isnan(v) else f"{v:.4f}"
        table.add_row(k, str(v))
    Console().print(table)
