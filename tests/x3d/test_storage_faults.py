"""x3d.storage through a proxy that breaks S3 answers (tests/faulty_s3.py) in front of moto.

A flaky endpoint must cost time, not data: every read returns exactly the stored bytes,
every write lands whole, and only an endpoint that never answers properly gives an error,
as one line. The objects are put and checked over a direct connection to the server, so the
proxy only ever sits between the code under test and S3.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from x3d import storage
from x3d.storage import StorageError

SIZES = (1, 700, 65_536, 300_001)  # one byte up to a body that spans many TCP segments


@pytest.fixture
def direct(s3_env: str, s3_server: str):
    """A client that talks to moto itself, past any proxy."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=s3_server)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF_BASE_S", 0.01)


def _put(direct, bucket: str, key: str, data: bytes, checksum: bool = True) -> str:
    """Store an object; without `checksum`, as a tool that sends no CRC (only its MD5 ETag then)."""
    if checksum:
        direct.put_object(Bucket=bucket, Key=key, Body=data)
    else:
        import boto3
        from botocore.config import Config

        plain = boto3.session.Session().client(
            "s3", endpoint_url=direct.meta.endpoint_url, config=Config(request_checksum_calculation="when_required")
        )
        plain.put_object(Bucket=bucket, Key=key, Body=data)
        assert "ChecksumCRC32" not in plain.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return f"s3://{bucket}/{key}"


def _payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(f"{size}-{seed}".encode()).digest(size)


@pytest.mark.parametrize("mode", ["reset", "truncate", "shorten"])
def test_reads_return_the_exact_bytes_through_a_flaky_endpoint(s3_env, direct, faulty_s3, fast_retries, mode):
    stored = {}
    for i, size in enumerate(SIZES * 3):
        data = _payload(size, i)
        stored[_put(direct, s3_env, f"videos/{i:02d}.bin", data, checksum=i % 2 == 0)] = data
    proxy = faulty_s3(0.25, mode=mode)

    for uri, data in stored.items():
        assert storage.read_bytes(uri) == data
        info = storage.stat(uri)
        assert info.size == len(data) and info.etag == hashlib.md5(data).hexdigest()
    listed = {i.uri: i.size for i in storage.list_files(f"s3://{s3_env}/videos")}
    assert listed == {uri: len(data) for uri, data in stored.items()}
    assert proxy.faults >= 6  # a quarter of ~36 answers was damaged, and nothing showed


def test_a_short_body_without_checksum_is_caught_by_its_etag(s3_env, direct, faulty_s3, fast_retries):
    """Headers and body agree on a length, but it is half the object: only the MD5 ETag knows."""
    data = _payload(200_000, 7)
    uri = _put(direct, s3_env, "plain.bin", data, checksum=False)
    proxy = faulty_s3(0.5, mode="shorten", matches=lambda method, path: method == "GET")
    for _ in range(4):
        assert storage.read_bytes(uri) == data
    assert proxy.faults == 3 and len(proxy.requests) == 7  # answers 2, 4 and 6 were short and read again


@pytest.mark.parametrize("mode", ["reset", "truncate"])
def test_writes_land_whole_through_a_flaky_endpoint(s3_env, direct, faulty_s3, monkeypatch, mode):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 8 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)  # the S3 minimum part
    proxy = faulty_s3(0.34, mode=mode, matches=lambda method, path: method in ("PUT", "POST"))
    small = {f"out/part-{i:05d}.parquet": _payload(5_000 + i, i) for i in range(6)}
    for key, data in small.items():
        storage.write_bytes(f"s3://{s3_env}/{key}", data)
    big = _payload(12 * 1024 * 1024, 99)
    storage.write_bytes(f"s3://{s3_env}/out/big.bin", big)

    for key, data in {**small, "out/big.bin": big}.items():
        assert direct.get_object(Bucket=s3_env, Key=key)["Body"].read() == data
    assert direct.head_object(Bucket=s3_env, Key="out/big.bin")["ETag"].endswith('-3"')  # multipart
    assert proxy.faults >= 3


def test_a_dead_endpoint_is_one_clear_line_and_leaves_nothing(s3_env, direct, faulty_s3, fast_retries, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sEcReT-do-not-print-42")
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 8 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    uri = _put(direct, s3_env, "videos/a.mp4", _payload(100_000, 1))
    proxy = faulty_s3(1.0, mode="reset")
    damaged = r"S3 answer still damaged after 3 attempts \(connection broken mid-body \(ConnectionResetError\)\)"
    closed = r"S3 closed the connection before answering \(3 attempts\)"
    calls = {
        "read_bytes": (lambda: storage.read_bytes(uri), rf"{uri}: {damaged}"),
        "stat": (lambda: storage.stat(uri), rf"{uri}: {closed}"),
        "list_files": (lambda: list(storage.list_files(f"s3://{s3_env}/videos")), rf"s3://{s3_env}/videos: {closed}"),
        "write small": (lambda: storage.write_bytes(f"s3://{s3_env}/out/x.parquet", b"rows"), rf"s3://{s3_env}/out/x.parquet: {closed}"),
        "write multipart": (
            lambda: storage.write_bytes(f"s3://{s3_env}/out/big.bin", b"x" * (12 << 20)),
            rf"s3://{s3_env}/out/big.bin: {closed}",
        ),
    }
    for name, (call, expected) in calls.items():
        before = len(proxy.requests)
        with pytest.raises(StorageError) as err:
            call()
        message = str(err.value)
        assert re.fullmatch(expected, message), (name, message)
        assert "sEcReT" not in message and err.value.__cause__ is None, name
        if name in ("read_bytes", "stat"):
            assert len(proxy.requests) - before == 3, name  # 3 attempts in all, not 3 per layer
    # Nothing partial: the multipart upload never completed, so no object; the small PUT may
    # have been stored before its answer was cut, and then it is whole.
    landed = [o["Key"] for o in direct.list_objects_v2(Bucket=s3_env, Prefix="out/").get("Contents", ())]
    assert landed in ([], ["out/x.parquet"])
    if landed:
        assert direct.get_object(Bucket=s3_env, Key="out/x.parquet")["Body"].read() == b"rows"


def test_max_attempts_follows_the_aws_variable(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    assert storage.max_attempts() == 4
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "not a number")
    assert storage.max_attempts() == storage.DEFAULT_MAX_ATTEMPTS
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    assert storage.max_attempts() == storage.DEFAULT_MAX_ATTEMPTS
