"""A one-line progress display for long jobs: done / total, videos/s, ETA, failures.

On a terminal it redraws in place; in a log (Ray Jobs, CI) it prints a line every few
seconds instead, so logs stay short and readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int | None, label: str = "videos", stream: TextIO | None = None, every_s: float = 10.0):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = 0.2 if self.tty else every_s
        self.done = 0
        self.failed = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn_at = -1

    def update(self, done: int = 1, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total is not None and self.done >= self.total):
            self._last = now
            self._draw(final=False)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total is None:  # streaming input: no ETA until the listing is done
            return f"{self.done} {self.label} | {rate:6.2f} {self.label}/s | elapsed {_clock(elapsed)} | failed {self.failed}"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = _clock(eta) if eta != float("inf") else "--"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} {self.label} ({pct:5.1f}%) | {rate:6.2f} {self.label}/s | "
            f"elapsed {_clock(elapsed)} | ETA {eta_text} | failed {self.failed}"
        )

    def _draw(self, final: bool) -> None:
        if final and self._drawn_at == self.done and not self.tty:
            return  # the last update already printed this line
        self._drawn_at = self.done
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._draw(final=True)


class _Quiet:
    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def quiet_stream() -> TextIO:
    """A stream that swallows progress output (``--quiet``)."""
    return _Quiet()  # type: ignore[return-value]
