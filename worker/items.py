"""What travels from the driver to a decode task: one video (or frame folder) to score."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VideoItem"]


@dataclass(frozen=True)
class VideoItem:
    """One video (or frame folder) to score.

    `key` is the path exactly as the annotation wrote it and becomes the `video` column of
    the results, so rows can be matched against the annotation file; `uri` is where to read it.
    """

    key: str
    uri: str
    label: int | None
    num_frames: int | None = None  # rawframes only: frames are img_00001.jpg .. img_{n:05d}.jpg
    kind: str = "video"  # "video" | "rawframes"
