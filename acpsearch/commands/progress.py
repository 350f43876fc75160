"""Progress of a running study on stderr: rich progress bars on a terminal, plain flushed lines
otherwise (nohup, CI, a cluster's log)."""

from __future__ import annotations

import sys
import time
from typing import Any

from acpsearch.commands.common import err


def _dur(seconds: float) -> str:
    """6m10s, 45s, 1h02m: durations in progress lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


_UNITS = {
    "search": "candidates",
    "rerank": "candidates",
    "finetune": "finalists",
    "base": "epochs",
    "encoder": "epochs",
}


class PlainReporter:
    """Progress as plain lines, for a stderr that is not a terminal (nohup, CI, a cluster's log):
    the start of each phase, progress every ~10% or `every_s` seconds with elapsed time and ETA,
    e.g. ``[  123s] search: 40/300 candidates, ETA 6m10s``, and each phase's end with its duration.
    Lines are flushed at once, so a log file shows them as they happen."""

    def __init__(
        self, stream: Any = None, every_s: float = 30.0, every_frac: float = 0.1, clock: Any = time.monotonic
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.every_frac, self.clock = every_s, every_frac, clock
        self.t0 = clock()
        self.name: str | None = None
        self.total: int | None = None
        self.count = 0
        self.phase_t0 = self.t0
        self.last_line = self.t0
        self.next_count = 0.0

    def _line(self, text: str) -> None:
        self.stream.write(f"[{self.clock() - self.t0:7.0f}s] {text}\n")
        self.stream.flush()

    def phase(self, name: str, total: int | None = None) -> None:
        self.name, self.total, self.count = name, total, 0
        self.phase_t0 = self.last_line = self.clock()
        self.next_count = (total or 0) * self.every_frac
        self._line(f"{name}: started" + (f" ({total} {_UNITS.get(self._short(), 'steps')})" if total else ""))

    def _short(self) -> str:
        return (self.name or "").split(":")[0].strip()

    def advance(self, n: int = 1, **info: Any) -> None:
        if self.name is None:
            return
        self.count += n
        now = self.clock()
        finished = bool(self.total) and self.count >= (self.total or 0)
        if not (finished or (self.total and self.count >= self.next_count) or now - self.last_line >= self.every_s):
            return
        if self.total:
            while self.next_count <= self.count:
                self.next_count += max(1.0, self.total * self.every_frac)
        self.last_line = now
        text = (
            f"{self._short()}: {self.count}"
            + (f"/{self.total}" if self.total else "")
            + f" {_UNITS.get(self._short(), 'steps')}"
        )
        if self.total and self.count and not finished:
            eta = (now - self.phase_t0) / self.count * (self.total - self.count)
            text += f", ETA {_dur(eta)}"
        extra = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._line(text + (f"  {extra}" if extra else ""))

    def done(self, name: str, seconds: float, skipped: bool = False) -> None:
        self._line(
            f"{name}: already done ({_dur(seconds)} when it ran), skipped"
            if skipped
            else f"{name}: done in {_dur(seconds)}"
        )
        self.name = None

    def log(self, msg: str) -> None:
        self._line(msg)

    def close(self) -> None:
        pass


class RichReporter:
    """Rich progress bars on stderr for the long phases (base training, search, fine-tuning); when
    stderr is not a terminal (nohup, CI, a log file) plain progress lines instead (PlainReporter)."""

    def __init__(self, quiet: bool = False, stream: Any = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        tty = err.is_terminal if stream is None else bool(getattr(stream, "isatty", lambda: False)())
        self.plain = PlainReporter(stream) if not quiet and not tty else None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=err,
            transient=False,
            disable=quiet or not tty,
        )
        self.task: Any = None
        self.started = False
        self.t0 = time.perf_counter()

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def phase(self, name: str, total: int | None = None) -> None:
        if self.plain is not None:
            return self.plain.phase(name, total)
        self._start()
        if self.task is not None:
            self.progress.stop_task(self.task)
        self.task = self.progress.add_task(name, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self.plain is not None:
            return self.plain.advance(n, **info)
        if self.task is None:
            return
        text = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self.progress.update(self.task, advance=n, info=text)

    def done(self, name: str, seconds: float, skipped: bool = False) -> None:
        if self.plain is not None:
            return self.plain.done(name, seconds, skipped)
        if not self.quiet:
            msg = (
                f"{name}: already done ({seconds:.1f} s when it ran), skipped"
                if skipped
                else f"{name}: done in {seconds:.1f} s"
            )
            if self.started:
                self.progress.console.print(msg)
            else:
                err.print(msg)

    def log(self, msg: str) -> None:
        if self.plain is not None:
            return self.plain.log(msg)
        if not self.quiet:
            (self.progress.console if self.started else err).print(msg)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
