"""A small real run whose Ray metrics are read back from the node's export endpoint
(tests/cluster/test_run_metrics.py runs it in a fresh interpreter).

Its own local Ray: 2 CPUs and 1 GPU declared (there is none: the actor asks for it, holds it
and computes on the CPU, as it does wherever CUDA is absent), metrics exported every second
(``metrics_report_interval_ms``; Ray's default is 10 s). The model actor takes one CPU and the
decode slot the other, so the unit queued behind the running one waits for a CPU; decodes are
paced so that each state lasts a few seconds. A thread scrapes
``http://127.0.0.1:<metrics_export_port>/metrics`` every 0.2 s during the run and after it,
until the final counts and the released gauges are there; the result is one JSON line.

    python -m tests.cluster.metrics_run EVALSET_DIR RUN_NAME
"""

from __future__ import annotations

import time

from worker.decode_task import decode_item

PACE_S = 1.0
REPORT_MS = 1000


def paced_decode(item, spec, timed=False):
    """``decode_item``, a second later: keeps units running and waiting long enough to be seen."""
    time.sleep(PACE_S)
    return decode_item(item, spec, timed)


def scrape(port: int, run: str) -> dict[str, float]:
    """The run's ``ray_x3d_*`` series at the endpoint, by name."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_x3d_\w+)\{(.*)\} (\S+)$", line)
        if m and f'run="{run}"' in m.group(2):
            found[m.group(1)] = float(m.group(3))
    return found


def main(folder: str, run: str) -> None:
    import dataclasses
    import json
    import logging
    import threading
    from pathlib import Path

    import ray

    import x3d
    from cluster.pipeline import Shard, run_pipeline
    from cluster.runtime import LOCAL_RAY_CONFIG, pipeline_config_for
    from tests.cluster.evalset import PRESET, VIEWS
    from worker.spec import ModelSpec
    from worker.items import VideoItem

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level=logging.ERROR,
             _system_config={**LOCAL_RAY_CONFIG, "metrics_report_interval_ms": REPORT_MS})
    port = ray._private.worker.global_worker.node.metrics_export_port
    root = Path(folder)
    model = x3d.load_model(PRESET, str(root / "x3d_test.pth"))
    names = sorted(str(p.relative_to(root / "videos")) for p in (root / "videos").rglob("*.mp4"))[:6]
    items = [VideoItem(n, str(root / "videos" / n), None) for n in names] + [VideoItem("gone", str(root / "gone.mp4"), None)]
    config = dataclasses.replace(pipeline_config_for(ModelSpec(model.preset, VIEWS)), num_actors=1, actor_gpus=1.0, actor_cpus=1.0,
                                 decode_slots=1, decode_cpus=1.0, unit_videos=2, decode_fn=paced_decode, run_name=run,
                                 # a video per group and per call, as on CPU: done videos trickle in (the GPU
                                 # sizing's 2 s groups and 4 s holds can land them all in the run's last second)
                                 group_ms=20.0, group_videos=1, wake_ms=0.0, decode_bound_wake_ms=0.0)
    most: dict[str, float] = {}
    last: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen = scrape(port, run)
            except OSError:
                seen = {}
            for name, value in seen.items():
                most[name] = max(value, most.get(name, value))
            last.clear()
            last.update(seen)
            stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    outcomes = []
    started = time.monotonic()
    run_pipeline([Shard(0, items)], config, ray.put(model.state_dict()), on_video=outcomes.append)
    ended = time.monotonic()
    scored = sum(o.error is None for o in outcomes)
    final = {"ray_x3d_videos_scored_total": scored, "ray_x3d_videos_failed_total": len(outcomes) - scored}
    while time.monotonic() - ended < 30 and any(last.get(k) != v for k, v in final.items()):
        time.sleep(0.2)
    final_after_s = time.monotonic() - ended
    time.sleep(3 * REPORT_MS / 1000)  # the released gauges: exported at the next report or two
    stop.set()
    watcher.join(5)
    ray.shutdown()
    print("RESULT " + json.dumps({"most": most, "last": last, "scored": scored, "failed": len(outcomes) - scored,
                                  "run_s": ended - started, "final_after_s": final_after_s}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1], sys.argv[2])
