"""A run's figures as Ray metrics (``ray.util.metrics``): what the Ray dashboard, Prometheus and
Grafana show of an unattended run.

The driver (``cluster.pipeline``) counts each video's outcome and hands ``update`` the
scheduler's state (``Scheduler.gauges``) after each of its waits; ``update`` passes them on
at most once per ``every_s``, so a run's Ray traffic for metrics is a few calls a second
whatever its rate. Every metric is tagged ``run`` (the run's name); Ray exports them with a
``ray_`` prefix, counters with a ``_total`` suffix, every ``metrics_report_interval_ms`` (10 s
by default). docs/metrics.md has one query per figure.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

from ray.util.metrics import Counter, Gauge

__all__ = ["COUNTERS", "GAUGES", "PREFIX", "RunMetrics"]

PREFIX = "x3d_"

#: counted from the outcomes: metric name -> what it counts
COUNTERS = {
    "videos_scored": "Videos scored (a row with probabilities).",
    "videos_failed": "Videos that became an error row (decode error, hung or crashed decode, failed call).",
}

#: ``Scheduler.gauges()`` key -> (metric name, what it says); the driver's own rate is last
GAUGES = {
    "actors_live": ("actors_live", "Model actors started and answering."),
    "actors_wanted": ("actors_wanted", "Model actors the run asks for."),
    "gpus_held": ("gpus_held", "GPUs held by the run's live model actors."),
    "units_running": ("decode_units_running", "Decode units running (their worker has started them)."),
    "units_waiting": ("decode_units_waiting", "Decode units asked of Ray and not started yet (waiting for a CPU or a worker)."),
    "videos_in_flight": ("videos_in_flight", "Videos handed to decode units and not yet done."),
    "videos_per_second": ("videos_per_second", "Videos done (scored or failed) per second over the last 10 s."),
}


class RunMetrics:
    """The run's counters and gauges under one ``run`` tag. ``every_s``: the most often they
    are passed to Ray; ``window_s``: the span ``videos_per_second`` averages over."""

    def __init__(self, run: str, every_s: float = 1.0, window_s: float = 10.0):
        tags = {"run": run}
        self.every_s, self.window_s = every_s, window_s
        self._counters = {name: _tagged(Counter(PREFIX + name, text, tag_keys=("run",)), tags) for name, text in COUNTERS.items()}
        self._gauges = {key: _tagged(Gauge(PREFIX + name, text, tag_keys=("run",)), tags) for key, (name, text) in GAUGES.items()}
        self.counts = dict.fromkeys(COUNTERS, 0)  # outcomes seen
        self._sent = dict.fromkeys(COUNTERS, 0)  # ... and passed to Ray
        self._done: deque[tuple[float, int]] = deque()  # (time, videos done) at each update in the window
        self.next_update = float("-inf")
        self.rate = 0.0  # the last videos/s passed to Ray

    def counting(self, on_video: Callable[[Any], None]) -> Callable[[Any], None]:
        """``on_video``, and each outcome counted (a plain increment: Ray sees it at the next update)."""

        def counted(outcome: Any) -> None:
            self.counts["videos_failed" if outcome.error is not None else "videos_scored"] += 1
            on_video(outcome)

        return counted

    def update(self, gauges: Mapping[str, float], now: float, force: bool = False) -> None:
        """Pass the counts and ``gauges`` to Ray, if ``every_s`` has passed since the last time."""
        if now < self.next_update and not force:
            return
        self.next_update = now + self.every_s
        for name, counter in self._counters.items():
            if self.counts[name] > self._sent[name]:
                counter.inc(self.counts[name] - self._sent[name])
                self._sent[name] = self.counts[name]
        done = sum(self.counts.values())
        self._done.append((now, done))
        while len(self._done) > 2 and now - self._done[1][0] >= self.window_s:
            self._done.popleft()  # keep one point at least window_s old
        then, done_then = self._done[0]
        rate = self.rate = (done - done_then) / (now - then) if now > then else 0.0
        for key, value in {"videos_per_second": rate, **gauges}.items():
            if key in self._gauges:
                self._gauges[key].set(float(value))

    def close(self, now: float) -> None:
        """The run has ended and released everything: the last counts, every gauge 0."""
        self.update(dict.fromkeys(GAUGES, 0.0), now, force=True)


def _tagged(metric: Any, tags: dict[str, str]) -> Any:
    metric.set_default_tags(tags)
    return metric
