"""The benchmark job's report: its heading, Markdown table and stage chart (PNG).

Pure formatting of the report dict that ``jobs.benchmark.run_benchmark`` returns and writes as
benchmark.json, so a saved report can be re-rendered without Ray or a GPU.
"""

from __future__ import annotations

import io
import math
from typing import Any

from worker.stages import STAGES

__all__ = ["benchmark_heading", "benchmark_markdown", "benchmark_table", "draw_chart"]


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _sig(value: float) -> str:
    """About three significant digits, never in e-notation: 1234, 123, 12.3, 1.23, 0.123."""
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if abs(value) >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.3f}" if value else "0"


def _rate(spread: dict[str, Any]) -> str:
    if spread["median"] is None:
        return "n/a"
    return f"{_sig(spread['median'])} ({_sig(spread['min'])}-{_sig(spread['max'])})"


def benchmark_heading(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpus = ", ".join(m["gpus"]) or ", ".join(a for a in m["actor_accelerators"] if a != "cpu") or "no GPU"
    v = m["versions"]
    precision = report.get("precision", "fp32")
    return (
        f"{report['model']}, {report['views']} views ({report['protocol']}), "
        f"{'' if precision == 'fp32' else precision + ' autocast, '}"
        f"{'synthetic clips' if report['input'] == 'synthetic' else 'dataset ' + report['input']}, "
        f"{'random weights' if report['checkpoint'] is None else 'checkpoint weights'}; "
        f"{report['repeats']} x {report['duration_s']:g} s after {report['warmup_s']:g} s warm-up\n"
        f"{m['cpu_model']} ({m['cpu_cores']} cores), {gpus}; "
        f"ray {v['ray']}, torch {v['torch']}, decord {v['decord']}"
        + (f"; load average {m['load_average'][0]:g} at the end" if m.get("load_average") else "")
    )


def benchmark_table(report: dict[str, Any]) -> str:
    """Markdown: rates as median (min-max) over the windows, stages as % of batch time."""
    header = ["actors", "videos/s", "clips/s", "videos/s per actor"]
    header += [f"{name} %" for name in (*STAGES, "other")]
    header += ["actor busy %", "accel util %", "actor RSS MB", "obj store MB"]
    rows = []
    for t in report["trials"]:
        per_actor = t["per_actor"]["videos_per_s"]
        row = [str(t["num_actors"]), _rate(t["videos_per_s"]), _rate(t["clips_per_s"]), "n/a" if per_actor is None else _sig(per_actor)]
        row += [_num(100 * t["stages"][s]["share"], 1) if t["stages"][s]["share"] is not None else "n/a" for s in (*STAGES, "other")]
        row += [
            _num(100 * t["actor_busy"], 0) if t["actor_busy"] is not None else "n/a",
            _num(t["accelerator_util"], 0),
            _num(t["memory"]["actor_peak_rss_mb"], 0),
            _num(t["memory"]["object_store_peak_mb"], 1),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def benchmark_markdown(report: dict[str, Any], table: str) -> str:
    lines = [f"# Benchmark: {report['model']}, {report['views']} views, {report['input']}", "", "```", benchmark_heading(report), "```", "", table, ""]
    lines.append(f"- weights: {report['weights']}; input: {report['input_note']}")
    lines.append(
        "- rates are median (min-max) over the timed windows; stage columns are shares of the per-batch "
        "work time (decode tasks + actor call), see `stage_meaning` in benchmark.json"
    )
    for t in report["trials"]:
        mem = t["memory"]
        lines.append(
            f"- {t['num_actors']} actor(s) on {', '.join(t['accelerators'])}: {t['timed_batches']} timed batches, "
            f"{t['videos_done']} videos ({t['videos_failed']} failed); decode worker processes "
            f"{mem.get('decode_processes') or 'n/a'}, peak RSS {_num(mem['decode_peak_rss_mb'], 0)} MB, GPU peak "
            f"{'n/a' if mem['gpu_peak_mb'] is None else _num(mem['gpu_peak_mb'], 0) + ' MB'}, "
            f"object store peak {_num(mem['object_store_peak_mb'], 1)} of {_num(mem['object_store_capacity_mb'], 0)} MB"
            + (f"; note: {t['note']}" if t["note"] else "")
        )
    return "\n".join(lines) + "\n"


STAGE_COLOURS = {
    "read": (78, 121, 167),
    "decode": (242, 142, 43),
    "preprocess": (237, 201, 72),
    "h2d": (118, 183, 178),
    "forward": (225, 87, 89),
    "write": (89, 161, 79),
    "other": (186, 176, 172),
}


def _nice_step(rough: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``rough``: axis ticks people can read."""
    power = 10.0 ** math.floor(math.log10(rough))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def draw_chart(report: dict[str, Any]) -> bytes:
    """PNG bytes: videos/s against actors (median, min-max bars, linear scaling dashed) and the
    share of each stage in the per-batch time, one bar per actor count. Pillow only."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = 1200, 520
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font, small, title_font = ImageFont.load_default(14), ImageFont.load_default(12), ImageFont.load_default(16)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = small = title_font = ImageFont.load_default()
    trials = report["trials"]
    draw.text((20, 12), benchmark_heading(report).splitlines()[0], fill="black", font=title_font)

    # Left: throughput against actors.
    left, top, right, bottom = 80, 70, 560, 440
    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text((left, top - 22), "videos/s against model actors (median, min-max)", fill="black", font=font)
    medians = [t["videos_per_s"]["median"] or 0.0 for t in trials]
    tops = [t["videos_per_s"]["max"] or 0.0 for t in trials]
    linear = [medians[0] * t["num_actors"] / trials[0]["num_actors"] for t in trials] if trials else []
    y_step = _nice_step(max([*tops, *linear, 1e-9]) * 1.1 / 5)
    y_max = y_step * math.ceil(max([*tops, *linear, 1e-9]) * 1.1 / y_step)
    slots = max(len(trials), 1)

    def x_at(i: int) -> float:
        return left + (right - left) * (i + 0.5) / slots

    def y_at(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    for k in range(round(y_max / y_step) + 1):
        v = y_step * k
        y = y_at(v)
        draw.line((left - 5, y, left, y), fill="black")
        draw.line((left + 1, y, right - 1, y), fill=(230, 230, 230))
        draw.text((10, y - 7), f"{v:g}", fill="black", font=small)
    for i, t in enumerate(trials):
        draw.text((x_at(i) - 4, bottom + 8), str(t["num_actors"]), fill="black", font=font)
    draw.text(((left + right) / 2 - 30, bottom + 30), "model actors", fill="black", font=font)
    for i in range(1, len(trials)):  # linear scaling from the first count, dashed
        x0, y0, x1, y1 = x_at(i - 1), y_at(linear[i - 1]), x_at(i), y_at(linear[i])
        for s in range(0, 20, 2):
            draw.line((x0 + (x1 - x0) * s / 20, y0 + (y1 - y0) * s / 20, x0 + (x1 - x0) * (s + 1) / 20, y0 + (y1 - y0) * (s + 1) / 20), fill=(150, 150, 150), width=2)
    points = [(x_at(i), y_at(m)) for i, m in enumerate(medians)]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=3)
    for i, t in enumerate(trials):
        x = x_at(i)
        lo, hi = t["videos_per_s"]["min"] or 0.0, t["videos_per_s"]["max"] or 0.0
        draw.line((x, y_at(lo), x, y_at(hi)), fill="black", width=2)
        draw.line((x - 6, y_at(lo), x + 6, y_at(lo)), fill="black", width=2)
        draw.line((x - 6, y_at(hi), x + 6, y_at(hi)), fill="black", width=2)
        px, py = points[i]
        draw.ellipse((px - 5, py - 5, px + 5, py + 5), fill=(31, 119, 180))
        draw.text((px + 9, py - 18), f"{medians[i]:.3g}", fill="black", font=small)
    if len(trials) > 1:
        draw.text((left + 8, top + 6), "dashed: linear scaling", fill=(120, 120, 120), font=small)

    # Right: stage shares per actor count.
    left2, right2 = 680, 1160
    draw.text((left2, top - 22), "share of per-batch time by stage", fill="black", font=font)
    bar_area = (top, bottom - 60)
    bar_h = min(40, (bar_area[1] - bar_area[0]) / max(slots, 1) * 0.6)
    names = (*STAGES, "other")
    for i, t in enumerate(trials):
        yc = bar_area[0] + (bar_area[1] - bar_area[0]) * (i + 0.5) / slots
        draw.text((left2 - 70, yc - 8), f"{t['num_actors']} actor{'s' if t['num_actors'] > 1 else ''}", fill="black", font=font)
        x = left2
        for name in names:
            share = t["stages"][name]["share"] or 0.0
            w = (right2 - left2) * share
            if w >= 0.5:
                draw.rectangle((x, yc - bar_h / 2, x + w, yc + bar_h / 2), fill=STAGE_COLOURS[name])
                if w >= 34:  # room for the label
                    draw.text((x + 3, yc - 7), f"{100 * share:.0f}%", fill="black", font=small)
            x += w
        draw.rectangle((left2, yc - bar_h / 2, right2, yc + bar_h / 2), outline="black")
    for k in range(5):
        x = left2 + (right2 - left2) * k / 4
        draw.text((x - 10, bar_area[1] + 6), f"{25 * k}%", fill="black", font=small)
    lx, ly = left2, bottom - 20
    for name in names:
        draw.rectangle((lx, ly, lx + 14, ly + 14), fill=STAGE_COLOURS[name], outline="black")
        draw.text((lx + 18, ly), name, fill="black", font=small)
        lx += 24 + draw.textlength(name, font=small) + 10
    draw.text((20, height - 28), benchmark_heading(report).splitlines()[1], fill=(80, 80, 80), font=small)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
