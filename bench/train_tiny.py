#!/usr/bin/env python
"""Train the bundled ``x3d_tiny`` model on the synthetic sample dataset, reproducibly, on a CPU.

    python bench/train_tiny.py               # full run (48 min on 2 cores); ships x3d/data/x3d_tiny_sample.pth
    python bench/train_tiny.py --quick       # smoke run on a small subset; writes nothing unless --out
    python bench/train_tiny.py --steps 200 --out /tmp/tiny.pth

Every training video is decoded once up front, by the job's own decord path (``read_frames``
plus the protocol's short-side resize), and kept as uint8 frames. Each step then cuts random
clips from them: the protocol's clip length and frame interval at a jittered speed, a random
64 px crop (covering where the test's centre and three crops fall), and flips and time reversal
with the label remapped (a mirrored "moving left" is "moving right"). Plain AdamW with warm-up
and cosine decay, fixed seeds, deterministic kernels, 2 threads.

Validation then runs ``x3d.predict_video``, the code path the job uses, at 10 and 30 views, on
the val split and on the same videos with their frames shuffled (a control: it keeps every frame
and destroys the motion, so it should fall towards chance). The checkpoint is written in
MMAction2 layout and its sha256 printed; its first 8 hex digits and the top-1 numbers go into
x3d/tiny.py by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import x3d  # noqa: E402
import x3d.tiny  # noqa: E402,F401  (registers the x3d_tiny preset)
from x3d import sample_data  # noqa: E402
from x3d.decode import read_frames  # noqa: E402
from x3d.protocol import normalize, resize_frames  # noqa: E402

PRESET = "x3d_tiny"
DEFAULT_OUT = ROOT / "x3d" / "data" / "x3d_tiny_sample.pth"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch_size: int = 16
    lr: float = 5e-3
    weight_decay: float = 0.05
    warmup: int = 40
    label_smoothing: float = 0.1
    speed_jitter: float = 0.25  # the clip spans its nominal time x U(1 - j, 1 + j)
    seed: int = 0


@dataclass
class Video:
    """All frames of one video, resized so the short side is the protocol's, uint8 (N, h, w, 3)."""

    frames: np.ndarray
    fps: float
    label: int


def setup_torch(threads: int = 2, seed: int = 0) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def decode_videos(root: Path, rows: list[tuple[str, int]], preset: str = PRESET) -> list[Video]:
    """Each listed video decoded once, every frame, through the job's decode-and-resize path."""
    proto = x3d.get_preset(preset).protocol()
    videos = []
    for rel, label in rows:
        frames, inverse, info = read_frames(
            root / rel,
            lambda info: np.arange(info.num_frames),
            transform=lambda block: resize_frames(block, proto.resize_short),
        )
        videos.append(Video(frames[inverse], info.fps or proto.target_fps, label))
    return videos


def random_clip(video: Video, rng: np.random.Generator, cfg: TrainConfig, preset: str = PRESET) -> tuple[np.ndarray, int]:
    """One augmented training clip ``(T, crop, crop, 3)`` uint8 and its (remapped) label."""
    proto = x3d.get_preset(preset).protocol()
    n, h, w, _ = video.frames.shape
    speed = rng.uniform(1 - cfg.speed_jitter, 1 + cfg.speed_jitter)
    span = max(1.0, proto.clip_len * proto.frame_interval * video.fps / proto.target_fps * speed)
    offset = rng.uniform(0, max(n - span, 0.0))
    index = (offset + np.linspace(0, span - 1, proto.clip_len)).astype(np.int64) % n
    size = proto.crop_size
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    clip = video.frames[index, y : y + size, x : x + size]
    label = video.label
    if rng.uniform() < 0.5:
        clip, label = clip[:, :, ::-1], sample_data.mirrored_class(label)
    if rng.uniform() < 0.5:
        clip, label = clip[:, ::-1], sample_data.flipped_class(label)
    if rng.uniform() < 0.5:
        clip, label = clip[::-1], sample_data.reversed_class(label)
    return np.ascontiguousarray(clip), label


def make_batch(videos: list[Video], rng: np.random.Generator, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    picks = rng.integers(0, len(videos), cfg.batch_size)
    clips, labels = zip(*(random_clip(videos[i], rng, cfg) for i in picks))
    return torch.from_numpy(np.stack(clips)), torch.tensor(labels)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(model: torch.nn.Module, videos: list[Video], cfg: TrainConfig, log_every: int = 50) -> list[float]:
    """Train in place; returns the loss of every step."""
    proto = x3d.get_preset(PRESET).protocol()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        clips, labels = make_batch(videos, rng, cfg)
        loss = F.cross_entropy(model(normalize(clips, proto)), labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == cfg.steps):
            recent = np.mean(losses[-log_every:])
            print(f"  step {step + 1:4d}/{cfg.steps}  loss {recent:.3f}  {time.perf_counter() - start:5.0f} s", flush=True)
    model.eval()
    return losses


def evaluate(model: torch.nn.Module, root: Path, rows: list[tuple[str, int]], views: int) -> tuple[float, np.ndarray]:
    """Top-1 (%) and the confusion matrix, scoring each video with ``x3d.predict_video``."""
    classes = len(x3d.get_preset(PRESET).classes)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    with torch.inference_mode():
        for rel, label in rows:
            probs = x3d.predict_video(model, root / rel, PRESET, views=views)
            confusion[label, int(np.argmax(probs))] += 1
    return 100.0 * np.trace(confusion) / max(confusion.sum(), 1), confusion


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> Path:
    try:
        from x3d.checkpoints import save_mmaction2_checkpoint
    except ImportError:  # pragma: no cover - bootstrap, before checkpoints.py existed
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
        return path
    return save_mmaction2_checkpoint(model, path, meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help=f"training steps [{TrainConfig.steps}; --quick: 60]")
    parser.add_argument("--out", type=Path, help=f"checkpoint to write [{DEFAULT_OUT.relative_to(ROOT)}; --quick: none]")
    parser.add_argument("--quick", action="store_true", help="small subset (100 train, 40 val videos) in a temporary cache")
    parser.add_argument("--cache-dir", type=Path, help="dataset cache [$X3D_CACHE or ~/.cache/x3d]")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    setup_torch(args.threads, args.seed)
    cfg = TrainConfig(steps=args.steps or (60 if args.quick else TrainConfig.steps), seed=args.seed)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    t0 = time.perf_counter()

    if args.quick:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="x3d-tiny-quick-"))
        for split, size in (("train", 100), ("val", 40)):
            sample_data.generate_sample_dataset(root, split, size, workers=args.threads)
        sample_data.generate_sample_dataset(root, "val", 40, shuffle_frames=True, workers=args.threads)
    else:
        root = sample_data.ensure_sample_dataset(
            args.cache_dir, splits=("train", "val"), shuffled=True, workers=args.threads, verbose=True
        )
    t_data = time.perf_counter() - t0
    train_rows = sample_data.read_video_list(sample_data.list_file(root, "train"))
    val_rows = sample_data.read_video_list(sample_data.list_file(root, "val"))
    shuffled_rows = sample_data.read_video_list(sample_data.list_file(root, "val", shuffled=True))
    print(f"data: {len(train_rows)} train, {len(val_rows)} val videos in {root} ({t_data:.1f} s)", flush=True)

    t1 = time.perf_counter()
    videos = decode_videos(root, train_rows)
    t_decode = time.perf_counter() - t1
    mib = sum(v.frames.nbytes for v in videos) / 2**20
    print(f"decoded {len(videos)} training videos once: {mib:.0f} MiB uint8 ({t_decode:.1f} s)", flush=True)

    model = x3d.build_model(PRESET)
    params = sum(p.numel() for p in model.parameters())
    print(f"training {PRESET} ({params:,} parameters): {asdict(cfg)}", flush=True)
    t2 = time.perf_counter()
    losses = train(model, videos, cfg)
    t_train = time.perf_counter() - t2
    del videos

    t3 = time.perf_counter()
    results = {}
    for name, rows, views in (("val", val_rows, 10), ("val", val_rows, 30), ("val_shuffled", shuffled_rows, 10), ("val_shuffled", shuffled_rows, 30)):
        top1, confusion = evaluate(model, root, rows, views)
        results[f"{name}_top1_{views}v"] = round(top1, 2)
        print(f"{name:12s} {views:2d} views: top-1 {top1:5.1f} %  ({len(rows)} videos)", flush=True)
        if name == "val" and views == 10 and top1 < 100:
            print("  confusion (row = true class):\n" + "\n".join("  " + " ".join(f"{c:3d}" for c in row) for row in confusion))
    t_eval = time.perf_counter() - t3

    timing = {"data_s": round(t_data, 1), "decode_s": round(t_decode, 1), "train_s": round(t_train, 1), "eval_s": round(t_eval, 1)}
    print(f"time: {timing} total {time.perf_counter() - t0:.0f} s", flush=True)
    if out is not None:
        meta = {
            "preset": PRESET,
            "dataset": sample_data.VERSION,
            "classes": list(sample_data.CLASSES),
            "config": asdict(cfg),
            "train_videos": len(train_rows),
            "final_loss": round(float(np.mean(losses[-50:])), 4),
            "parameters": params,
            **results,
        }
        path = save_checkpoint(model, Path(out), meta)
        sha = file_sha256(path)
        print(f"checkpoint: {path} ({path.stat().st_size / 1024:.0f} KiB) sha256 {sha} (prefix {sha[:8]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
