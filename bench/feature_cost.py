"""What ``--save-features`` costs: model-half videos/s with and without, and bytes per stored video.

Speed: the Ray job's own model half (``worker.model_runner.ModelRunner``, CPU, BatchNorm folded,
cache-sized batches) scores the same synthetic videos without and with a feature kind
(``ModelRunner(feature_kind=...)``), alternating call by call (the order flips every repeat) so that load on
a shared machine falls on both; videos/s is the median over repeats. Decoding is not timed:
it does not change with features.

Bytes: label shards (``jobs.label._write_rows``, the job's writer: zstd Parquet) of ``--rows``
rows, written once without and once with ``features``; the vectors are real outputs of the model
(each view's vector of ``--pool`` videos stands in for one video, so they differ as videos'
vectors do; one row per distinct vector, as repeated vectors would compress and real ones do not). The difference per row is the storage a night's videos add; ``--plan`` counts the
raw ``dim x dtype`` bytes.

    python bench/feature_cost.py                                  # x3d_tiny (trained) and X3D-S (random), 10 views
    python bench/feature_cost.py --models x3d_s --views 10 --videos 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import x3d  # noqa: E402
from jobs.features import FeatureLayout, vector_values  # noqa: E402
from jobs.label import _write_rows  # noqa: E402
from jobs.machine import cpu_model, load_average_text  # noqa: E402
from worker.spec import ModelSpec  # noqa: E402
from worker.model_runner import ModelRunner  # noqa: E402
from x3d.tiny import TINY_CHECKPOINT  # noqa: E402


def _payloads(preset: x3d.Preset, views: int, videos: int, seed: int) -> list[np.ndarray]:
    """uint8 views ``(V, T, crop, crop, 3)`` per video: smooth random scenes, not noise."""
    proto = preset.protocol()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(videos):
        coarse = rng.integers(0, 256, (views, proto.clip_len, 8, 8, 3), dtype=np.uint8)
        big = torch.from_numpy(coarse).permute(0, 4, 1, 2, 3).float()
        smooth = torch.nn.functional.interpolate(big, size=(proto.clip_len, proto.crop_size, proto.crop_size), mode="trilinear")
        out.append(smooth.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous().numpy())
    return out


def _row(i: int, vector: np.ndarray | None, layout: FeatureLayout | None) -> dict:
    row = {
        "video": f"s3://bucket/videos/2026/12/04/clip_{i:08d}.mp4", "version": f"etag:{i:032x}",
        "labels": ["playing guitar", "strumming guitar", "playing ukulele", "busking", "singing"],
        "scores": [0.61, 0.2, 0.08, 0.05, 0.02], "pred": 3, "error": None, "attempt": 1, "etag": f"{i:032x}", "size": 1_000_000 + i,
        "mtime": 1.76e9 + i, "model": "x3d_s", "checkpoint_sha256": "ab" * 32, "views": 10, "run_id": "20261204T010000Z-abcdef",
        "decode_ms": 100.0 + i % 50, "infer_ms": 30.0 + i % 7, "worker": "10.0.0.1:1234",
    }
    if layout is not None:
        row["features"] = vector_values(vector, layout)
    return row


def _shard_bytes(rows: int, vectors: np.ndarray, layout: FeatureLayout | None) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "part.parquet"
        _write_rows(str(path), [_row(i, vectors[i % len(vectors)], layout) for i in range(rows)], layout)
        return path.stat().st_size


def measure(model: str, views: int, videos: int, repeats: int, threads: int, rows: int, pool: int) -> list[str]:
    preset = x3d.get_preset(model)
    torch.manual_seed(0)
    if model == "x3d_tiny":
        state = x3d.load_model(preset, str(TINY_CHECKPOINT)).state_dict()
        weights = "trained (x3d/data)"
    else:
        state = x3d.build_model(preset).state_dict()
        weights = "random"
    spec = ModelSpec(preset, views)
    plain = ModelRunner(spec, state, device="cpu", threads=threads)
    featured = ModelRunner(spec, state, device="cpu", threads=threads, feature_kind="backbone")
    payloads = _payloads(preset, views, videos, seed=1)
    plain.score(payloads[:1])  # warm-up, both
    featured.score(payloads[:1])
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(repeats):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            start = time.perf_counter()
            if mode == "off":
                plain.score(payloads)
            else:
                featured.score(payloads)
            rates[mode].append(videos / (time.perf_counter() - start))
    # per-view vectors of ``pool`` more videos: real outputs of the model, one per stored "video"
    proto = preset.protocol()
    clips = np.concatenate(_payloads(preset, views, pool, seed=2))
    _, per_view = x3d.features.predict_clips_with_features(featured.model, clips, proto, "backbone",
                                                            featured.batch_size, channels_last=featured.channels_last)
    vectors = per_view.numpy()
    dim = vectors.shape[1]
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    rows = min(rows, len(vectors))  # distinct vectors only: repeated ones would compress as real ones do not
    base = _shard_bytes(rows, vectors, None)
    lines = []
    for dtype in ("float16", "float32"):
        layout = FeatureLayout("backbone", dtype, dim)
        extra = (_shard_bytes(rows, vectors, layout) - base) / rows
        lines.append(
            f"| {model} | {weights} | {views} | {dim} | {dtype} | {layout.bytes_per_video} | {rows} | {base / rows:.0f} | {extra:.0f} "
            f"| {off:.2f} | {on:.2f} | {on / off:.3f} | {min(rates['off']):.2f}-{max(rates['off']):.2f} / {min(rates['on']):.2f}-{max(rates['on']):.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="x3d_tiny,x3d_s")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--videos", type=int, default=None, help="videos per timed call [tiny: 16, others: 2]")
    parser.add_argument("--pool", type=int, default=None, help="videos whose per-view vectors fill the label shard [tiny: 64, others: 16]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4096, help="rows of the label shard whose bytes are measured (at most one per distinct vector)")
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, torch {torch.__version__}, {args.threads} threads, load average {load_average_text()} (start)")
    print("| model | weights | views | dim | dtype | raw B/video | rows | label row B (zstd, no features) | extra B/video (zstd) "
          "| videos/s off | videos/s on | on/off | range off / on |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        videos = args.videos or (16 if model == "x3d_tiny" else 2)
        pool = args.pool or (64 if model == "x3d_tiny" else 16)
        for line in measure(model, args.views, videos, args.repeats, args.threads, args.rows, pool):
            print(line, flush=True)
    print(f"load average {load_average_text()} (end)")


if __name__ == "__main__":
    main()
