"""Files a command writes where the user says (`--out`): checked first, written atomically.

`check_out` refuses, as one line naming the flag, a target that is a directory or not a regular
file, and a parent that is not a directory or not writable: before any work is done.
`atomic_out` writes to a temporary file in the target's directory and renames it onto the target
(`os.replace`), so the target is either the old file or the complete new one; on any failure the
temporary file is removed, and a write error (OSError such as EFBIG or ENOSPC, or the RuntimeError
torch.save raises for them) is one line naming the flag (exit 2).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acpsearch.errors import AcpError, SpecError


def _why(exc: BaseException) -> str:
    """The reason in a few words: the OSError behind it when there is one (torch.save raises a
    RuntimeError whose context is the OSError of the failed write), else the exception's first line."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def check_out(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """`path` as a Path if a file can be written there, else SpecError naming `flag`."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{flag}: {str(path)!r} is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise SpecError(f"{flag}: {str(path)!r} exists and is not a regular file")
    parent = path.parent
    # the nearest existing ancestor must be a writable directory (missing ones are created at write time)
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SpecError(f"{flag}: {str(probe)!r} is not a directory, cannot write {str(path)!r}")
    # a real file, not os.access: root passes access checks on /proc, read-only mounts, ...
    test = probe / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.probe"
    try:
        os.close(os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise SpecError(
            f"{flag}: cannot write {str(path)!r}: cannot create a file in {str(probe)!r} ({_why(exc)})"
        ) from None
    try:
        test.unlink()
    except OSError:
        pass
    return path


@contextmanager
def atomic_out(path: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block succeeds it becomes `path` (os.replace).

    On failure the temporary file is removed and `path` is left as it was; OSError / RuntimeError
    raised while writing become one SpecError line naming `flag`."""
    path = check_out(path, flag)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # created here (mode 0o666 less the umask, as a plain open would), so a writer may reopen it
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, AcpError):
            raise SpecError(f"{flag}: cannot write {str(path)!r} ({_why(exc)})") from None
        raise
