"""X3D model-only throughput on this machine's CPU (random weights, no decoding).

For each preset the input is one clip of its default protocol (``clip_len x crop_size x
crop_size``, e.g. X3D-S 13x182x182, X3D-M 16x256x256), float32, in eval mode under
``torch.inference_mode()``. Every (model, memory layout, batch) cell gets warm-up forwards,
then timed forwards; the table gives the median and the min-max spread of clips/s.

    python bench/model_throughput.py                     # X3D-S and X3D-M, batches 1,2,4,8
    python bench/model_throughput.py --quick             # batches 1,4, two repeats
    python bench/model_throughput.py --models x3d_s --batches 1,8 --repeats 10 --threads 1

Default settings finish in under three minutes on 2 cores: each cell stops repeating once it has
spent ``--cell-budget`` seconds (never below two timed repeats), and a cell whose predicted cost
would push the run past ``--time-budget`` seconds is skipped and listed, so a slow or busy
machine gets fewer repeats (the ``reps`` column) or fewer cells rather than a longer run.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import x3d  # noqa: E402
from jobs.machine import cpu_model, load_average_text as load_average  # noqa: E402  (one machine description for every benchmark)

DEFAULT_REPEATS = {"x3d_s": 5, "x3d_m": 3}
LAYOUTS = ("contiguous", "channels_last")


def gmacs_per_clip(name: str, clip_len: int, size: int) -> float | None:
    """Multiply-adds of one clip (torch's FlopCounterMode / 2), counted on the meta device."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            model = x3d.build_model(name)
            x = torch.empty(1, 3, clip_len, size, size)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(x)
        return counter.get_total_flops() / 2e9
    except Exception:  # pragma: no cover - only a nicety for the table
        return None


def time_cell(model, x: torch.Tensor, warmup: int, repeats: int, budget_s: float) -> tuple[list[float], float]:
    """Wall seconds per timed forward, and this process's CPU time / wall time over them."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times: list[float] = []
        spent = 0.0
        cpu0 = time.process_time()
        while len(times) < repeats:
            start = time.perf_counter()
            model(x)
            dt = time.perf_counter() - start
            times.append(dt)
            spent += dt
            if len(times) >= 2 and spent > budget_s:
                break
        cpu_share = (time.process_time() - cpu0) / spent
    return times, cpu_share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="x3d_s,x3d_m", help="comma-separated presets (default: x3d_s,x3d_m)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,2,4,8)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed forwards per cell (default: 5 for x3d_s, 3 for x3d_m)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per cell (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's)")
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help="comma-separated: contiguous, channels_last (default: both)"
    )
    parser.add_argument(
        "--cell-budget", type=float, default=8.0, help="stop a cell's timed repeats after this many seconds (default: 8)"
    )
    parser.add_argument(
        "--time-budget", type=float, default=165.0,
        help="skip cells that would end the run after this many seconds, estimated from the cells so far (default: 165)",
    )
    parser.add_argument("--quick", action="store_true", help="batches 1,4; 2 repeats; 4 s per cell (flags given win)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,2,4,8")).split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    layouts = [l.strip() for l in args.layouts.split(",") if l.strip()]
    for layout in layouts:
        if layout not in LAYOUTS:
            parser.error(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    budget = 4.0 if args.quick and args.cell_budget == 8.0 else args.cell_budget

    print("# X3D model-only throughput (CPU, random weights, float32, eval, torch.inference_mode)")
    print(f"date:      {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"cpu:       {cpu_model()}, {os.cpu_count()} logical cores ({platform.machine()})")
    print(f"torch:     {torch.__version__}, threads={torch.get_num_threads()}, "
          f"interop={torch.get_num_interop_threads()}, mkldnn={torch.backends.mkldnn.is_available()}")
    print(f"settings:  models={','.join(models)} batches={','.join(map(str, batches))} layouts={','.join(layouts)} "
          f"warmup={args.warmup} repeats={args.repeats or (2 if args.quick else 'x3d_s:5,x3d_m:3')} "
          f"cell-budget={budget:g}s")
    print(f"loadavg:   {load_average()} (before)")
    print("columns:   ms/forward = median wall time of one forward of `batch` clips; clips/s = batch / that;")
    print("           spread = (max - min) / median of the timed forwards; cpu = process CPU seconds per wall")
    print(f"           second while timing (about {torch.get_num_threads()} when this process has its threads' cores to"
          " itself; less means other processes took them)")
    print()

    rows = []
    header = (f"| {'model':6} | {'input TxHxW':12} | {'GMAC/clip':9} | {'layout':13} | {'batch':5} | {'reps':4} | "
              f"{'ms/forward':>10} | {'ms/clip':>8} | {'clips/s':>7} | {'clips/s min-max':>15} | {'spread':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|", flush=True)
    wall0 = time.perf_counter()
    sec_per_gmac = None  # latest measured wall seconds per GMAC, to predict the next cell's cost
    skipped = []
    for name in models:
        proto = x3d.get_preset(name).protocol()
        t, s = proto.clip_len, proto.crop_size
        macs = gmacs_per_clip(name, t, s)
        repeats = args.repeats or (2 if args.quick else DEFAULT_REPEATS.get(name, 3))
        torch.manual_seed(0)
        base = x3d.build_model(name).eval()
        for layout in layouts:
            model = copy.deepcopy(base)
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last_3d)
            for batch in batches:
                if sec_per_gmac is not None and macs:
                    predicted = (args.warmup + 2) * batch * macs * sec_per_gmac
                    if time.perf_counter() - wall0 + predicted > args.time_budget:
                        skipped.append(f"{name}/{layout}/batch {batch} (~{predicted:.0f} s)")
                        print(f"| {name:6} | {f'{t}x{s}x{s}':12} | {f'{macs:.2f}':>9} | {layout:13} | {batch:5d} | "
                              f"skipped: would pass --time-budget {args.time_budget:g} s", flush=True)
                        continue
                x = torch.randn(batch, 3, t, s, s)
                if layout == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                times, cpu_share = time_cell(model, x, args.warmup, repeats, budget)
                med = statistics.median(times)
                cps = [batch / dt for dt in times]
                row = dict(model=name, layout=layout, batch=batch, median_cps=batch / med)
                rows.append(row)
                if macs:
                    sec_per_gmac = med / (batch * macs)
                spread = (max(times) - min(times)) / med * 100
                print(f"| {name:6} | {f'{t}x{s}x{s}':12} | {(f'{macs:.2f}' if macs else 'n/a'):>9} | {layout:13} | "
                      f"{batch:5d} | {len(times):4d} | {med * 1000:10.0f} | {med / batch * 1000:8.0f} | "
                      f"{batch / med:7.2f} | {f'{min(cps):.2f}-{max(cps):.2f}':>15} | {spread:5.0f}% | "
                      f"{cpu_share:4.1f} |", flush=True)
            del model
    print()
    print(f"loadavg:   {load_average()} (after); wall {time.perf_counter() - wall0:.0f} s")
    if skipped:
        print(f"skipped:   {len(skipped)} cell(s) to stay within --time-budget: {', '.join(skipped)}")
    print()
    print("Best per model (median clips/s):")
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            print(f"  {name}: no cell measured")
            continue
        best = max(mine, key=lambda r: r["median_cps"])
        line = f"  {name}: {best['median_cps']:.2f} clips/s ({best['layout']}, batch {best['batch']})"
        by_layout = {}
        for r in mine:
            cur = by_layout.get(r["layout"])
            if cur is None or r["median_cps"] > cur["median_cps"]:
                by_layout[r["layout"]] = r
        if len(by_layout) == 2:
            ratio = by_layout["channels_last"]["median_cps"] / by_layout["contiguous"]["median_cps"]
            line += f"; best channels_last / best contiguous = {ratio:.2f}x"
        b1 = [r for r in mine if r["batch"] == 1]
        if b1:
            line += f"; batch 1 best {max(r['median_cps'] for r in b1):.2f} clips/s"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
