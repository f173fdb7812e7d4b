"""Tiny real video files for tests, encoded with PyAV and read back by decord."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from x3d.sample_data import encode_video


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3) frames with texture and motion, so every frame differs."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height + num_frames, width + num_frames, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = base[t : t + height, t : t + width].copy()
        frame[..., 0] = ((xx + 3 * t) * 255 // max(width, 1)) % 256
        frames[t] = frame
    return frames


def write_video(
    path: str | Path,
    num_frames: int = 40,
    height: int = 48,
    width: int = 64,
    fps: int = 30,
    seed: int = 0,
    frames: np.ndarray | None = None,
    codec: str = "libx264",
) -> Path:
    """Encode frames (default: ``moving_frames``) to an MP4 file and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = frames if frames is not None else moving_frames(num_frames, height, width, seed)
    options = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else None
    return encode_video(data, fps, path, codec=codec, options=options)


def write_broken_videos(folder: str | Path, good: Path) -> dict[str, Path]:
    """Zero-byte, truncated and non-video files beside a good one (missing is just a name)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {
        "zero": folder / "zero.mp4",
        "truncated": folder / "truncated.mp4",
        "text": folder / "not_a_video.mp4",
        "missing": folder / "missing.mp4",
    }
    files["zero"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["text"].write_bytes(b"this is not a video\n" * 50)
    return files
