"""Reading frames: decord for videos, Pillow for MMAction2 rawframe folders.

Only the frames the sampler asks for are decoded, in ascending order with duplicates
removed: overlapping clips would otherwise make decord seek backwards, which costs several
times the decode itself. Every failure (missing, empty, truncated, not a video) surfaces as
one ``DecodeError`` with a short message; the caller decides whether that is a row or a crash.

decord is the decoder because it is MMAction2's: its frame count, fps and frames are what the
published scores were measured on. When decord cannot read a valid video (tiny sizes such as
16x16 trip a buffer-size check in decord 0.6; codecs its bundled FFmpeg lacks, such as AV1),
that one video is decoded with PyAV instead, keeping decord's rules: frame i is the i-th frame
in presentation order, and the count and fps are decord's, or computed the way decord computes
them (the stream's frame count, else average rate x duration) when decord cannot open the file
at all. On videos both can read, the two give identical RGB frames (tests/x3d/test_decode_edge.py);
the fallback still runs only when decord fails, so a video decord reads is always decord's.

Where decord's random access is inexact the order of the requests changes the frames it returns
(issue 31): files with open GOPs (MPEG-4 part 2 and MPEG-2 with B-frames as their encoders write
them, H.264 encoded with open GOPs), MP4s whose edit list hides frames the header counts (a cut
made with ``ffmpeg -c copy``, a trim that only rewrote the edit list) and containers whose frame
count is not the number of frames they show. ``access_hazard`` finds them from the packets alone
(no decoding), and there the frames are read the way MMAction2 reads them, one ``get_batch`` of
the clip-ordered indices (duplicates included) on a reader opened from the file's bytes, so the
scores are MMAction2's; ``frames="true"`` reads the frames the protocol names instead, decoded in
order. Elsewhere the fast path above gives the same bytes as MMAction2's call. ``VideoInfo.read``
says which way a video's frames were read.

decord and FFmpeg print their own diagnostics on stderr; ``quiet_native_logs`` silences them
for a process whose job is decoding (the DecodeError says what went wrong, once).

decord can still hang or abort inside native code on rare corrupt files; this module cannot
guard against that from inside the same process. The Ray job runs it in killable tasks with a
wall-clock timeout (cluster/), which is where that hazard is handled.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Union

import numpy as np

__all__ = [
    "DecodeError",
    "FRAME_MODES",
    "READ_WAYS",
    "VideoSource",
    "RawFrames",
    "VideoInfo",
    "access_hazard",
    "probe",
    "quiet_native_logs",
    "read_frames",
]

#: Which frames a video gives: MMAction2's (what its own pipeline reads, exact or not) or the
#: true ones (the i-th frame shown, for every index the protocol names).
FRAME_MODES = ("mmaction2", "true")

#: How a video's frames were read (``VideoInfo.read``, the output rows' ``frames_read``):
#: ``fast`` the distinct indices ascending, in chunks (where that gives MMAction2's bytes);
#: ``mmaction2`` one get_batch of the clip-ordered indices on the file's bytes, as MMAction2;
#: ``sequential`` decoded in order with PyAV (``frames="true"`` where random access is inexact);
#: ``pyav`` the fallback for videos decord cannot read; ``rawframes`` JPEG frame folders.
READ_WAYS = ("fast", "mmaction2", "sequential", "pyav", "rawframes")


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
    read: str = field(default="", compare=False)  # how the frames were read (READ_WAYS); "" for a probe


#: What a reader is asked for: the frame indices wanted of a video of this count and fps (any shape).
IndicesFor = Callable[[VideoInfo], np.ndarray]
#: Applied to each decoded block of frames (n, H, W, 3) as it comes, e.g. the resize; None: kept as decoded.
Transform = Callable[[np.ndarray], np.ndarray] | None
#: What every reader returns: each distinct frame once, the index into them of every place asked
#: for (the shape of the indices), and how the video was read.
Decoded = tuple[np.ndarray, np.ndarray, VideoInfo]


def _describe(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, RawFrames):
        return source.name
    return "<in-memory video>"


# --------------------------------------------------------------------------- native logs

_quiet = False
_mute_lock = threading.Lock()
_mute_depth = 0
_saved_stderr: int | None = None


def quiet_native_logs() -> None:
    """Keep decord's and FFmpeg's own messages off stderr in this process, from now on.

    Three sources print there: decord's FFmpeg (silenced by ``decord.logging.QUIET``), PyAV's
    FFmpeg (silent unless ``av.logging`` is given a level; left so) and decord's C++ logging,
    which writes lines such as ``video_reader.cc:83: ERROR opening: ...`` straight to file
    descriptor 2 whatever the level. For that last one the native calls run with fd 2 pointed
    at /dev/null. fd 2 is process-wide, so this is for processes whose work is decoding (a
    decode worker, one video at a time); anyone else keeps the messages unless they call it.
    """
    global _quiet
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except (ImportError, AttributeError):  # pragma: no cover - decord missing or too old
        pass
    _quiet = True


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """fd 2 goes to /dev/null around a native call, once ``quiet_native_logs`` has been called.

    Re-entrant and shared between threads: the first caller in redirects, the last one out
    restores, so overlapping decodes in one process never restore each other's stderr early.
    """
    global _mute_depth, _saved_stderr
    if not _quiet:
        yield
        return
    with _mute_lock:
        if _mute_depth == 0:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            _saved_stderr = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _mute_depth += 1
    try:
        yield
    finally:
        with _mute_lock:
            _mute_depth -= 1
            if _mute_depth == 0 and _saved_stderr is not None:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = None


# --------------------------------------------------------------------------- decoders


def _checked_target(source: VideoSource) -> object:
    """What the decoders open; a missing or empty file is an error before any decoder runs."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise DecodeError(f"{name}: no such file")
        if os.path.getsize(path) == 0:
            raise DecodeError(f"{name}: empty file")
        return path
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise DecodeError(f"{name}: empty file")
        return bytes(source)
    return source


def _fresh(target: object) -> object:
    """A new handle on the target for one decoder: decoders consume and close file objects."""
    if isinstance(target, bytes):
        return io.BytesIO(target)
    if hasattr(target, "seek"):
        target.seek(0)  # type: ignore[union-attr]
    return target


class _DecordFailed(Exception):
    """decord could not read this video; the PyAV fallback gets its turn."""


class _Decord:
    """decord, MMAction2's decoder: the reference for frame count, fps and pixels."""

    def __init__(self, target: object):
        import decord  # imported lazily: importing x3d must not require the decoder

        try:
            with _native_stderr_muted():
                self._reader = decord.VideoReader(_fresh(target), num_threads=1)
                self.info = VideoInfo(len(self._reader), float(self._reader.get_avg_fps()) or None)
        except Exception as exc:  # decord raises RuntimeError / DECORDError with native log text
            raise _DecordFailed(_first_line(exc)) from None

    def frames(self, block: np.ndarray) -> np.ndarray:
        try:
            with _native_stderr_muted():
                frames = self._reader.get_batch(block.tolist()).asnumpy()
        except Exception as exc:
            raise _DecordFailed(_first_line(exc)) from None
        if frames.ndim != 4 or frames.shape[0] != block.size or frames.shape[-1] != 3:
            raise _DecordFailed(f"decord returned {frames.shape} for {block.size} frames")
        return frames


class _PyAV:
    """PyAV (FFmpeg) for the videos decord cannot read, with decord's counting rules."""

    def __init__(self, target: object, name: str, info: VideoInfo | None):
        import av

        self._av = av
        self.name = name
        try:
            with _native_stderr_muted():
                self._container = av.open(_fresh(target))
        except Exception as exc:
            raise DecodeError(f"{name}: not a readable video ({_av_reason(exc)})") from None
        self._stream = self._video_stream()
        self.info = info or self._decord_info()
        if self.info.num_frames <= 0:
            self.close()
            raise DecodeError(f"{name}: no video frames")

    def _video_stream(self) -> Any:
        streams = list(self._container.streams)
        video = [s for s in streams if s.type == "video"]
        if not video:
            kinds = ", ".join(f"{s.type} {_codec_name(s)}" for s in streams) or "none"
            self.close()
            raise DecodeError(f"{self.name}: no video stream (streams: {kinds})")
        stream = self._container.streams.best("video") or video[0]  # av_find_best_stream, as decord
        if stream.codec_context is None:
            self.close()
            raise DecodeError(f"{self.name}: no decodable video stream (codec {_codec_name(stream)})")
        return stream

    def _decord_info(self) -> VideoInfo:
        """decord 0.6's VideoReader: nb_frames, else avg_frame_rate x duration; fps = avg_frame_rate."""
        rate = self._stream.average_rate
        count = int(self._stream.frames or 0)
        if count < 1 and rate and self._container.duration:
            count = int(float(rate) * self._container.duration / self._av.time_base)
        return VideoInfo(count, float(rate) if rate else None)

    def frames_at(self, unique: np.ndarray) -> Iterator[np.ndarray]:
        """The frames at the ascending indices ``unique``, one (H, W, 3) array each, in one pass."""
        wanted = iter(unique.tolist())
        target = next(wanted, None)
        index = -1
        try:
            with _native_stderr_muted():
                frames = self._container.decode(self._stream)
                for index, frame in enumerate(frames):
                    while target is not None and index == target:
                        yield _shown(frame)
                        target = next(wanted, None)
                    if target is None:
                        return
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"{self.name}: decoding failed at frame {index + 1} ({_av_reason(exc)})") from None
        finally:
            self.close()
        raise DecodeError(f"{self.name}: video ends after {index + 1} frames, {self.info.num_frames} expected")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()


def _shown(frame: Any) -> np.ndarray:
    """A PyAV frame as RGB, turned as its display matrix says: decord returns rotated videos
    upright (a frame of a video rotated 90 degrees is ``np.rot90`` of the coded one)."""
    image = frame.to_ndarray(format="rgb24")
    turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _codec_name(stream: Any) -> str:
    context = stream.codec_context
    if context is not None:
        return context.codec.canonical_name
    with contextlib.suppress(Exception):
        return str(stream.codec.canonical_name)  # PyAV versions without a decoder context
    return "unknown"


def _av_reason(exc: BaseException) -> str:
    """PyAV's message without its errno and file name: 'Invalid data found when processing input'."""
    text = getattr(exc, "strerror", None) or _first_line(exc)
    return str(text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[-1] if text else type(exc).__name__
    return line if len(line) < 160 else line[:157] + "..."


# --------------------------------------------------------------------------- reading


def probe(source: VideoSource) -> VideoInfo:
    """Frame count and average fps as decord reports them (what MMAction2's sampler uses)."""
    if isinstance(source, RawFrames):
        return VideoInfo(source.num_frames, source.fps)
    target = _checked_target(source)
    try:
        info = _Decord(target).info
    except _DecordFailed:
        decoder = _PyAV(target, _describe(source), None)
        decoder.close()
        return decoder.info
    if info.num_frames <= 0:
        raise DecodeError(f"{_describe(source)}: no video frames")
    return info


def read_frames(
    source: VideoSource, indices_for: IndicesFor, transform: Transform = None, chunk: int = 32, frames: str = "mmaction2",
) -> Decoded:
    """Decode the frames ``indices_for(info)`` asks for.

    Returns ``(frames, inverse, info)`` where ``frames`` holds each distinct frame once (after
    ``transform``, e.g. the resize, applied chunk by chunk) and ``frames[inverse]`` has the
    shape of the requested indices. ``frames`` (``FRAME_MODES``): ``"mmaction2"`` gives the
    bytes MMAction2's pipeline reads, ``"true"`` the frames the indices name, decoded in order
    where decord's random access is inexact (``access_hazard``). ``info.read`` says how.
    """
    if frames not in FRAME_MODES:
        raise ValueError(f"frames must be one of {', '.join(FRAME_MODES)}, got {frames!r}")
    if isinstance(source, RawFrames):
        return _read_rawframes(source, indices_for, transform, chunk)
    name = _describe(source)
    target = _checked_target(source)
    info: VideoInfo | None = None
    try:
        decoder = _Decord(target)
        info = decoder.info
        if info.num_frames <= 0:
            raise DecodeError(f"{name}: no video frames")
        hazard = _scan(target, info.num_frames)
        if hazard.reason is not None and frames == "true":
            return _read_sequential(target, name, info.fps, hazard.shown, indices_for, transform, chunk)
        if hazard.reason is not None:
            return _read_mmaction2_order(target, indices_for, transform, chunk)
        unique, inverse = _wanted(indices_for, info)
        blocks = (decoder.frames(unique[i : i + chunk]) for i in range(0, unique.size, chunk))
        return _assemble(blocks, transform), inverse, _read(info, "fast")
    except _DecordFailed:
        pass  # a valid video decord cannot read (tiny sizes, codecs it lacks): try PyAV
    fallback = _PyAV(target, name, info)
    unique, inverse = _wanted(indices_for, fallback.info)
    blocks = _batched(fallback.frames_at(unique), chunk)
    return _assemble(blocks, transform), inverse, _read(fallback.info, "pyav")


def _read(info: VideoInfo, way: str) -> VideoInfo:
    return VideoInfo(info.num_frames, info.fps, read=way)


# --------------------------------------------------------------------------- inexact random access


@dataclass(frozen=True)
class _Hazard:
    reason: str | None  # why decord's random access may depend on the order of requests; None: it does not
    shown: int  # video packets the container shows (edit lists applied): the frames that decode, as far as packets tell


def access_hazard(source: VideoSource) -> str | None:
    """Why reading this video's frames by random access (sorted, in chunks) may give other bytes
    than MMAction2's one clip-ordered ``get_batch``, or None where it gives the same.

    The rule, established on the files of tests/x3d/test_access_order.py: decord seeks to the
    keyframe before a frame and decodes forward, matching frames by their time. That is exact
    but for three kinds of file, found here from the packets alone (no decoding):

    * an open GOP: a packet after a keyframe (in decode order) is shown before it. Its B-frames
      reference the previous GOP, which a seek skipped (MPEG-4 part 2 and MPEG-2 with B-frames as
      FFmpeg's encoders write them by default; H.264 encoded with open GOPs);
    * B-frames (the codec's reorder delay) in a container that stores decode times only (AVI,
      raw streams): the packets' times are guesses, so an open GOP cannot be ruled out;
    * an edit list that hides frames (FFmpeg marks their packets discarded), or a container whose
      frame count (decord's ``len``) is not the number of packets it shows.

    A file PyAV cannot scan counts as a hazard: MMAction2's order is right on every file.
    """
    if isinstance(source, RawFrames):
        return None
    target = _checked_target(source)
    try:
        count = _Decord(target).info.num_frames
    except _DecordFailed:
        return None  # decord cannot read it: MMAction2 cannot either; the PyAV fallback is sequential
    return _scan(target, count).reason


def _scan(target: object, count: int) -> _Hazard:
    """``access_hazard``'s rule on an opened target whose decord count is ``count``; one pass
    over the packets (each is read, none decoded)."""
    import av

    try:
        with _native_stderr_muted():
            container = av.open(_fresh(target))
    except Exception:
        return _Hazard("the container could not be scanned", count)
    reason: str | None = None
    shown = discarded = 0
    try:
        with _native_stderr_muted():
            stream = container.streams.best("video")
            if stream is None:
                return _Hazard("no video stream to scan", count)
            context = stream.codec_context
            b_frames = bool(context is not None and context.has_b_frames)
            if b_frames and _decode_times_only(container):
                reason = "B-frames in a container without presentation times"
            key_pts = None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.is_discard:
                    discarded += 1
                    continue
                shown += 1
                if reason is not None:
                    continue  # only counting now
                if packet.pts is None:
                    continue
                if packet.is_keyframe:
                    key_pts = packet.pts
                elif key_pts is not None and packet.pts < key_pts:
                    reason = "open GOP: a frame after a keyframe is shown before it"
    except Exception:
        return _Hazard("the container could not be scanned", count)
    finally:
        with contextlib.suppress(Exception):
            container.close()
    if reason is None and discarded:
        reason = f"an edit list hides {discarded} of the {shown + discarded} frames"
    if reason is None and shown != count:
        reason = f"the container counts {count} frames, it shows {shown}"
    return _Hazard(reason, shown)


#: FFmpeg's names of the containers that store decode times only (their packets' pts are guesses)
_DECODE_TIMES_ONLY = frozenset({"avi", "h264", "hevc", "m4v", "mpegvideo", "h263"})


def _decode_times_only(container: Any) -> bool:
    return bool(_DECODE_TIMES_ONLY & set(container.format.name.split(",")))


def _file_bytes(target: object) -> bytes:
    if isinstance(target, bytes):
        return target
    if isinstance(target, str):
        with open(target, "rb") as handle:
            return handle.read()
    target.seek(0)  # type: ignore[union-attr]
    return target.read()  # type: ignore[union-attr]


def _read_mmaction2_order(target: object, indices_for: IndicesFor, transform: Transform, chunk: int) -> Decoded:
    """MMAction2's own call (``DecordInit`` + ``DecordDecode``): a reader on the file's bytes,
    its count and fps, then one ``get_batch`` of the clip-ordered indices, duplicates included.

    Where random access is inexact the same index can give different frames at different
    places, and splitting the call changes them too (measured), so it is one call, and frames
    are shared between places only where their bytes are equal.
    """
    import decord

    try:
        with _native_stderr_muted():
            reader = decord.VideoReader(io.BytesIO(_file_bytes(target)), num_threads=1)
            info = VideoInfo(len(reader), float(reader.get_avg_fps()) or None, read="mmaction2")
            wanted = np.asarray(indices_for(info))
            raw = reader.get_batch(wanted.reshape(-1)).asnumpy()
    except Exception as exc:
        raise _DecordFailed(_first_line(exc)) from None
    if raw.ndim != 4 or raw.shape[0] != wanted.size or raw.shape[-1] != 3:
        raise _DecordFailed(f"decord returned {raw.shape} for {wanted.size} frames")
    del reader
    shown = _assemble((raw[i : i + chunk] for i in range(0, raw.shape[0], chunk)), transform)
    del raw
    keep, inverse = _distinct(shown, wanted.reshape(-1))
    return shown[keep], inverse.reshape(wanted.shape), info


def _distinct(frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which places to keep, and each place's kept frame: places with the same index share a
    frame only when their bytes are equal."""
    kept: list[int] = []
    by_index: dict[int, list[int]] = {}
    inverse = np.empty(indices.size, dtype=np.int64)
    for place, index in enumerate(indices.tolist()):
        for slot in by_index.get(index, ()):
            if np.array_equal(frames[kept[slot]], frames[place]):
                inverse[place] = slot
                break
        else:
            by_index.setdefault(index, []).append(len(kept))
            inverse[place] = len(kept)
            kept.append(place)
    return np.asarray(kept, dtype=np.int64), inverse


def _read_sequential(
    target: object, name: str, fps: float | None, shown: int, indices_for: IndicesFor, transform: Transform, chunk: int,
) -> Decoded:
    """The true frames: decoded in order with PyAV (edit lists applied, frames turned upright
    as decord turns them), frame i being the i-th frame shown, sampled over the frames shown.

    The count is first taken from the packets; should fewer frames decode, the indices are
    drawn again over the frames that did, and the video decoded once more.
    """
    count = shown
    for _ in range(2):
        info = VideoInfo(count, fps, read="sequential")
        if count <= 0:
            raise DecodeError(f"{name}: no video frames")
        unique, inverse = _wanted(indices_for, info)
        decoded, frames = _decode_in_order(target, name, unique, transform, chunk)
        if frames is not None:
            return frames, inverse, info
        count = decoded
    raise DecodeError(f"{name}: video ends after {count} frames, {shown} expected")


def _decode_in_order(
    target: object, name: str, unique: np.ndarray, transform: Transform, chunk: int,
) -> tuple[int, np.ndarray | None]:
    """(frames decoded, the frames at the ascending indices ``unique``), or (frames decoded,
    None) when the video ends before the last of them."""
    import av

    wanted = unique.tolist()
    parts: list[np.ndarray] = []
    block: list[np.ndarray] = []
    got, index = 0, -1
    try:
        with _native_stderr_muted():
            with av.open(_fresh(target)) as container:
                for index, frame in enumerate(container.decode(container.streams.best("video"))):
                    while got < len(wanted) and wanted[got] == index:
                        block.append(_shown(frame))
                        got += 1
                        if len(block) == chunk:
                            parts.append(_apply(np.stack(block), transform))
                            block = []
                    if got == len(wanted):
                        break
    except Exception as exc:
        raise DecodeError(f"{name}: decoding failed at frame {index + 1} ({_av_reason(exc)})") from None
    if got < len(wanted):
        return index + 1, None
    if block:
        parts.append(_apply(np.stack(block), transform))
    return index + 1, np.concatenate(parts)


def _apply(block: np.ndarray, transform: Transform) -> np.ndarray:
    return transform(block) if transform is not None else block


def _wanted(indices_for: IndicesFor, info: VideoInfo) -> tuple[np.ndarray, np.ndarray]:
    wanted = np.asarray(indices_for(info))
    unique, inverse = np.unique(wanted, return_inverse=True)
    return unique, inverse.reshape(wanted.shape)


def _batched(frames: Iterator[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    block: list[np.ndarray] = []
    for frame in frames:
        block.append(frame)
        if len(block) == chunk:
            yield np.stack(block)
            block = []
    if block:
        yield np.stack(block)


def _assemble(blocks: Iterator[np.ndarray], transform: Transform) -> np.ndarray:
    return np.concatenate([_apply(b, transform) for b in blocks])


def _read_rawframes(source: RawFrames, indices_for: IndicesFor, transform: Transform, chunk: int) -> Decoded:
    info = probe(source)
    unique, inverse = _wanted(indices_for, info)
    parts = []
    for start in range(0, unique.size, chunk):
        block = unique[start : start + chunk]
        try:
            frames = _load_jpegs(source, block)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"{source.name}: decoding failed at frames {block[0]}-{block[-1]} ({_first_line(exc)})") from None
        parts.append(_apply(frames, transform))
    return np.concatenate(parts), inverse, _read(info, "rawframes")


def _load_jpegs(source: RawFrames, block: np.ndarray) -> np.ndarray:
    from PIL import Image

    frames = []
    for i in block.tolist():
        data = source.load(int(i))
        with Image.open(io.BytesIO(data)) as img:
            frames.append(np.asarray(img.convert("RGB")))
    return np.stack(frames)
