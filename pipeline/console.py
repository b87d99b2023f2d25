"""What a person watching a run sees: one line per stage, live progress, one closing summary.

Everything goes to `sys.stdout` (looked up at each write, so a caller's redirect holds).
On a terminal, progress is a `tqdm` bar redrawn in place; anywhere else (CI, `ray job
logs`, Kubernetes logs) it is a plain line when at least 10 % more is done and 10 s have
passed, or after a minute without one, and never a control character. Every line the
console prints (and every detail line it does not) is also kept in
`<run_dir>/logs/console.log`.

`capture_noise()` (the CLI turns it on) keeps what Ray and the libraries write out of the
console: the process's stderr (Ray's C++ and Python loggers, warnings) and the output that
Ray forwards from its workers go to `<run_dir>/logs/ray.log`; `--verbose` shows them too.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

from pipeline.redact import redact_text

QUIET, NORMAL, VERBOSE = 0, 1, 2
PLAIN_MIN_SECONDS = 10.0
PLAIN_MIN_FRACTION = 0.10
PLAIN_HEARTBEAT_SECONDS = 60.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Console:
    def __init__(self) -> None:
        self.level = NORMAL
        self.capture = False
        self._log = None
        self._workers = None
        self._began = time.perf_counter()
        self.bar = None
        """The live tqdm bar on the terminal, if one is drawn."""
        self._lock = threading.Lock()

    def configure(self, level: int = NORMAL, capture: bool = False) -> None:
        self.level, self.capture = level, capture

    @property
    def interactive(self) -> bool:
        isatty = getattr(sys.stdout, "isatty", None)
        return bool(isatty and isatty())

    def _keep(self, text: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.strftime('%H:%M:%S')} {text}\n")
            self._log.flush()

    def print(self, text: str, *, always: bool = False) -> None:
        """A line for the person (not shown under --quiet unless `always`)."""
        text = redact_text(text)
        with self._lock:
            self._keep(text)
            if self.level > QUIET or always:
                self._write(text)

    def line(self, stage: str, message: str) -> None:
        self.print(f"[{stage}] {message}")

    def detail(self, stage: str, message: str) -> None:
        """Kept in the run's log; shown only with --verbose."""
        text = redact_text(f"[{stage}] {message}")
        with self._lock:
            self._keep(text)
            if self.level >= VERBOSE:
                self._write(text)

    def _write(self, text: str) -> None:
        if self.bar is not None:  # above the live bar, which is redrawn below it
            self.bar.write(text, file=sys.stdout)
            return
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def progress(self, stage: str, total: float | None, unit: str) -> "Progress":
        return Progress(self, stage, total, unit)

    @contextmanager
    def run_logs(self, run_dir: str) -> Iterator[str]:
        """Keep the console's lines (and, when capturing, Ray's noise) under `<run_dir>/logs/`."""
        folder = os.path.join(run_dir, "logs")
        os.makedirs(folder, exist_ok=True)
        previous = self._log
        self._log = open(os.path.join(folder, "console.log"), "a", encoding="utf-8")
        self._began = time.perf_counter()
        try:
            if self.capture:
                with _noise_to(os.path.join(folder, "ray.log"), echo=self.level >= VERBOSE) as workers:
                    self._workers = workers
                    yield folder
            else:
                yield folder
        finally:
            self._workers = None
            self._log.close()
            self._log = previous

    def elapsed(self) -> float:
        """Seconds since the run's logs were opened (its start)."""
        return time.perf_counter() - self._began

    def ray_connected(self) -> None:
        """After `ray.init`: keep the worker output it forwards out of the console too."""
        if self._workers is not None:
            self._workers.route()


CONSOLE = Console()
"""The process's one console (the CLI configures it; a library caller may too)."""


def log(stage: str, message: str) -> None:
    CONSOLE.line(stage, message)


def detail(stage: str, message: str) -> None:
    CONSOLE.detail(stage, message)


def _terminal_size() -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return (size.columns, size.lines) if size.columns and size.lines else None


def _fields(fields: dict[str, Any]) -> str:
    shown = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        shown.append(f"{key} {value}" if key else str(value))
    return " · ".join(shown)


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:.3g}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One stage's progress: `update(done, **fields)` with the amount done so far (in `unit`)
    and what else to show (epoch, loss, rejects); `close()` leaves one line."""

    def __init__(self, console: Console, stage: str, total: float | None, unit: str):
        self.console, self.stage, self.total, self.unit = console, stage, total, unit
        self.began = time.perf_counter()
        self.done, self.fields = 0.0, {}
        self._first: tuple[float, float] | None = None
        self._shown_at, self._shown_done = self.began, 0.0
        self._bar = None
        if console.level > QUIET and console.interactive:
            from tqdm.auto import tqdm

            # A terminal that reports no size (0x0: some ptys) would make tqdm draw nothing.
            size = {} if _terminal_size() else {"ncols": 100, "nrows": 24}
            self._bar = tqdm(total=total, unit=f" {unit}" if unit else "", desc=f"[{stage}]", file=sys.stdout,
                             leave=False, dynamic_ncols=not size, mininterval=0.2, unit_scale=True, **size)
            console.bar = self._bar

    def rate(self) -> float:
        """Per second since the first update (not counting a start-up, or a resumed part)."""
        if self._first is None:
            return 0.0
        first_at, first_done = self._first
        elapsed = time.perf_counter() - first_at
        return (self.done - first_done) / elapsed if elapsed >= 1.0 else 0.0

    def text(self) -> str:
        """The progress as one plain line's worth of words."""
        parts = []
        if self.total:
            parts.append(f"{min(self.done / self.total, 1):.0%}")
        shown = _fields(self.fields)
        if shown:
            parts.append(shown)
        rate = self.rate() if self.unit else 0.0
        if rate > 0:
            parts.append(f"{_count(rate)} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return " · ".join(parts)

    def update(self, done: float, **fields: Any) -> None:
        if self._first is None:
            self._first = (time.perf_counter(), done)
        self.done = done
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.n = int(done) if float(done).is_integer() else done
            self._bar.set_postfix_str(_fields(self.fields), refresh=False)
            self._bar.refresh()
            return
        now = time.perf_counter()
        fraction_step = (done - self._shown_done) / self.total if self.total else 1.0
        due = (now - self._shown_at >= PLAIN_MIN_SECONDS and fraction_step >= PLAIN_MIN_FRACTION) \
            or now - self._shown_at >= PLAIN_HEARTBEAT_SECONDS
        if due and (not self.total or done < self.total):
            self._shown_at, self._shown_done = now, done
            self.console.line(self.stage, self.text())

    def close(self, message: str | None = None) -> None:
        """Take the bar down and leave `message` (default: the last progress) and the time
        taken as a line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = self.console.bar = None
        self.console.line(self.stage, f"{message or self.text()} ({time.perf_counter() - self.began:.1f}s)")


@contextmanager
def _noise_to(path: str, echo: bool) -> Iterator["_WorkerOutput"]:
    """Send the process's stderr (file descriptor 2: C++ and Python loggers, warnings) and the
    worker output Ray forwards to the driver into `path`; with `echo`, to the console as well."""
    sys.stderr.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_fd = os.dup(2)
    tee = None
    if echo:
        read_fd, write_fd = os.pipe()
        tee = threading.Thread(target=_copy, args=(read_fd, (log_fd, saved_fd)), daemon=True)
        tee.start()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    else:
        os.dup2(log_fd, 2)
    # Python-level writes too (a caller may have pointed sys.stderr elsewhere): through fd 2.
    saved_stderr = sys.stderr
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    workers = _WorkerOutput()
    workers.route()
    try:
        yield workers
    finally:
        workers.restore()
        sys.stderr.flush()
        sys.stderr = saved_stderr
        os.dup2(saved_fd, 2)  # also closes the pipe's last writer: the tee sees its end
        if tee is not None:
            tee.join(timeout=1)  # Ray's daemons inherited the pipe: it may never close
        os.close(saved_fd)
        os.close(log_fd)


def _copy(source: int, sinks: tuple[int, ...]) -> None:
    with os.fdopen(source, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            for sink in sinks:
                try:
                    os.write(sink, chunk)
                except OSError:  # closed when the run ended; Ray's daemons may still write
                    return


def _worker_output_to_stderr(data: dict[str, Any]) -> None:
    from ray._private.worker import print_worker_logs

    lines = io.StringIO()
    print_worker_logs(data, lines)  # colours each line's prefix whatever the sink: a log file wants none
    os.write(2, ANSI_ESCAPE.sub("", lines.getvalue()).encode("utf-8", "backslashreplace"))


class _WorkerOutput:
    """Ray prints what its workers write (stdout and stderr) on the driver's console through a
    handler that `ray.init` installs; while capturing, that handler is swapped for one that
    writes all of it to stderr, which `_noise_to` has pointed at the log. `route()` is called
    again after `ray.init` (which may run after the capture began)."""

    NAME = "ray_print_logs"

    def __init__(self) -> None:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher

        self.dispatcher = global_worker_stdstream_dispatcher
        self.original = None

    def route(self) -> None:
        for name, handler in list(self.dispatcher.handlers):
            if name == self.NAME and handler is not _worker_output_to_stderr:
                self.original = handler
                self.dispatcher.remove_handler(self.NAME)
                self.dispatcher.add_handler(self.NAME, _worker_output_to_stderr)

    def restore(self) -> None:
        if any(handler is _worker_output_to_stderr for _, handler in self.dispatcher.handlers):
            self.dispatcher.remove_handler(self.NAME)
            if self.original is not None:
                self.dispatcher.add_handler(self.NAME, self.original)
