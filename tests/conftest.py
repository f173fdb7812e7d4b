"""Fixtures shared by every test folder.

`s3_server` runs moto as a real HTTP server (not an in-process patch), so the code under
test talks to "S3" exactly as it would to MinIO: through boto3, the standard environment
variables and `AWS_ENDPOINT_URL`. One server serves the whole session; each test gets
its own fresh bucket from `s3_env`.
"""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.faulty_s3 import FaultyS3Proxy

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so plain `pytest` (not only `python -m pytest`) finds the packages
    sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running for the whole test session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point boto3 at the moto server with test credentials and yield a new, empty bucket."""
    import boto3

    from x3d import storage

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "no-aws-config")  # keep the developer's ~/.aws out of the tests
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    storage.reset_client()

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        storage.reset_client()  # the next test must not reuse a client built for this environment


@pytest.fixture(scope="session")
def ray_local(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One real local Ray instance (2 CPUs) for the session's in-process job tests.

    Ray workers inherit the environment the raylet starts with, so the moto endpoint and test
    credentials are exported first: decode tasks then read s3:// videos exactly as workers on a
    real cluster do through their own AWS configuration.
    """
    import os

    import ray

    aws_config = str(tmp_path_factory.mktemp("aws") / "none")
    test_env = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": aws_config,
        "AWS_SHARED_CREDENTIALS_FILE": aws_config,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    saved = {k: os.environ.get(k) for k in test_env}
    os.environ.update(test_env)
    started = not ray.is_initialized()
    if started:
        from cluster.runtime import LOCAL_RAY_CONFIG  # the job's own local Ray settings

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, _system_config=LOCAL_RAY_CONFIG)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def evalset(tmp_path_factory: pytest.TempPathFactory):
    """The tiny labelled video set the evaluate and cluster tests score (tests/cluster/evalset.py)."""
    from tests.cluster.evalset import build_evalset

    return build_evalset(tmp_path_factory.getbasetemp() / "evalset")


@pytest.fixture(scope="session")
def test_preset_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight checkpoint of the test preset (tests/presets.py) in the official layout."""
    from tests import presets

    return str(presets.write_checkpoint(tmp_path_factory.mktemp("ckpt") / "x3d_test.pth"))


@pytest.fixture
def faulty_s3(s3_env: str, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FaultyS3Proxy]]:
    """Start a fault-injecting proxy in front of the test S3 server and point boto3 at it.

    Call it as ``faulty_s3(share, mode="reset", ...)`` (see tests/faulty_s3.py); the test's
    bucket (``s3_env``) already exists. Every proxy started is stopped when the test ends.
    """
    from tests.faulty_s3 import FaultyS3Proxy
    from x3d import storage

    started: list[FaultyS3Proxy] = []

    def start(share: float, **options: Any) -> FaultyS3Proxy:
        proxy = FaultyS3Proxy(s3_server, share, **options).start()
        started.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_client()
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
        storage.reset_client()
