#!/usr/bin/env python
"""One X3D-S forward beside a CPU hog, with OpenMP threads that spin or sleep while they wait.

Each setting runs in a fresh interpreter (libgomp reads OMP_WAIT_POLICY when it loads), for
``--seconds`` each, with or without one busy-looping process beside it:

    python bench/omp_wait.py --seconds 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.machine import cpu_model, load_average_text  # noqa: E402

CHILD = """
import sys, time, torch, x3d
torch.set_num_threads(int(sys.argv[1]))
model = x3d.fold_batchnorm(x3d.build_model("x3d_s")).to(memory_format=torch.channels_last_3d).eval()
x = torch.randn(2, 3, 13, 182, 182).contiguous(memory_format=torch.channels_last_3d)
with torch.inference_mode():
    model(x)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < float(sys.argv[2]):
        model(x)
        n += 1
print(f"{(time.perf_counter() - start) / n * 1000:.0f}")
"""
HOG = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end: pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    print(f"# {cpu_model()}, {os.cpu_count()} cores; load average {load_average_text()}")
    print("| setting | threads | OMP_WAIT_POLICY | ms / forward |\n|---|---|---|---|")
    for hog in (True, False):
        for threads, policy in ((2, None), (2, "PASSIVE"), (1, None)):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            env["PYTHONPATH"] = str(ROOT)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            hogger = subprocess.Popen([sys.executable, "-c", HOG, str(args.seconds + 30)]) if hog else None
            try:
                out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(args.seconds)], env=env,
                                     capture_output=True, text=True, check=True).stdout.strip()
            finally:
                if hogger is not None:
                    hogger.kill()
                    hogger.wait()
            print(f"| {'hog beside it' if hog else 'no hog'} | {threads} | {policy or 'unset'} | {out} |")


if __name__ == "__main__":
    main()
