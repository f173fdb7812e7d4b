"""Reading pre-extracted frames (MMAction2 "rawframes") one JPEG at a time.

A rawframe dataset stores each video as a folder of `img_00001.jpg ... img_NNNNN.jpg`
(1-based, protocol section 4.2). Test-time sampling needs only a few dozen of those
frames, so instead of handing the decoder a folder we hand it a loader: frame index in,
JPEG bytes out. The decoder (`x3d/decode.py`) picks the indices and decodes just those
with Pillow; where the frames live, on disk or in S3, stays this module's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from x3d import storage
from worker.items import VideoItem

__all__ = ["FRAME_TEMPLATE", "RawframeLoader", "rawframe_loader"]

FRAME_TEMPLATE = "img_{:05d}.jpg"  # MMAction2's filename_tmpl, formatted with a 1-based index


@dataclass(frozen=True)
class RawframeLoader:
    """Frame index (0-based) -> JPEG bytes. A plain dataclass so it pickles into Ray tasks."""

    frame_dir: str
    num_frames: int | None
    template: str = FRAME_TEMPLATE

    def frame_uri(self, index: int) -> str:
        """Where 0-based frame `index` is stored."""
        if index < 0 or (self.num_frames is not None and index >= self.num_frames):
            raise IndexError(f"{self.frame_dir}: frame {index} out of range ({self.num_frames} frames)")
        return storage.join(self.frame_dir, self.template.format(index + 1))

    def __call__(self, index: int) -> bytes:
        return storage.read_bytes(self.frame_uri(index))


def rawframe_loader(item: VideoItem) -> Callable[[int], bytes]:
    """A loader for the frames of a `rawframes` item, local or on S3."""
    if item.kind != "rawframes":
        raise ValueError(f"{item.key}: not a rawframes item (kind={item.kind!r})")
    return RawframeLoader(item.uri, item.num_frames)
