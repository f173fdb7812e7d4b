"""Tiny real video files for tests, encoded with PyAV and read back by decord."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


# ------------------------------------------------------------------ awkward kinds (issue 31)
# Files of the kinds real collections hold where decord's random access is inexact or where
# the container says something odd. Each writer encodes ``frames`` (uint8 RGB) with PyAV.


def write_mpeg4_bframes(path: str | Path, frames: np.ndarray, fps: int = 25) -> Path:
    """MPEG-4 part 2 (the ``mpeg4`` encoder, as xvid/divx files) with two B-frames between
    references, in MP4 or AVI by the suffix (UCF101 and HMDB51 ship such AVIs)."""
    options = {"bf": "2", "g": "24", "qscale": "3", "threads": "1"}
    return encode_video(frames, fps, path, codec="mpeg4", options=options)


def write_vp9_full_range(path: str | Path, frames: np.ndarray, fps: int = 25) -> Path:
    """VP9 in WebM with full-range (``pc``) yuv420p, as phone and screen recordings have.

    Encoded in a child process: once decord 0.6 is imported, the FFmpeg it bundles shadows
    PyAV's and libvpx-vp9 refuses to open in that process.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "frames.npy", frames)
        code = "import sys, numpy; from tests.videos import _vp9_full_range; _vp9_full_range(sys.argv[1], numpy.load(sys.argv[2]), int(sys.argv[3]))"
        root = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-c", code, str(path), str(Path(tmp) / "frames.npy"), str(fps)], cwd=root, check=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL, timeout=300)
    return path


def _vp9_full_range(path: str, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.color_range = 2  # AVCOL_RANGE_JPEG: full range
        stream.options = {"crf": "30", "deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", dst_color_range=2)
            vf.color_range = 2
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_rotated(path: str | Path, frames: np.ndarray, fps: int = 25, degrees: int = 90) -> Path:
    """H.264 MP4 with a display matrix that rotates it (a phone held upright)."""
    from x3d.sample_data import encode_video

    return encode_video(frames, fps, path, options={"crf": "18", "preset": "ultrafast", "threads": "1"}, rotation=degrees)


def write_variable_rate(path: str | Path, frames: np.ndarray, seed: int = 0) -> Path:
    """H.264 MP4 whose frames last 20-60 ms each, drawn at random (variable frame rate)."""
    import av
    from fractions import Fraction

    path = Path(path)
    rng = np.random.default_rng(seed)
    durations = rng.integers(2, 7, frames.shape[0])  # in 1/100 s
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 100)
        stream.time_base = Fraction(1, 1000)
        stream.options = {"crf": "18", "preset": "ultrafast", "threads": "1"}
        pts = 0
        for frame, duration in zip(frames, durations.tolist()):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = pts, Fraction(1, 100)
            pts += duration
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_with_stream_copy(source: str | Path, path: str | Path, start_s: float) -> Path:
    """What ``ffmpeg -ss START -i SOURCE -c copy PATH`` writes: the packets from the keyframe
    before ``start_s`` on, copied without re-encoding, their times shifted so ``start_s`` is 0.
    The frames before it keep negative times, and the MP4 muxer writes an edit list that hides
    them: the header counts every packet, a player shows only the frames from ``start_s``."""
    import av

    path = Path(path)
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        cut = int(start_s / stream.time_base)
        packets = [p for p in src.demux(stream) if p.dts is not None]
        first = max(i for i, p in enumerate(packets) if p.is_keyframe and p.pts <= cut)
        for packet in packets[first:]:
            packet.pts -= cut
            packet.dts -= cut
            packet.stream = out
            dst.mux(packet)
    return path


def trim_with_edit_list(path: str | Path, keep: float) -> Path:
    """Shorten an MP4's edit list to ``keep`` of its length, as trimming tools that rewrite only
    the edit list do: every frame stays in the file and in the header's count, a player shows
    the first ``keep`` of them. ``path`` must hold one video track with a one-entry edit list
    (what PyAV's MP4 muxer writes)."""
    import struct

    path = Path(path)
    data = bytearray(path.read_bytes())
    elst = data.find(b"elst")
    assert elst > 0 and data[elst + 4] == 0 and struct.unpack(">I", data[elst + 8 : elst + 12])[0] == 1, "one version-0 edit"
    duration = elst + 12  # segment duration (movie timescale), then media time and rate
    shown = struct.unpack(">I", data[duration : duration + 4])[0]
    data[duration : duration + 4] = struct.pack(">I", int(shown * keep))
    path.write_bytes(bytes(data))
    return path


#: The awkward kinds of issue 31: name -> what ``awkward_videos`` writes
AWKWARD_KINDS = {
    "h264_bframes": "H.264 with B-frames (closed GOPs), MP4: the well-formed control",
    "vp9_full_range": "VP9, full range (yuv420p, pc), WebM",
    "h264_rotated_90": "H.264 with a 90-degree display matrix, MP4",
    "h264_variable_rate": "H.264 with frames of 20-60 ms, MP4",
    "h264_open_gop": "H.264 encoded with open GOPs, MP4",
    "mpeg4_bframes_mp4": "MPEG-4 part 2 with B-frames, MP4",
    "mpeg4_bframes_avi": "MPEG-4 part 2 with B-frames, AVI (how UCF101 and HMDB51 ship)",
    "h264_cut_stream_copy": "H.264 MP4 cut with `ffmpeg -c copy` (an edit list hides the frames before the cut)",
    "h264_header_overcounts": "H.264 MP4 whose header counts 150 frames, its edit list shows 90",
}


def awkward_videos(folder: str | Path, frames_for=None) -> dict[str, Path]:
    """One file of each ``AWKWARD_KINDS``, 160x128 (128x160 once rotated), 25 fps, 150 frames
    (the cut: 182 shown of 200). ``frames_for(num_frames, height, width, seed)`` makes the
    pictures (default: ``moving_frames``); each kind gets its own seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make = frames_for or (lambda n, h, w, seed: moving_frames(n, h, w, seed))
    pictures = {name: make(150, 128, 160, seed) for seed, name in enumerate(AWKWARD_KINDS)}
    h264 = {"crf": "18", "preset": "medium", "bf": "3", "threads": "1"}
    files = {
        "h264_bframes": encode_video(pictures["h264_bframes"], 25, folder / "h264_bframes.mp4", options=h264),
        "vp9_full_range": write_vp9_full_range(folder / "vp9_full_range.webm", pictures["vp9_full_range"]),
        "h264_rotated_90": write_rotated(folder / "h264_rotated_90.mp4", pictures["h264_rotated_90"]),
        "h264_variable_rate": write_variable_rate(folder / "h264_variable_rate.mp4", pictures["h264_variable_rate"]),
        "h264_open_gop": encode_video(pictures["h264_open_gop"], 25, folder / "h264_open_gop.mp4", options={
            **h264, "x264-params": "open-gop=1:keyint=24:min-keyint=24:scenecut=0"}),
        "mpeg4_bframes_mp4": write_mpeg4_bframes(folder / "mpeg4_bframes.mp4", pictures["mpeg4_bframes_mp4"]),
        "mpeg4_bframes_avi": write_mpeg4_bframes(folder / "mpeg4_bframes.avi", pictures["mpeg4_bframes_avi"]),
    }
    long = make(250, 128, 160, len(AWKWARD_KINDS))
    source = encode_video(long, 25, folder / "cut_source.mp4", options={**h264, "x264-params": "keyint=50:min-keyint=50:scenecut=0"})
    files["h264_cut_stream_copy"] = cut_with_stream_copy(source, folder / "h264_cut_stream_copy.mp4", 2.7)
    source.unlink()
    trimmed = encode_video(pictures["h264_header_overcounts"], 25, folder / "h264_header_overcounts.mp4",
                           options={"crf": "18", "preset": "ultrafast", "threads": "1"})
    files["h264_header_overcounts"] = trim_with_edit_list(trimmed, 0.6)
    return files
