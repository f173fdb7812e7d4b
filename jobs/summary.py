"""The run summary: accuracy from the Parquet rows, set beside the preset's published numbers.

Accuracy is always recomputed from the files on disk (never from in-memory state), so a
resumed run reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

import platform
from typing import Any, Sequence

import numpy as np
import numpy.ma  # noqa: F401 - np.union1d imports it on first use; the summary step must import nothing
import pyarrow as pa

import x3d
from cluster.config import INFRASTRUCTURE, VIDEO
from jobs.metrics import mean_class_accuracy, top_k_accuracy

__all__ = ["FAILURES_SHOWN", "accuracy_from_table", "failure_lines", "build_summary", "collect_versions", "summary_markdown", "summary_table", "times_text"]


def accuracy_from_table(table: pa.Table) -> dict[str, Any]:
    """top-1 / top-5 / mean-class, over decoded videos and with failures counted as misses."""
    names = ["label", "pred", "topk_classes", "error"] + (["failure"] if "failure" in table.column_names else [])
    cols = table.select(names).to_pydict()
    kinds = cols.get("failure") or [None] * table.num_rows
    labelled = [i for i, label in enumerate(cols["label"]) if label is not None]
    ok = [i for i in labelled if cols["error"][i] is None]
    out: dict[str, Any] = {
        "num_videos": table.num_rows,
        "num_ok": sum(1 for e in cols["error"] if e is None),
        "num_failed": sum(1 for e in cols["error"] if e is not None),
        # whose failures they are (rows written before the column existed count as the video's)
        "failed_by_kind": {kind: sum(1 for e, k in zip(cols["error"], kinds) if e is not None and (k or VIDEO) == kind)
                           for kind in (VIDEO, INFRASTRUCTURE)},
        "num_labelled": len(labelled),
    }
    labels_ok = [cols["label"][i] for i in ok]
    topk_ok = [cols["topk_classes"][i] for i in ok]
    out["top1_acc"] = top_k_accuracy(topk_ok, labels_ok, 1) if ok else None
    out["top5_acc"] = top_k_accuracy(topk_ok, labels_ok, 5) if ok else None
    out["mean_class_acc"] = mean_class_accuracy([cols["pred"][i] for i in ok], labels_ok) if ok else None
    # The same three with every failed video counted as a miss.
    labels_all = [cols["label"][i] for i in labelled]
    topk_all = [cols["topk_classes"][i] or [] for i in labelled]
    preds_all = [cols["pred"][i] if cols["pred"][i] is not None else -1 for i in labelled]
    out["top1_acc_with_failures"] = top_k_accuracy(topk_all, labels_all, 1) if labelled else None
    out["top5_acc_with_failures"] = top_k_accuracy(topk_all, labels_all, 5) if labelled else None
    out["mean_class_acc_with_failures"] = _mean_class_with_misses(preds_all, labels_all) if labelled else None
    return out


def _mean_class_with_misses(preds: list[int], labels: list[int]) -> float:
    """Mean class accuracy where a failed video (pred -1) is a miss but adds no class of its own."""
    preds_arr, labels_arr = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(labels_arr, preds_arr[preds_arr >= 0])
    recalls = []
    for cls in classes:
        truth = labels_arr == cls
        recalls.append(float((preds_arr[truth] == cls).sum()) / truth.sum() if truth.any() else 0.0)
    return float(np.mean(recalls))


def collect_versions() -> dict[str, str]:
    """Versions of what computed the scores, read when the job starts, not when it ends.

    Importing a package at the end of a run depends on things the run cannot control: under
    ``ray job submit`` on nodes sharing Ray's temp dir, the unpacked working dir was replaced
    while the job ran and the late ``import decord`` died in ``os.getcwd()`` after every
    video had been scored. So the job calls this at start-up and hands the result to
    ``build_summary``, which imports nothing.
    """
    import ray
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}
    try:
        import decord

        versions["decord"] = decord.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def build_summary(
    table: pa.Table,
    *,
    dataset: str,
    model: str,
    views: int,
    protocol: str,
    checkpoint: str,
    checkpoint_sha256: str,
    wall_s: float,
    workers: list[dict[str, Any]],
    output: str,
    versions: dict[str, str],
    videos_done: int | None = None,
    clips_done: int | None = None,
    published_on: str | None = None,
    startup_s: float = 0.0,
    generate_s: float = 0.0,
    scoring_s: float | None = None,
) -> dict[str, Any]:
    """The summary.json dict (its keys: ``jobs.schemas.SUMMARY_KEYS``).

    ``videos_done``/``clips_done``: what this invocation scored (a resumed run finds the rest of
    ``table`` already done). Default: all of ``table``. Times are this invocation's: ``wall_s``
    the whole command, split into ``startup_s`` (imports, checks, weights, cluster and actors),
    ``generate_s`` (making the sample videos) and ``scoring_s`` (the pipeline, from the first
    decode to the last row), which the rates are taken over (``wall_s`` when not given).
    ``published_on``: the dataset's tag (``DatasetSpec.published``); only the preset's results
    measured on it are set beside the run, none when it is None. ``versions``:
    ``collect_versions()``, called when the job started (nothing is imported at the end)."""
    preset = x3d.get_preset(model)
    acc = accuracy_from_table(table)
    if videos_done is None:
        videos_done = table.num_rows
    if clips_done is None:
        clips_done = int(sum(v for v in table.column("num_views").to_pylist()))
    rate_s = wall_s if scoring_s is None else scoring_s
    published = preset.published_for(views, protocol, dataset=published_on) if published_on else []
    summary: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "views": views,
        "protocol": protocol,
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha256,
        **acc,
        # fractions, like top1_acc (the model cards print percentages)
        "published": [
            {"source": p.source, "dataset": p.dataset, "protocol": p.protocol, "views": p.views,
             "top1_acc": round(p.top1 / 100.0, 6), "top5_acc": None if p.top5 is None else round(p.top5 / 100.0, 6)}
            for p in published
        ],
        "videos_this_run": videos_done,
        "wall_s": round(wall_s, 3),
        "startup_s": round(startup_s, 3),
        "generate_s": round(generate_s, 3),
        "scoring_s": round(rate_s, 3),
        "videos_per_s": round(videos_done / rate_s, 3) if rate_s > 0 and videos_done else None,
        "clips_per_s": round(clips_done / rate_s, 3) if rate_s > 0 and videos_done else None,
        "num_workers": len(workers),
        "accelerators": sorted({w.get("accelerator", "cpu") for w in workers}),
        "workers": [{k: w.get(k) for k in ("worker", "node", "device", "gpu_ids")} for w in workers],
        "versions": dict(versions),
        "output": output,
    }
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def summary_table(summary: dict[str, Any]) -> str:
    """The accuracy table printed at the end of a run: ours beside the published numbers."""
    rows = [("this run", summary["protocol"], _pct(summary["top1_acc"]), _pct(summary["top5_acc"]), _pct(summary["mean_class_acc"]))]
    if summary.get("num_failed"):  # the scored videos alone flatter a run that lost some: both are shown
        rows[0] = (f"this run, {summary['num_ok']} scored videos", *rows[0][1:])
        rows.append((f"this run, all {summary['num_videos']} (failed = miss)", summary["protocol"], _pct(summary["top1_acc_with_failures"]),
                     _pct(summary["top5_acc_with_failures"]), _pct(summary["mean_class_acc_with_failures"])))
    for p in summary["published"]:
        rows.append((p["source"], p["protocol"], _pct(p["top1_acc"]), _pct(p["top5_acc"]), "n/a"))
    header = ("", "protocol", "top-1 %", "top-5 %", "mean class %")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def fmt(row: tuple) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"

    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]
    return "\n".join(lines)


def times_text(times: dict[str, Any]) -> str:
    """How long a command took and where the time went, said the same way by evaluate and label:
    ``this run: 120 videos in 30.1 s (start-up 8.0 s, sample generation 2.0 s, scoring 20.1 s)``
    (the videos this invocation processed, failed ones included; a resumed run's earlier ones not)."""
    parts = [f"start-up {times['startup_s']:.1f} s"]
    if times.get("generate_s"):
        parts.append(f"sample generation {times['generate_s']:.1f} s")
    parts.append(f"scoring {times['scoring_s']:.1f} s")
    return f"this run: {times['videos_this_run']} videos in {times['wall_s']:.1f} s ({', '.join(parts)})"


#: failed videos named on stderr at the end of a run; the rest are in the error rows
FAILURES_SHOWN = 5


def failure_lines(failures: Sequence[tuple[str, str]], total: int, where: str, job: str = "evaluate") -> list[str]:
    """What stderr says about the failed videos: up to ``FAILURES_SHOWN`` of ``failures`` (video,
    error) with their errors, and where all ``total`` of them are recorded."""
    if not total:
        return []
    lines = [f"{job}: {total} video{'s' if total > 1 else ''} failed:"]
    for video, error in failures[:FAILURES_SHOWN]:
        lines.append(f"  {error if video in error else f'{video}: {error}'}")
    rest = total - min(total, len(failures), FAILURES_SHOWN)
    more = f"{rest} more not listed here; " if rest else ""
    lines.append(f"{job}: {more}every failed video has an error row in {where}")
    return lines


def _or_na(value: Any) -> str:
    return "n/a" if value is None else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    s = summary
    failures = (
        f"with the {s['num_failed']} failed videos counted as misses: top-1 {_pct(s['top1_acc_with_failures'])} %, "
        f"top-5 {_pct(s['top5_acc_with_failures'])} %, mean class {_pct(s['mean_class_acc_with_failures'])} %"
    )
    return "\n".join(
        [
            f"# {s['model']} on {s['dataset']}, {s['views']} views ({s['protocol']})",
            "",
            summary_table(s),
            "",
            f"- videos: {s['num_videos']} ({s['num_ok']} scored, {s['num_failed']} failed); {failures}",
            f"- checkpoint: `{s['checkpoint']}` (sha256 `{s['checkpoint_sha256'][:16]}…`)",
            f"- {times_text(s)}; {_or_na(s['videos_per_s'])} videos/s, {_or_na(s['clips_per_s'])} clips/s while scoring "
            f"on {s['num_workers']} model worker(s): {', '.join(s['accelerators']) or 'none'}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()),
            "",
        ]
    )
