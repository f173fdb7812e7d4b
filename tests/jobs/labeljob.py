"""The label tests' tiny model and helpers (the `checkpoint` fixture is in tests/jobs/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import x3d
from jobs.label import LabelConfig, read_labels
from tests.videos import write_video

LABEL_TEST = x3d.register_preset(
    x3d.Preset(
        name="x3d_label_test",
        arch=x3d.Architecture(base_width=8, base_depths=(1, 1, 1, 1), head_hidden=16, num_classes=400),
        protocols={"mmaction2": x3d.TestProtocol("mmaction2", clip_len=4, frame_interval=2, num_clips=10, resize_short=32, crop_size=32)},
        weights=(),
        published=(),
    )
)


def write_label_videos(folder: Path, count: int, start_seed: int = 0) -> list[Path]:
    return [write_video(folder / f"clip_{i:02d}.mp4", 24 + 3 * i, 40, 56, 25, seed=start_seed + i) for i in range(count)]


def label_config(input_: str, output: str, checkpoint: str, **kw) -> LabelConfig:
    return LabelConfig(input=input_, output=output, model="x3d_label_test", checkpoint=checkpoint, views=1, shard_size=2, quiet=True, **kw)


def label_versions(output: str) -> list[tuple[str, str, int]]:
    """(video, version, attempt) of every row ever written: a duplicate would be a double row."""
    table = read_labels(output, latest_only=False)
    return list(zip(*(table.column(c).to_pylist() for c in ("video", "version", "attempt"))))
