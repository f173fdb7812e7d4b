"""worker.rawframes: frame i of a rawframe item comes from img_{i+1:05d}.jpg, local or on S3."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from PIL import Image

from jobs import datasets
from x3d import storage
from worker.items import VideoItem
from worker.rawframes import rawframe_loader


def jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (shade, shade, shade)).save(buf, format="JPEG")
    return buf.getvalue()


def write_frames(folder: str, count: int) -> None:
    for i in range(count):
        storage.write_bytes(storage.join(folder, f"img_{i + 1:05d}.jpg"), jpeg(40 * i))


def test_local_frames_from_a_rawframe_list(tmp_path: Path):
    write_frames(str(tmp_path / "frames" / "vid1"), 3)
    (tmp_path / "list.txt").write_text("vid1 3 5\n")
    spec = datasets.resolve_dataset(None, ann_file=str(tmp_path / "list.txt"), data_root=str(tmp_path / "frames"))
    (item,) = datasets.iter_items(spec)
    load = rawframe_loader(item)

    assert load(0) == (tmp_path / "frames/vid1/img_00001.jpg").read_bytes()
    last = Image.open(io.BytesIO(load(2)))
    assert last.size == (16, 12) and abs(last.getpixel((8, 6))[0] - 80) <= 3
    with pytest.raises(IndexError, match=r"frame 3 out of range \(3 frames\)"):
        load(3)
    with pytest.raises(IndexError):
        load(-1)
    assert pickle.loads(pickle.dumps(load))(1) == load(1)  # travels to Ray tasks and subprocesses


def test_frames_on_s3(s3_env: str):
    frame_dir = f"s3://{s3_env}/rawframes/abseiling/vid2"
    write_frames(frame_dir, 2)
    load = rawframe_loader(VideoItem("abseiling/vid2", frame_dir, 0, 2, "rawframes"))
    assert load(1) == storage.read_bytes(f"{frame_dir}/img_00002.jpg")
    assert Image.open(io.BytesIO(load(0))).format == "JPEG"


def test_missing_frame_is_a_storage_error(tmp_path: Path):
    load = rawframe_loader(VideoItem("v", str(tmp_path / "v"), None, 10, "rawframes"))
    with pytest.raises(storage.StorageError, match=r"img_00005.jpg: no such file$"):
        load(4)


def test_only_rawframe_items():
    with pytest.raises(ValueError, match="not a rawframes item"):
        rawframe_loader(VideoItem("a.mp4", "videos/a.mp4", 1))
