"""Reading frames: decord for videos, Pillow for MMAction2 rawframe folders.

Only the frames the sampler asks for are decoded, in ascending order with duplicates
removed: overlapping clips would otherwise make decord seek backwards, which costs several
times the decode itself. Every failure (missing, empty, truncated, not a video) surfaces as
one ``DecodeError`` with a short message; the caller decides whether that is a row or a crash.

decord can still hang or abort inside native code on rare corrupt files; this module cannot
guard against that from inside the same process. The Ray job runs it in killable tasks with a
wall-clock timeout (cluster/), which is where that hazard is handled.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Union

import numpy as np

__all__ = ["DecodeError", "VideoSource", "RawFrames", "VideoInfo", "probe", "read_frames"]


class DecodeError(Exception):
    """A video (or frame folder) that cannot be decoded. The message is one line."""


@dataclass(frozen=True)
class RawFrames:
    """An MMAction2 rawframe folder: ``load(i)`` returns the JPEG bytes of 0-based frame i."""

    load: Callable[[int], bytes]
    num_frames: int
    name: str = "<rawframes>"
    fps: float | None = None


VideoSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, RawFrames]


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float | None


def _describe(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, RawFrames):
        return source.name
    return "<in-memory video>"


def _open_decord(source: VideoSource):
    import decord  # imported lazily: importing x3d must not require the decoder

    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise DecodeError(f"{name}: no such file")
        if os.path.getsize(path) == 0:
            raise DecodeError(f"{name}: empty file")
        target: object = path
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise DecodeError(f"{name}: empty file")
        target = io.BytesIO(source)
    else:
        target = source
    try:
        reader = decord.VideoReader(target, num_threads=1)
        if len(reader) <= 0:
            raise DecodeError(f"{name}: no video frames")
        return reader
    except DecodeError:
        raise
    except Exception as exc:  # decord raises RuntimeError / DECORDError with native log text
        raise DecodeError(f"{name}: not a readable video ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[-1] if text else type(exc).__name__
    return line if len(line) < 160 else line[:157] + "..."


def probe(source: VideoSource) -> VideoInfo:
    """Frame count and average fps as decord reports them (what MMAction2's sampler uses)."""
    if isinstance(source, RawFrames):
        return VideoInfo(source.num_frames, source.fps)
    reader = _open_decord(source)
    return VideoInfo(len(reader), float(reader.get_avg_fps()) or None)


def read_frames(
    source: VideoSource,
    indices_for: Callable[[VideoInfo], np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray, VideoInfo]:
    """Decode the frames ``indices_for(info)`` asks for.

    Returns ``(frames, inverse, info)`` where ``frames`` holds each distinct frame once in
    ascending order (after ``transform``, e.g. the resize, applied chunk by chunk so full-size
    frames never pile up) and ``frames[inverse]`` has the shape of the requested indices.
    """
    name = _describe(source)
    reader = None if isinstance(source, RawFrames) else _open_decord(source)
    info = probe(source) if reader is None else VideoInfo(len(reader), float(reader.get_avg_fps()) or None)
    wanted = np.asarray(indices_for(info))
    unique, inverse = np.unique(wanted, return_inverse=True)
    parts = []
    for start in range(0, unique.size, chunk):
        block = unique[start : start + chunk]
        try:
            frames = _decode_block(reader, source, block)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"{name}: decoding failed at frames {block[0]}-{block[-1]} ({_first_line(exc)})") from None
        if frames.ndim != 4 or frames.shape[0] != block.size or frames.shape[-1] != 3:
            raise DecodeError(f"{name}: decoder returned {frames.shape} for {block.size} frames")
        parts.append(transform(frames) if transform is not None else frames)
    return np.concatenate(parts), inverse.reshape(wanted.shape), info


def _decode_block(reader, source: VideoSource, block: np.ndarray) -> np.ndarray:
    if reader is not None:
        return reader.get_batch(block.tolist()).asnumpy()
    assert isinstance(source, RawFrames)
    from PIL import Image

    frames = []
    for i in block.tolist():
        data = source.load(int(i))
        with Image.open(io.BytesIO(data)) as img:
            frames.append(np.asarray(img.convert("RGB")))
    return np.stack(frames)
