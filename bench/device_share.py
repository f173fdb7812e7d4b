#!/usr/bin/env python
"""The job's clips/s as a share of the model-only rate, and where its actor's time goes.

    python bench/device_share.py --sweep OUT/sweep.jsonl --jobs OUT/job-*.json --model x3d_s --layout ncdhw --batch 256

Reads ``bench/gpu_sweep.py --json`` cells and ``submit.py benchmark`` reports (benchmark.json),
matches each job to the eager sweep cell of its model, precision and layout whose batch is
nearest ``--batch`` (the job's clips per forward), and prints a Markdown table: job clips/s,
model-only clips/s, the share, the actor's busy share, device utilisation and peak memory, and
the actor's stages (ms per video and share of the batch time). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = ("read", "decode", "preprocess", "h2d", "forward", "write", "other")


def load_cells(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def model_only(cells: list[dict], model: str, precision: str, layout: str, batch: int) -> dict | None:
    usable = [c for c in cells if c.get("model") == model and c.get("precision") == precision and c.get("layout") == layout
              and not c.get("compiled") and "median" in c]
    return min(usable, key=lambda c: abs(c["batch"] - batch), default=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--jobs", nargs="*", default=[])
    ap.add_argument("--model", required=True)
    ap.add_argument("--layout", required=True, choices=("ncdhw", "channels_last_3d"))
    ap.add_argument("--batch", type=int, required=True, help="the job's clips per forward")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args(argv)
    cells = load_cells(args.sweep)
    lines = ["## The job against the model-only rate", "",
             f"{args.model}, {args.layout}; model-only = the eager sweep cell of the same precision nearest batch {args.batch}.", "",
             "| precision | job clips/s | model-only clips/s (batch) | share | actor busy | device util % | GPU peak MB | "
             + " | ".join(f"{s} ms/video (share)" for s in STAGES) + " |",
             "|" + "---|" * (7 + len(STAGES))]
    missing = 0
    for path in args.jobs:
        if not Path(path).exists():
            continue
        report = json.loads(Path(path).read_text())
        trial = report["trials"][0]
        job = trial["clips_per_s"]["median"]
        cell = model_only(cells, report["model"], report["precision"], args.layout, args.batch)
        ref = f"{cell['median']:.0f} ({cell['batch']})" if cell else "no cell"
        share = f"{100 * job / cell['median']:.0f}%" if cell else "n/a"
        missing += cell is None
        util = trial.get("accelerator_util")
        peak = trial.get("memory", {}).get("gpu_peak_mb")
        stages = [f"{trial['stages'][s]['ms_per_video']:.2f} ({100 * (trial['stages'][s]['share'] or 0):.0f}%)" for s in STAGES]
        lines.append(f"| {report['precision']} | {job:.0f} | {ref} | {share} | {100 * trial.get('actor_busy', 0):.0f}% | "
                     f"{'n/a' if util is None else f'{util:.0f}'} | {'n/a' if peak is None else f'{peak:.0f}'} | " + " | ".join(stages) + " |")
    if len(lines) == 5:
        lines.append("| no job report | | | | | | | " + " | " * len(STAGES))
        missing += 1
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
