"""Crash reports for the processes that talk to Ray (`run`, `worker`, `demo`).

Ray runs C++ threads inside the driver process. When one of them crashes (a SIGSEGV in
`_raylet.so`), the process dies at once: Python prints nothing, and a user sees only an exit
status of -11. `arm(directory)` makes such a death leave a readable trace. Python's faulthandler
catches the fatal signals (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL) and writes the Python stack
of every thread. The trace goes to stderr and to `crash-<host>-<pid>.log` in `directory` (the
study artifacts folder).

faulthandler writes to one file descriptor, from inside the signal handler, where nothing else is
safe to do. To reach two destinations, that descriptor is a pipe to a small helper process, which
outlives the crash. When the pipe closes with data in it, the helper copies the data to stderr and
appends it to the log. When the pipe closes empty (a normal exit, or SIGKILL of the whole process
group), it writes nothing, so no empty log is left behind. The helper ignores SIGINT: a Ctrl-C
meant for the runner must not print a traceback of the helper.

`armed(directory)` is the context manager the commands use: it arms on entry and, on a normal
exit, lets the helper go and puts faulthandler back as it was. `rearm()` installs the handler again
after `ray.init`, so faulthandler stays the outermost handler even if a native library installed
its own after `arm`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# The helper: read the pipe to EOF; if anything came, write it to stderr and append it to the log.
# It runs with -S -I (no site, isolated): it starts in ~20 ms and imports nothing of ours.
_HELPER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
data = sys.stdin.buffer.read()
if data:
    head = b"acpsearch: fatal signal in process " + sys.argv[2].encode() + b"; thread stacks follow"
    head += b" (also in " + sys.argv[1].encode() + b")\n"
    try:
        sys.stderr.buffer.write(head + data)
        sys.stderr.buffer.flush()
    except OSError:
        pass
    with open(sys.argv[1], "ab") as fh:
        fh.write(head + data)
"""

_helper: subprocess.Popen[bytes] | None = None
_log: Path | None = None


def log_path(directory: str | Path, pid: int | None = None) -> Path:
    """Where the crash log of process `pid` (default: this one) goes in `directory`."""
    return Path(directory) / f"crash-{socket.gethostname()}-{pid or os.getpid()}.log"


def arm(directory: str | Path) -> Path:
    """Write every thread's stack to stderr and to `log_path(directory)` on a fatal signal.

    Returns the log's path. The file exists only after a crash."""
    global _helper, _log
    path = log_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _helper is not None and _helper.poll() is None and _log == path:
        rearm()
        return path
    disarm()
    _helper = subprocess.Popen(
        [sys.executable, "-S", "-I", "-c", _HELPER, str(path), str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        close_fds=True,
    )
    _log = path
    rearm()
    return path


def _pipe() -> IO[bytes] | None:
    return _helper.stdin if _helper is not None and _helper.poll() is None else None


def rearm() -> None:
    """Install the handler again (after a native library may have installed its own). An enabled
    faulthandler's `enable()` only changes its file and leaves the signal handlers as they are, so
    it is disabled first: then `enable()` installs them on top, chaining to the native one."""
    pipe = _pipe()
    if pipe is not None:
        faulthandler.disable()
        faulthandler.enable(file=pipe, all_threads=True)


@contextlib.contextmanager
def armed(directory: str | Path) -> Iterator[Path]:
    """`arm(directory)` for the duration of a command; faulthandler is restored afterwards."""
    was_enabled = faulthandler.is_enabled()
    path = arm(directory)
    try:
        yield path
    finally:
        disarm(to_stderr=was_enabled)


def disarm(to_stderr: bool = True) -> None:
    """Stop reporting to the log: the helper exits without writing; faulthandler then writes to
    stderr only (`to_stderr`) or is off."""
    global _helper, _log
    if _helper is None:
        return
    faulthandler.disable()
    if to_stderr:
        for stream in (sys.stderr, sys.__stderr__):  # sys.stderr may be a capture without a file descriptor
            if stream is None:  # sys.__stderr__ of a process started without one
                continue
            try:
                faulthandler.enable(file=stream, all_threads=True)
                break
            except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both OSError and ValueError
                continue
    try:
        if _helper.stdin is not None:
            _helper.stdin.close()
        _helper.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        _helper.kill()
    _helper, _log = None, None
