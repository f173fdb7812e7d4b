"""Videos decord cannot read (issue #17): tiny sizes, codecs it lacks, files without video,
and decoder messages that must not reach a worker's stderr.

All files are real, encoded here with PyAV. Where a test relies on decord failing, it first
checks that decord does fail on that file, so the test keeps meaning something if a later
decord fixes the bug.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import x3d
from x3d import decode
from x3d.decode import DecodeError
from x3d.sample_data import encode_video
from tests.videos import moving_frames

ROOT = Path(__file__).resolve().parents[2]


def encode(path: Path, frames: np.ndarray, codec: str = "libx264", fps: int = 25, options: dict | None = None,
           pix_fmt: str = "yuv420p") -> Path:
    return encode_video(frames, fps, path, codec=codec, options=options, pix_fmt=pix_fmt)


def decord_fails(path: Path) -> bool:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        reader.get_batch(list(range(len(reader)))).asnumpy()
    except Exception:  # noqa: BLE001 - any decord failure
        return True
    return False


def stepped_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth frames that differ by brightness, so a lossy codec keeps each one nearest itself."""
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    levels = np.arange(num_frames, dtype=np.float32)[:, None, None, None] * (180 / num_frames)
    return np.broadcast_to(levels + ramp + 10, (num_frames, height, width, 3)).astype(np.uint8)


def every_frame(info: decode.VideoInfo) -> np.ndarray:
    return np.arange(info.num_frames)


@pytest.mark.parametrize("size", [(16, 16), (8, 8), (32, 16)])
def test_tiny_h264_decodes_with_decords_count_and_frame_order(tmp_path, size):
    source = stepped_frames(20, *size)
    path = encode(tmp_path / "tiny.mp4", source, fps=30)
    assert decord_fails(path)  # "ndarray.cc:171 Check failed: from_size == to_size"

    frames, inverse, info = decode.read_frames(str(path), lambda info: np.array([[3, 0], [19, 3]]))
    assert info == decode.VideoInfo(20, 30.0) == decode.probe(str(path))
    assert frames.shape == (3, *size, 3) and inverse.tolist() == [[1, 0], [2, 1]]
    # Frame i is the i-th frame shown: each decoded frame is nearest its own source frame.
    for got, index in zip(frames, (0, 3, 19)):
        errors = [np.abs(got.astype(int) - s).mean() for s in source]
        assert int(np.argmin(errors)) == index and errors[index] < 3


@pytest.mark.parametrize("container,options", [("mp4", {"preset": "medium", "bf": "3"}), ("mkv", {"bf": "2"})])
def test_the_fallback_gives_decords_exact_frames_on_a_normal_video(tmp_path, container, options):
    """B-frames (decode order is not display order) and, in MKV, no frame count in the header."""
    path = encode(tmp_path / f"normal.{container}", moving_frames(37, 48, 64, seed=2), options=options)
    assert not decord_fails(path)
    reference = decode._Decord(str(path))
    fallback = decode._PyAV(str(path), path.name, None)
    assert fallback.info == reference.info  # count and fps computed as decord computes them
    unique = np.array([0, 1, 2, 5, 17, 35, 36])
    ours = np.stack(list(fallback.frames_at(unique)))
    np.testing.assert_array_equal(ours, reference.frames(unique))


def test_av1_in_mkv_decodes_through_the_fallback_where_decord_lacks_it(tmp_path):
    """decord 0.6's FFmpeg has no AV1 decoder, so PyAV reads it; decord2's (FFmpeg 8) has one."""
    import av

    if "libsvtav1" not in av.codecs_available or "libdav1d" not in av.codecs_available:
        pytest.skip("this PyAV has no AV1 encoder or decoder")
    source = stepped_frames(10, 64, 64)
    path = encode(tmp_path / "clip.mkv", source, codec="libsvtav1", options={"preset": "12"})
    fails = decord_fails(path)  # decord 0.6: "Check failed: st_nb >= 0 ... cannot find video stream"

    frames, inverse, info = decode.read_frames(path, every_frame)
    assert info == decode.VideoInfo(10, 25.0)  # MKV has no count: 25 fps x 0.4 s, decord's way
    assert info.read == ("pyav" if fails else "fast")
    assert frames.shape == (10, 64, 64, 3) and inverse.tolist() == list(range(10))
    assert np.abs(frames.astype(int) - source).mean(axis=(1, 2, 3)).max() < 3


def test_a_file_without_video_names_what_it_holds(tmp_path):
    import av

    path = tmp_path / "talk.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        samples = (np.sin(np.arange(1600) / 5) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert decord_fails(path)
    for call in (lambda: decode.probe(str(path)), lambda: decode.read_frames(str(path), every_frame)):
        with pytest.raises(DecodeError) as err:
            call()
        assert str(err.value) == f"{path}: no video stream (streams: audio pcm_s16le)"


def test_broken_files_are_still_one_line_errors(tmp_path):
    good = encode(tmp_path / "good.mp4", moving_frames(30, 48, 64, seed=4))
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.mp4").write_bytes(b"this is not a video\n" * 50)
    expected = {
        "truncated.mp4": "not a readable video (Invalid data found when processing input)",
        "text.mp4": "not a readable video (Invalid data found when processing input)",
    }
    for name, reason in expected.items():
        with pytest.raises(DecodeError) as err:
            decode.read_frames(str(tmp_path / name), every_frame)
        assert str(err.value) == f"{tmp_path / name}: {reason}"
    with pytest.raises(DecodeError, match=r"missing.mp4: no such file$"):
        decode.probe(str(tmp_path / "missing.mp4"))


CHILD = r"""
import pickle, sys
from worker.decode_task import decode_item
items, spec = pickle.loads(bytes.fromhex(sys.argv[1]))
for item in items:
    result, views = decode_item(item, spec)
    print("ERROR", result.error)
"""


def test_a_decode_worker_keeps_native_messages_off_its_stderr(tmp_path):
    """decord's C++ log line for an unreadable file, and FFmpeg's for a corrupt stream."""
    from worker.items import VideoItem
    from worker.spec import ModelSpec

    good = encode(tmp_path / "good.mp4", moving_frames(40, 48, 64, seed=5))
    data = bytearray(good.read_bytes())
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    for i in range(len(data) // 3, 2 * len(data) // 3, 7):
        data[i] ^= 0xFF
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    items = [VideoItem(key=name, uri=str(tmp_path / name), label=None) for name in ("truncated.mp4", "corrupt.mp4")]
    payload = pickle.dumps((items, ModelSpec(x3d.get_preset("x3d_tiny"), views=1))).hex()

    stderr = tmp_path / "stderr.txt"  # a file, as a Ray worker's stderr is
    with open(stderr, "wb") as err:
        proc = subprocess.run([sys.executable, "-c", CHILD, payload], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"})
    assert proc.returncode == 0, stderr.read_text()[-2000:]
    assert stderr.read_bytes() == b""
    truncated, corrupt = [line for line in proc.stdout.splitlines() if line.startswith("ERROR ")]
    assert truncated == f"ERROR {tmp_path / 'truncated.mp4'}: not a readable video (Invalid data found when processing input)"
    reason = r"decoding failed at frame \d+ \(Invalid data found when processing input\)"
    assert re.fullmatch(rf"ERROR {re.escape(str(tmp_path / 'corrupt.mp4'))}: {reason}", corrupt), corrupt
