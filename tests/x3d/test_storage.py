"""x3d.storage against the local file system and a real (moto) S3 server."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from x3d import storage
from x3d.storage import ObjectInfo, StorageError


def tiny_mp4(frames: int = 10, size: int = 32) -> bytes:
    """A real H.264 (or MPEG-4 part 2) file, small enough to build in a few milliseconds."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        try:
            stream = container.add_stream("libx264", rate=10)
        except Exception:  # noqa: BLE001 - FFmpeg built without x264
            stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), i * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# --------------------------------------------------------------------------- addressing


def test_is_remote_and_join():
    assert storage.is_remote("s3://bkt/key")
    assert not storage.is_remote("/data/x.mp4")
    assert not storage.is_remote("file:///data/x.mp4")
    assert storage.join("s3://bkt", "a", "b.mp4") == "s3://bkt/a/b.mp4"
    assert storage.join("s3://bkt/videos/", "/a/b.mp4") == "s3://bkt/videos/a/b.mp4"
    assert storage.join("file:///data", "x.mp4") == "file:///data/x.mp4"
    assert storage.join("data/videos", "a", "b.mp4") == os.path.join("data/videos", "a", "b.mp4")


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(StorageError, match=r"^gs://bkt/x: unsupported scheme 'gs'"):
        storage.read_bytes("gs://bkt/x")


# --------------------------------------------------------------------------- local


def test_local_round_trip(tmp_path: Path):
    path = str(tmp_path / "deep" / "er" / "blob.bin")
    storage.write_bytes(path, b"0123456789")
    assert storage.read_bytes(path) == b"0123456789"
    assert storage.read_bytes(f"file://{path}") == b"0123456789"
    info = storage.stat(path)
    assert (info.uri, info.size, info.etag) == (path, 10, None)
    assert info.mtime == pytest.approx(os.stat(path).st_mtime)
    assert storage.exists(path) and storage.exists(str(tmp_path / "deep"))
    assert not storage.exists(str(tmp_path / "nope"))
    assert os.listdir(tmp_path / "deep" / "er") == ["blob.bin"]  # no temp file left behind


def test_local_overwrite(tmp_path: Path):
    path = str(tmp_path / "out.txt")
    storage.write_bytes(path, b"old")
    storage.write_bytes(path, b"new content")
    assert storage.read_bytes(path) == b"new content"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_local_failed_write_keeps_old_content_and_no_temp(tmp_path: Path):
    path = str(tmp_path / "out.txt")
    storage.write_bytes(path, b"old")

    with pytest.raises(RuntimeError, match="producer died"):
        with storage.atomic_local_file(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            assert os.path.basename(tmp).startswith(".")  # hidden from listings meanwhile
            raise RuntimeError("producer died")
    assert storage.read_bytes(path) == b"old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_local_errors_are_one_line(tmp_path: Path):
    missing = str(tmp_path / "x.mp4")
    for call in (storage.read_bytes, storage.stat):
        with pytest.raises(StorageError) as err:
            call(missing)
        assert str(err.value) == f"{missing}: no such file"
    with pytest.raises(StorageError, match="is a directory$"):
        storage.read_bytes(str(tmp_path))


def test_local_listing_is_recursive_sorted_and_filtered(tmp_path: Path):
    for rel in ("b/2.mp4", "a/1.MP4", "a/deeper/3.avi", "a/notes.txt", "top.mkv"):
        storage.write_bytes(str(tmp_path / rel), b"x" * len(rel))
    everything = list(storage.list_files(str(tmp_path)))
    assert [os.path.relpath(i.uri, tmp_path) for i in everything] == [
        "a/1.MP4",
        "a/deeper/3.avi",
        "a/notes.txt",
        "b/2.mp4",
        "top.mkv",
    ]
    assert everything[0] == ObjectInfo(str(tmp_path / "a/1.MP4"), 7, everything[0].mtime, None)
    videos = [os.path.relpath(i.uri, tmp_path) for i in storage.list_files(str(tmp_path), (".mp4", ".avi"))]
    assert videos == ["a/1.MP4", "a/deeper/3.avi", "b/2.mp4"]
    as_uris = [i.uri for i in storage.list_files(f"file://{tmp_path}/b")]
    assert as_uris == [f"file://{tmp_path}/b/2.mp4"]
    assert list(storage.list_files(str(tmp_path / "missing"))) == []


# --------------------------------------------------------------------------- S3


def test_s3_round_trip(s3_env: str):
    uri = f"s3://{s3_env}/dir/blob.bin"
    storage.write_bytes(uri, b"0123456789")
    assert storage.read_bytes(uri) == b"0123456789"
    info = storage.stat(uri)
    assert (info.uri, info.size) == (uri, 10)
    assert info.etag and info.mtime
    assert storage.exists(uri)
    assert storage.exists(f"s3://{s3_env}/dir") and storage.exists(f"s3://{s3_env}/dir/")
    assert storage.exists(f"s3://{s3_env}")
    assert not storage.exists(f"s3://{s3_env}/di")
    assert not storage.exists(f"s3://{s3_env}/missing")
    assert not storage.exists("s3://no-such-bucket-here/x")


def test_s3_multipart_upload(s3_env: str, monkeypatch: pytest.MonkeyPatch):
    # Lower the threshold so a 12 MiB payload takes the multipart path (parts of 5 MiB,
    # the S3 minimum), the one large shards take in production.
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 8 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    uri = f"s3://{s3_env}/big.bin"
    payload = b"".join(bytes([i]) * (1024 * 1024) for i in range(12))
    storage.write_bytes(uri, payload)
    info = storage.stat(uri)
    assert info.size == 12 * 1024 * 1024
    assert info.etag.endswith("-3")  # S3's mark of an object completed from 3 parts
    assert storage.read_bytes(uri) == payload


def test_s3_listing_pages_through_more_than_1000_keys_lazily(s3_env: str):
    names = [f"clips/{i // 100:02d}/{i:05d}.mp4" for i in range(1100)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: storage.write_bytes(f"s3://{s3_env}/{n}", b"v"), names))
    storage.write_bytes(f"s3://{s3_env}/clips/readme.txt", b"not a video")
    storage.write_bytes(f"s3://{s3_env}/clips2/outside.mp4", b"not under clips/")

    pages = []
    storage.s3_client().meta.events.register(
        "after-call.s3.ListObjectsV2", lambda **_: pages.append(1)
    )
    listing = storage.list_files(f"s3://{s3_env}/clips", suffixes=(".mp4",))
    first = next(listing)
    assert len(pages) == 1  # the first item arrives after one page, not after the whole listing
    rest = list(listing)
    assert len(pages) == 2
    assert [first.uri] + [i.uri for i in rest] == [f"s3://{s3_env}/{n}" for n in sorted(names)]
    assert first.size == 1


def test_mp4_decodes_straight_from_an_object(s3_env: str):
    import decord

    uri = f"s3://{s3_env}/videos/tiny.mp4"
    storage.write_bytes(uri, tiny_mp4(frames=10))
    reader = decord.VideoReader(io.BytesIO(storage.read_bytes(uri)))
    assert len(reader) == 10
    assert reader[0].shape == (32, 32, 3)


def test_s3_missing_key_and_bucket_messages(s3_env: str, monkeypatch: pytest.MonkeyPatch):
    secret = "sEcReT-do-not-print-1234567890"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage.reset_client()

    key_uri = f"s3://{s3_env}/videos/missing.mp4"
    for call in (storage.read_bytes, storage.stat):
        with pytest.raises(StorageError) as err:
            call(key_uri)
        assert str(err.value) == f"{key_uri}: no such key"

    bucket_uri = "s3://nope-no-such-bucket/videos/x.mp4"
    calls = {
        "read": lambda: storage.read_bytes(bucket_uri),
        "stat": lambda: storage.stat(bucket_uri),
        "write": lambda: storage.write_bytes(bucket_uri, b"x"),
        "list": lambda: list(storage.list_files("s3://nope-no-such-bucket/videos/")),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as err:
            call()
        message = str(err.value)
        assert message.endswith(": bucket does not exist"), (name, message)
        assert message.startswith("s3://nope-no-such-bucket/"), (name, message)
        assert secret not in message and "testing" not in message and "\n" not in message
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no botocore chain


def test_s3_client_is_shared_and_rebuilt_after_reset(s3_env: str):
    client = storage.s3_client()
    assert storage.s3_client() is client
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: id(storage.s3_client()), range(8))) == {id(client)}
    storage.reset_client()
    assert storage.s3_client() is not client


def _read_in_child(uri: str) -> tuple[int, bytes]:
    return os.getpid(), storage.read_bytes(uri)


def test_forked_worker_builds_its_own_client(s3_env: str):
    import multiprocessing

    uri = f"s3://{s3_env}/shared.bin"
    storage.write_bytes(uri, b"from the parent")  # the parent now holds a client
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pid, data = pool.apply(_read_in_child, (uri,))
    assert pid != os.getpid()
    assert data == b"from the parent"
