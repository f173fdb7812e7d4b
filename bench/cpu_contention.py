#!/usr/bin/env python
"""CPU job speed beside other load: the same small job quiet, beside a CPU hog, and pinned.

Runs ``python submit.py benchmark --synthetic`` (the production pipeline, model actor and
runner; no decoding, so the model's threads are what is measured) in three settings:

* ``quiet``: nothing else started by this script (the machine's own load is recorded);
* ``hog``: one busy-looping process beside the job, unpinned (another tenant on the node);
* ``pinned``: the job (and the Ray it starts) may use CPU 0 only, as in a container limited to
  one CPU on a bigger node, with the hog on CPU 1.

Prints one JSON line per setting (videos/s, load average before) and the
machine (``jobs.machine``). Run it on the code before and after a change and put both in
bench/RESULTS.md.

    python bench/cpu_contention.py --label after --duration 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])}) if sys.argv[1] != 'any' else None\nwhile True: pass\n"


def _find(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


def run(setting: str, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"cpu-{setting}-"))
    cmd = [sys.executable, str(ROOT / "submit.py"), "benchmark", "--synthetic", "--model", args.model, "--views", str(args.views),
           "--num-actors", "1", "--duration", str(args.duration), "--repeats", "1", "--warmup", "3", "--quiet",
           "--output", str(out)]
    if setting != "pinned":
        cmd += ["--num-cpus", str(os.cpu_count())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    hog = None
    if setting in ("hog", "pinned"):
        hog = subprocess.Popen([sys.executable, "-c", HOG, "1" if setting == "pinned" else "any"])
    preexec = (lambda: os.sched_setaffinity(0, {0})) if setting == "pinned" else None
    load_before = os.getloadavg()
    try:
        start = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=preexec, timeout=900)
        wall = time.monotonic() - start
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        return {"setting": setting, "error": proc.stderr[-500:]}
    report = json.loads((out / "benchmark.json").read_text())
    vps = next(_find(report["trials"], "videos_per_s"))
    return {
        "label": args.label,
        "setting": setting,
        "videos_per_s": vps["median"] if isinstance(vps, dict) else vps,
        "load_before": [round(x, 2) for x in load_before],
        "wall_s": round(wall, 1),
        "machine": {k: report["machine"].get(k) for k in ("cpu_model", "cpu_cores", "cpu_cores_usable", "memory_gb", "versions")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="now", help="what code this is (before / after)")
    parser.add_argument("--model", default="x3d_s")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--settings", default="quiet,hog,pinned")
    args = parser.parse_args()
    for setting in args.settings.split(","):
        print(json.dumps(run(setting, args)), flush=True)


if __name__ == "__main__":
    main()
