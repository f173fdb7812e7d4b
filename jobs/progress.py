"""A one-line progress display for long jobs: done / total, videos/s, ETA, failures.

On a terminal it redraws in place; in a log (Ray Jobs, CI) it prints a line every few
seconds instead, so logs stay short and readable.

The rate (and so the ETA) counts from the first finished video, not from the start: the time
to the first one is the model actors' start and warm-up, paid once, and counted in it the ETA
of a two-minute run read half an hour. Until a second video is done the ETA says ``warming up``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int | None, label: str = "videos", stream: TextIO | None = None, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = 0.2 if self.tty else every_s
        self.clock = clock
        self.done = 0
        self.failed = 0
        self.start = clock()
        self._first: tuple[float, int] | None = None  # (time, count) at the first update: the rate's origin
        self._last = 0.0
        self._drawn_at = -1

    def update(self, done: int = 1, failed: int = 0) -> None:
        now = self.clock()
        if self._first is None:
            self._first = (now, self.done + done)
        self.done += done
        self.failed += failed
        if now - self._last >= self.every_s or (self.total is not None and self.done >= self.total):
            self._last = now
            self._draw(final=False)

    def rate(self) -> float | None:
        """Videos per second since the first finished one (warm-up excluded); None before two."""
        if self._first is None:
            return None
        since, count = self._first
        seconds = self.clock() - since
        return (self.done - count) / seconds if self.done > count and seconds > 0 else None

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.rate()
        rate_text = "  n/a" if rate is None else f"{rate:6.2f}"
        if self.total is None:  # streaming input: no ETA until the listing is done
            return f"{self.done} {self.label} | {rate_text} {self.label}/s | elapsed {_clock(elapsed)} | failed {self.failed}"
        if self.done >= self.total:
            eta_text = _clock(0)
        elif rate is None:
            eta_text = "warming up"
        else:
            eta_text = _clock((self.total - self.done) / rate)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} {self.label} ({pct:5.1f}%) | {rate_text} {self.label}/s | "
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
