"""The `acpsearch` command. Commands live in acpsearch/commands/*.py and register on `app`
(acpsearch/commands/common.py); importing this module registers all of them.

Exit status: 0 success, 2 bad input (any AcpError, one line on stderr), 1 internal error,
130 interrupted (Ctrl-C: one line "interrupted" on stderr, or the command's own line, see `on_interrupt`)."""

from __future__ import annotations

import sys
import types

import typer

# Importing a command module registers its commands on `app`, in this order in `acpsearch --help`.
# isort: off
from acpsearch.commands import hashing  # noqa: F401  train, evaluate
from acpsearch.commands import pruning  # noqa: F401  inspect, prune
from acpsearch.commands import submit_run  # noqa: F401  submit, run, worker
from acpsearch.commands import inspect_studies  # noqa: F401  status, show
from acpsearch.commands import export  # noqa: F401  export, bench
from acpsearch.commands import dashboard  # noqa: F401  dashboard
from acpsearch.commands import demo  # noqa: F401  demo
from acpsearch.commands import shorten  # noqa: F401  shorten
from acpsearch.commands import baselines  # noqa: F401  baselines

# isort: on
from acpsearch.commands.common import app, interrupt_line, reset_interrupt

__all__ = ["app", "main", "run"]


def _interrupted() -> int:
    print(interrupt_line(), file=sys.stderr)
    return 130


def main() -> None:
    """Console entry point."""
    sys.exit(run(sys.argv[1:]))


def _wants_json(argv: list[str]) -> bool:
    """`--json` among the options (before a `--` that ends them)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _fail(line: str, code: int, json_out: bool) -> int:
    """A refused command: the one `error: ...` line on stderr, and under --json also one JSON
    object {"error": ..., "exit": code} on stdout (a script reading stdout gets JSON either way)."""
    print(f"error: {line}", file=sys.stderr)
    if json_out:
        import json

        sys.stdout.write(json.dumps({"error": line, "exit": code}) + "\n")
        sys.stdout.flush()
    return code


def run(argv: list[str]) -> int:
    """Run the CLI in-process and return its exit status; AcpError -> 2 with a one-line reason
    (with --json also one JSON object {"error", "exit"} on stdout)."""
    from acpsearch.errors import AcpError

    json_out = _wants_json(list(argv))
    reset_interrupt()
    try:
        # Non-standalone typer *returns* the exit status of a typer.Exit, and turns Ctrl-C
        # (KeyboardInterrupt) into Exit(130): an int returned here is the exit status.
        rv = app(args=argv, standalone_mode=False)
    except AcpError as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2, json_out)
    except typer.Exit as exc:
        return _interrupted() if exc.exit_code == 130 else exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:  # click usage errors carry their own exit code (2)
        import click

        _tclick: types.ModuleType
        try:  # typer >= 0.29 vendors its own click: its usage errors are not click's classes
            from typer._click import exceptions as _tclick
        except ImportError:
            _tclick = click.exceptions
        if isinstance(exc, (click.exceptions.ClickException, _tclick.ClickException)):
            return _fail(exc.format_message(), exc.exit_code, json_out)
        # typer 0.29 has Abort in typer.exceptions, not in its vendored click: look it up, so that an
        # internal error is re-raised as itself and not masked by an AttributeError raised here
        aborts = tuple(
            c
            for c in (
                getattr(click.exceptions, "Abort", None),
                getattr(_tclick, "Abort", None),
                getattr(typer, "Abort", None),
            )
            if isinstance(c, type)
        )
        if isinstance(exc, aborts):
            return 1
        raise
    if isinstance(rv, int) and not isinstance(rv, bool):
        return _interrupted() if rv == 130 else rv
    return 0


if __name__ == "__main__":
    main()
