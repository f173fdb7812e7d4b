#!/usr/bin/env python
"""Model-only clips/s on an accelerator: the matrix the GPU scaling plan needs, in one command.

    python bench/gpu_sweep.py                                   # CUDA: X3D-S and X3D-M, the full matrix
    python bench/gpu_sweep.py --models x3d_s --batches 64 --precisions bf16 --compile off
    python bench/gpu_sweep.py --device cpu --models x3d_tiny --batches 2 --compile off   # a smoke run

Needs only torch and numpy (no Ray, decord or boto3), so it runs on a bare GPU box. Every cell
is the job's own model half (``worker.model_runner.ModelRunner``: BatchNorm folded,
the chosen memory layout, ``torch.compile`` when asked, bf16 autocast for ``bf16``) scoring one
batch of uint8 clips that already sit on the device, through ``x3d.predict_clips`` (normalise,
layout, forward, logits back to the host). So a cell is the GPU's model-only rate, the number the
end-to-end ``submit.py benchmark`` is held against (its share of this rate is the pipeline's
efficiency). Random weights: speed does not depend on them.

Per cell: warm-up batches (compiles happen there), then timed batches until ``--cell-s``
seconds or ``--repeats`` batches; clips/s is the median over batches, with min and max, and the
device's peak memory. A batch above the preset's 32-bit index cap (``x3d.predict.max_clips_per_forward``)
runs as several forwards, as in the job (the ``forwards`` column). A cell that fails (out of
memory, a kernel that refuses its input, a compile error) is a row with its error, and the sweep
goes on; the exit status is 1 when any cell failed. ``--json FILE`` appends one JSON line per cell.

Layouts: ``ncdhw`` is a contiguous (N, C, T, H, W) input to a contiguous model; ``channels_last_3d``
both in channels_last_3d. Precisions: ``fp32`` (TF32 off), ``tf32``, ``bf16`` (autocast).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import x3d  # noqa: E402
from jobs.machine import cpu_model  # noqa: E402  (loads no Ray)
from worker.spec import ModelSpec  # noqa: E402
from worker.model_runner import ModelRunner  # noqa: E402

LAYOUTS = {"ncdhw": False, "channels_last_3d": True}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(runner: ModelRunner, clips: torch.Tensor) -> torch.Tensor:
    """The runner's model on uint8 clips already on its device, ``runner.batch_size`` a forward:
    ``x3d.predict_clips`` (normalise, layout, forward, logits to the host)."""
    return x3d.predict_clips(runner.model, clips, runner.protocol, runner.batch_size, channels_last=runner.channels_last,
                             precision=runner.spec.precision)


def run_cell(preset: x3d.Preset, precision: str, layout: str, compiled: bool, batch: int, device: str,
             warmup: int, repeats: int, cell_s: float) -> dict:
    spec = ModelSpec(preset, 1, precision=precision)
    weights = x3d.build_model(preset).state_dict()
    runner = ModelRunner(spec, weights, device=device, batch_size=batch, channels_last=LAYOUTS[layout], compile=compiled)
    proto = runner.protocol
    shape = (batch, proto.clip_len, proto.crop_size, proto.crop_size, 3)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, device=runner.device)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    for _ in range(warmup):
        _forward(runner, clips)
    _sync(runner.device)
    rates = []
    started = time.perf_counter()
    while len(rates) < repeats and (len(rates) < 2 or time.perf_counter() - started < cell_s):
        t0 = time.perf_counter()
        _forward(runner, clips)  # the logits come back to the host: synchronised
        _sync(runner.device)
        rates.append(batch / (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(runner.device) / 2**30 if runner.device.type == "cuda" else None
    forwards = -(-batch // runner.batch_size)
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "batches": len(rates), "peak_gb": peak,
            "forwards": forwards}


def _error_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:200].replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="x3d_s,x3d_m")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--layouts", default="ncdhw,channels_last_3d")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both")
    ap.add_argument("--batches", default="64,128,256", help="clips per forward")
    ap.add_argument("--compile-batches", default="128",
                    help="batch sizes for the compiled cells (each compiles anew: ~30-60 s a cell)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cell-s", type=float, default=5.0)
    ap.add_argument("--json", help="append one JSON line per cell to this file")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_sweep.py: no CUDA device here; use --device cpu for a smoke run", file=sys.stderr)
        return 2
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_model()
    print(f"# model-only clips/s: {device_name}; torch {torch.__version__}; warmup {args.warmup}, "
          f"up to {args.repeats} batches or {args.cell_s:g} s per cell")
    print("| model | precision | layout | compiled | batch | forwards | clips/s (median) | min | max | batches | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    eager_batches = [int(b) for b in args.batches.split(",")]
    compiled_batches = [int(b) for b in args.compile_batches.split(",")]
    cells = [(m, p, lay, c, b) for m, p, lay, c in itertools.product(args.models.split(","), args.precisions.split(","),
                                                                   args.layouts.split(","), compiles)
             for b in (compiled_batches if c else eager_batches)]
    failed = 0
    for model, precision, layout, compiled, batch in cells:
        head = f"| {model} | {precision} | {layout} | {'yes' if compiled else 'no'} | {batch} |"
        cell = {"model": model, "precision": precision, "layout": layout, "compiled": compiled, "batch": batch}
        try:
            r = run_cell(x3d.get_preset(model), precision, layout, compiled, batch, args.device,
                         args.warmup, args.repeats, args.cell_s)
        except Exception as exc:  # one cell's failure is a result (OOM, a refused kernel, a compile error), not the sweep's end
            cell["error"] = _error_line(exc)
            failed += 1
            print(f"{head} | FAILED: {cell['error']} | | | | |", flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            cell.update(r)
            peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
            print(f"{head} {r['forwards']} | {r['median']:.0f} | {r['min']:.0f} | {r['max']:.0f} | {r['batches']} | {peak} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(cell) + "\n")
    if failed:
        print(f"gpu_sweep.py: {failed} of {len(cells)} cell(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
