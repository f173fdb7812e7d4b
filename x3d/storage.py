"""One way to read and write bytes, whether they live on local disk or in S3.

A batch job reads videos, annotation lists and label maps from wherever the user keeps
them and writes results back to a folder or a bucket. Every other module goes through
the handful of functions here, so "local path, `file://` URI or `s3://bucket/key`" is
decided in exactly one place and the rest of the code never imports boto3.

Design choices, and why:

* S3 access uses one boto3 client per process, built on first use. Clients are costly to
  build (credential lookup, endpoint resolution) but safe to share between threads; they
  are not safe to carry across `fork`, so the cache is keyed by pid and a Ray worker or a
  forked decoder builds its own. Configuration is boto3's standard chain (environment
  variables, profiles, instance roles) and boto3 itself honours `AWS_ENDPOINT_URL` /
  `AWS_ENDPOINT_URL_S3`, which is how MinIO or Ceph are reached. Retries are adaptive
  because a few hundred decode tasks starting together is exactly the burst that S3
  answers with throttling.
* Writes are atomic. A reader (the job resuming after a crash, or `pyarrow.dataset`
  scanning an output folder) must never see half a file. Locally we write a hidden temp
  file in the target folder and `os.replace` it; S3 only ever shows complete objects,
  whether sent in one `put_object` or as a multipart upload that becomes visible when
  it is completed. Temp names start with "." so dataset scanners skip them.
* A flaky endpoint costs time, not results. botocore retries a request whose answer never
  arrives, but not a body that breaks while it is being read (a connection reset mid-GET),
  nor a response that arrives complete-looking but short. So every read here checks what it
  got (length against Content-Length / Content-Range, the object's checksum or MD5 ETag,
  the headers a HEAD must carry) and fetches again, with backoff, when the check fails.
  One knob bounds both retry layers: `AWS_MAX_ATTEMPTS` (boto3's own variable; default 10).
* Every failure is a `StorageError` whose message is one line a user can act on
  ("s3://bkt/key: no such key"). Messages never carry credentials or botocore tracebacks.

Why one module: the point of it is that local-or-S3 is decided in exactly one
place, and its sections (addressing, client, errors, damaged answers, reading, listing,
writing, deleting) share the private error and retry helpers; split, each half would need the
other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

__all__ = [
    "ObjectInfo",
    "StorageError",
    "exists",
    "is_remote",
    "join",
    "list_files",
    "local_path",
    "read_bytes",
    "reset_client",
    "s3_client",
    "stat",
    "write_bytes",
    "delete",
    "arrow_filesystem",
    "atomic_local_file",
    "remove_stale_temp_files",
    "remove_orphan_temp_files",
    "check_writable",
]

# Payloads above this go through boto3's managed (multipart) upload instead of a single
# put_object, which S3 caps at 5 GiB and which would have to be retried whole.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Attempts per operation when the environment does not say (AWS_MAX_ATTEMPTS), and the
# backoff between re-reads of a broken body: full jitter, doubling from BASE up to CAP.
DEFAULT_MAX_ATTEMPTS = 10
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0


class StorageError(Exception):
    """A read or write failed; the message is one line naming the URI and the reason.

    ``unavailable``: the store's failure, not the object's: it did not answer, or answered that
    it cannot serve now (5xx, throttling, damaged answers), after the retries. The same request
    may succeed later; a missing key or a denied one will not.
    """

    def __init__(self, message: str, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or `stat` knows about one file or object."""

    uri: str
    size: int
    mtime: float | None
    etag: str | None


# --------------------------------------------------------------------------- addressing


def _scheme(uri: str) -> str | None:
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else None


def is_remote(uri: str) -> bool:
    """True for `s3://` URIs: anything that is not on this machine's file system."""
    return _scheme(uri) == "s3"


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket name in S3 URI")
    return bucket, key


def local_path(uri: str) -> str:
    """The file-system path behind a local path or `file://` URI."""
    scheme = _scheme(uri)
    if scheme is None:
        return uri
    if scheme == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: file URIs must name a path on this machine")
        return unquote(parsed.path)
    if scheme == "s3":
        raise StorageError(f"{uri}: not a local path")
    raise StorageError(f"{uri}: unsupported scheme '{scheme}' (use a local path, file:// or s3://)")


def join(base: str, *parts: str) -> str:
    """Append path parts to a local path or URI, with '/' for URIs."""
    if _scheme(base) is None:
        return os.path.join(base, *parts)
    out = base
    for part in parts:
        if part:
            out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


# --------------------------------------------------------------------------- S3 client

_clients: dict[int, Any] = {}
_clients_lock = threading.Lock()


def s3_client() -> Any:
    """This process's shared boto3 S3 client, created on first use."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            import boto3  # deferred: jobs that only touch local files never pay for it
            from botocore.config import Config

            retries = {"mode": "adaptive", "total_max_attempts": max_attempts()}
            config = Config(retries=retries, max_pool_connections=32)
            client = boto3.session.Session().client("s3", config=config)
            _clients.clear()  # a client inherited from the parent process must not be used
            _clients[pid] = client
    return client


def max_attempts() -> int:
    """How many times one S3 operation is tried: `AWS_MAX_ATTEMPTS` if set, else 10.

    An explicit botocore `Config` would otherwise override the user's `AWS_MAX_ATTEMPTS`;
    reading it here keeps boto3's documented knob working for both retry layers.
    """
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "")))
    except ValueError:
        return DEFAULT_MAX_ATTEMPTS


def reset_client() -> None:
    """Forget the cached client, so the next call rebuilds it from the current environment."""
    with _clients_lock:
        _clients.clear()


def _forget_after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # may have been held by another thread at fork time
    _clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# --------------------------------------------------------------------------- errors

_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
#: error codes of a store that cannot serve now (besides any 5xx answer)
_UNAVAILABLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
                "ServiceUnavailable", "InternalError"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _s3_error(uri: str, err: Exception) -> StorageError:
    """Turn a botocore/boto3 exception into a one-line StorageError."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(err, StorageError):
        return err  # already one line (e.g. from a retry loop below)
    if isinstance(err, S3UploadFailedError) and isinstance(err.__context__, (ClientError, BotoCoreError)):
        err = err.__context__  # the managed uploader wraps the real S3 answer
    if isinstance(err, ClientError):
        code = _error_code(err)
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: bucket does not exist")
        if code in _MISSING_KEY:
            return StorageError(f"{uri}: no such key")
        if code in _DENIED:
            return StorageError(f"{uri}: access denied")
        if code in _BAD_CREDENTIALS:
            return StorageError(f"{uri}: credentials rejected by S3 ({code})")
        message = str(err.response.get("Error", {}).get("Message", "")).splitlines()
        detail = f": {message[0]}" if message and message[0] else ""
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return StorageError(f"{uri}: S3 error {code or 'unknown'}{detail}", unavailable=status >= 500 or code in _UNAVAILABLE)
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"{uri}: no usable AWS credentials "
            "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        )
    if isinstance(err, ConnectionClosedError):  # botocore has already retried it max_attempts() times
        return StorageError(f"{uri}: S3 closed the connection before answering ({max_attempts()} attempts)", unavailable=True)
    if isinstance(err, ReadTimeoutError):
        return StorageError(f"{uri}: S3 did not answer in time ({max_attempts()} attempts)", unavailable=True)
    if isinstance(err, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach S3 endpoint {err.kwargs.get('endpoint_url', '')}", unavailable=True)
    if isinstance(err, BotoCoreError):  # messages are built from endpoints and parameters only
        return StorageError(f"{uri}: {' '.join(str(err).split())}")
    return StorageError(f"{uri}: {type(err).__name__}: {err}")


def _local_error(uri: str, err: OSError) -> StorageError:
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return StorageError(f"{uri}: no such file")
    if isinstance(err, IsADirectoryError):
        return StorageError(f"{uri}: is a directory")
    if isinstance(err, PermissionError):
        return StorageError(f"{uri}: permission denied")
    return StorageError(f"{uri}: {err.strerror or err}")


def _missing_object(uri: str, bucket: str) -> StorageError:
    """A HEAD that says 404 does not say whether the key or the whole bucket is missing."""
    return StorageError(f"{uri}: {'no such key' if _bucket_exists(bucket) else 'bucket does not exist'}")


def _bucket_exists(bucket: str) -> bool:
    try:
        s3_client().head_bucket(Bucket=bucket)
    except Exception as err:  # noqa: BLE001 - any answer other than "404" is surfaced below
        if _error_code(err) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise _s3_error(f"s3://{bucket}", err) from None
    return True


# --------------------------------------------------------------------------- damaged answers

T = TypeVar("T")


class _BrokenResponse(Exception):
    """An answer that arrived damaged (cut, short, missing what it must carry): ask again."""


def _damage(err: Exception) -> str | None:
    """Why reading an answer failed, when the transport is to blame (worth another request).

    None means the failure is not the transport's (a real S3 error, a bug) and is final.
    """
    from botocore.exceptions import (
        FlexibleChecksumError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(err, _BrokenResponse):
        return str(err)
    if isinstance(err, ResponseStreamingError):
        return f"connection broken mid-body ({_root_cause(err.kwargs.get('error'))})"
    if isinstance(err, IncompleteReadError):
        return f"body cut short ({err.kwargs.get('actual_bytes')} of {err.kwargs.get('expected_bytes')} bytes)"
    if isinstance(err, FlexibleChecksumError):
        return "body does not match its checksum"
    if isinstance(err, ReadTimeoutError):
        return "read timed out mid-body"
    if isinstance(err, (Urllib3Error, ConnectionError, TimeoutError)):
        return f"connection broken mid-body ({_root_cause(err)})"
    return None


def _unretried_damage(err: Exception) -> str | None:
    """`_damage` for an error raised by the request itself, unless botocore already retried it.

    botocore retries its own connection errors (closed, timed out, unreachable), but an
    error answer whose body breaks while botocore reads it surfaces as a raw urllib3 error.
    """
    from botocore.exceptions import BotoCoreError

    return None if isinstance(err, BotoCoreError) else _damage(err)


def _root_cause(err: BaseException | None) -> str:
    """The innermost exception's class name: 'ConnectionResetError', not urllib3's wrapping text."""
    seen = 0
    while err is not None and seen < 8:
        inner = next((a for a in getattr(err, "args", ()) if isinstance(a, BaseException)), None)
        inner = inner or err.__cause__ or err.__context__
        if inner is None:
            break
        err, seen = inner, seen + 1
    return type(err).__name__ if err is not None else "unknown"


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: spread the re-reads of many workers hit at once."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def _fetch(uri: str, request: Callable[[], dict], check: Callable[[dict], T]) -> T:
    """Send `request`, pass its answer through `check` (which reads and verifies it); retry damage.

    Errors from `request` itself propagate unchanged: botocore has already retried those
    that deserve it, and callers give some of them meaning (a missing key, a bad range).
    Only an answer that `check` finds damaged is fetched again, up to `max_attempts()`.
    """
    attempts = max_attempts()
    reason = "unknown"
    for attempt in range(1, attempts + 1):
        try:
            response = request()
        except Exception as err:  # noqa: BLE001 - classified right here
            why = _unretried_damage(err)
            if why is None:
                raise
            reason = why
            if attempt < attempts:
                time.sleep(_backoff(attempt))
            continue
        try:
            return check(response)
        except Exception as err:  # noqa: BLE001 - classified right here
            why = _damage(err)
            if why is None:
                raise _s3_error(uri, err) from None
            reason = why
        finally:
            body = response.get("Body")
            if body is not None:
                with contextlib.suppress(Exception):
                    body.close()  # a half-read connection must not go back to the pool
        if attempt < attempts:
            time.sleep(_backoff(attempt))
    raise StorageError(f"{uri}: S3 answer still damaged after {attempts} attempts ({reason})", unavailable=True)


_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


class _WholeBody:
    """Read a GET's body and check it is the whole object: its length, then its MD5 ETag.

    The ETag of an object uploaded in one piece without SSE-KMS/SSE-C is its MD5, which
    catches a body that is short although its headers agree with it. Some S3-compatible
    stores use other ETags (e.g. MinIO with encryption); the same mismatching bytes arriving
    twice are taken as such a store, not as damage, at the cost of one extra read.
    """

    def __init__(self) -> None:
        self._mismatched: set[str] = set()

    def __call__(self, response: dict) -> bytes:
        body = response["Body"].read()
        expected = response.get("ContentLength")
        if expected is None:
            raise _BrokenResponse("answer without Content-Length")
        if len(body) != int(expected):
            raise _BrokenResponse(f"body cut short ({len(body)} of {expected} bytes)")
        etag = (response.get("ETag") or "").strip('"').lower()
        encrypted = response.get("SSECustomerAlgorithm") or str(response.get("ServerSideEncryption", "")).startswith("aws:kms")
        if _MD5_ETAG.fullmatch(etag) and not encrypted:
            digest = hashlib.md5(body, usedforsecurity=False).hexdigest()
            if digest != etag and digest not in self._mismatched:
                self._mismatched.add(digest)
                raise _BrokenResponse("body does not match its ETag")
        return body


def _complete_head(response: dict) -> dict:
    """A HEAD answer cut inside its headers parses as a complete one that lacks them."""
    if response.get("ContentLength") is None:
        raise _BrokenResponse("answer without Content-Length")
    return response


# --------------------------------------------------------------------------- reading


def read_bytes(uri: str) -> bytes:
    """The whole content of a file or object."""
    if is_remote(uri):
        bucket, key = _split_s3(uri)
        try:
            return _fetch(uri, lambda: s3_client().get_object(Bucket=bucket, Key=key), _WholeBody())
        except Exception as err:  # noqa: BLE001
            raise _s3_error(uri, err) from None
    try:
        with open(local_path(uri), "rb") as f:
            return f.read()
    except OSError as err:
        raise _local_error(uri, err) from None


def stat(uri: str) -> ObjectInfo:
    """Size, modification time and (S3 only) ETag of one file or object."""
    if is_remote(uri):
        bucket, key = _split_s3(uri)
        try:
            head = _fetch(uri, lambda: s3_client().head_object(Bucket=bucket, Key=key), _complete_head)
        except Exception as err:  # noqa: BLE001
            if _error_code(err) in _MISSING_KEY:
                raise _missing_object(uri, bucket) from None
            raise _s3_error(uri, err) from None
        modified = head.get("LastModified")
        return ObjectInfo(
            uri=uri,
            size=int(head["ContentLength"]),
            mtime=modified.timestamp() if modified else None,
            etag=(head.get("ETag") or "").strip('"') or None,
        )
    path = local_path(uri)
    try:
        st = os.stat(path)
    except OSError as err:
        raise _local_error(uri, err) from None
    if os.path.isdir(path):
        raise StorageError(f"{uri}: is a directory")
    return ObjectInfo(uri=uri, size=st.st_size, mtime=st.st_mtime, etag=None)


def exists(uri: str) -> bool:
    """True if the file, folder, object or S3 "folder" (any key under `uri/`) exists."""
    if not is_remote(uri):
        return os.path.exists(local_path(uri))
    bucket, key = _split_s3(uri)
    if not key:
        return _bucket_exists(bucket)
    if not key.endswith("/"):
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as err:  # noqa: BLE001
            if _error_code(err) not in _MISSING_KEY:
                raise _s3_error(uri, err) from None
    try:
        listing = s3_client().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
    except Exception as err:  # noqa: BLE001
        if _error_code(err) == "NoSuchBucket":
            return False
        raise _s3_error(uri, err) from None
    return listing.get("KeyCount", 0) > 0


# --------------------------------------------------------------------------- listing


def _suffix_filter(suffixes: Iterable[str] | None) -> tuple[str, ...] | None:
    return tuple(s.lower() for s in suffixes) if suffixes is not None else None


def list_files(prefix: str, suffixes: Iterable[str] | None = None) -> Iterator[ObjectInfo]:
    """Every file under a folder or S3 prefix, recursively, optionally filtered by suffix.

    The prefix is treated as a folder: `s3://b/videos` lists `s3://b/videos/...`, not
    `s3://b/videos2/...`. Results stream page by page, so a bucket with millions of keys
    starts yielding at once and is never held in memory. Suffixes match case-insensitively.
    A missing local folder or an empty prefix yields nothing; a missing bucket raises.
    """
    wanted = _suffix_filter(suffixes)
    if is_remote(prefix):
        yield from _list_s3(prefix, wanted)
    else:
        yield from _list_local(prefix, wanted)


def _list_s3(prefix: str, wanted: tuple[str, ...] | None) -> Iterator[ObjectInfo]:
    bucket, key = _split_s3(prefix)
    if key and not key.endswith("/"):
        key += "/"
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    try:
        for page in pages:
            for obj in page.get("Contents", ()):
                name = obj["Key"]
                if name.endswith("/") or (wanted and not name.lower().endswith(wanted)):
                    continue  # "folder" placeholder objects, or not a wanted type
                yield ObjectInfo(
                    uri=f"s3://{bucket}/{name}",
                    size=int(obj["Size"]),
                    mtime=obj["LastModified"].timestamp() if obj.get("LastModified") else None,
                    etag=(obj.get("ETag") or "").strip('"') or None,
                )
    except Exception as err:  # noqa: BLE001
        raise _s3_error(prefix, err) from None


def _list_local(prefix: str, wanted: tuple[str, ...] | None) -> Iterator[ObjectInfo]:
    root = local_path(prefix)
    if os.path.isfile(root):
        if not wanted or root.lower().endswith(wanted):
            yield stat(prefix)
        return
    if not os.path.isdir(root):
        return
    seen: set[str] = set()

    def walk(folder: str, rel: tuple[str, ...]) -> Iterator[ObjectInfo]:
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise _local_error(folder, err) from None
        for entry in entries:
            if entry.is_dir():
                yield from walk(entry.path, (*rel, entry.name))
            elif entry.is_file() and (not wanted or entry.name.lower().endswith(wanted)):
                st = entry.stat()
                yield ObjectInfo(join(prefix, *rel, entry.name), st.st_size, st.st_mtime, None)

    yield from walk(root, ())


# --------------------------------------------------------------------------- writing

def check_writable(uri: str) -> None:
    """Raise a one-line StorageError now when a job could not write under ``uri``.

    A job checks its output before loading weights or starting Ray: otherwise a missing
    bucket or a read-only folder is found only at the first write, after the cluster was
    joined (half a minute for a local Ray) and the work begun. S3: the bucket must exist and
    answer (a HEAD of the bucket, no object written). Local: the nearest existing folder on
    the way to ``uri`` must be a folder this process may create entries in, and ``uri``
    itself, if it exists, a folder.
    """
    if is_remote(uri):
        bucket, _ = _split_s3(uri)
        if not _bucket_exists(bucket):
            raise StorageError(f"{uri}: bucket does not exist")
        return
    path = os.path.abspath(local_path(uri))
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"{uri}: exists and is not a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StorageError(f"{uri}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"{uri}: permission denied (cannot write in {existing})")


BytesLike = bytes | bytearray | memoryview


def write_bytes(uri: str, data: BytesLike) -> None:
    """Write a whole file or object atomically: readers see the old content or the new, never a part."""
    if isinstance(data, str):
        raise TypeError("write_bytes needs bytes, not str (encode it first)")
    if is_remote(uri):
        _write_s3(uri, data)
    else:
        try:
            with atomic_local_file(local_path(uri)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
        except OSError as err:
            raise _local_error(uri, err) from None


#: ``.<name>.<12 hex>.tmp``: where ``atomic_local_file`` builds a file before renaming it into place
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def _temp_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


def _lock_own_temp(fd: int, tmp: str) -> bool:
    """Lock a just-created temp file for the whole write; False if a cleaner got to it first.

    The lock, held until the rename, is how ``remove_orphan_temp_files`` tells a live write's
    temp file from a killed one's. A cleaner that locked the file in the instant between its
    creation and this call has unlinked it (or is about to): then the lock fails, or the name
    no longer points at this file, and the caller starts over under a new name.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # no locks on this file system: cleaners cannot lock it either
        return True
    try:
        return os.fstat(fd).st_nlink > 0 and os.stat(tmp).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def atomic_local_file(path: str | os.PathLike) -> Iterator[str]:
    """The one way this project creates a local file: yield a hidden temp path beside ``path``
    for the caller to fill (open and write it, ``torch.save`` to it, download into it); on a
    clean exit it is fsynced and renamed onto ``path``, on any error removed.

    A reader never sees half a file and a crash leaves only a ``_TEMP_NAME`` file, which every
    listing skips, the next run that owns the folder deletes (``remove_orphan_temp_files``:
    the temp file of a live write is locked, a killed one's is not) and
    ``remove_stale_temp_files`` deletes once it is old.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, _temp_name(os.path.basename(path)))
        lock_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        if _lock_own_temp(lock_fd, tmp):
            break
        os.close(lock_fd)  # a cleaner took it between create and lock: another name
    try:
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the bytes are on disk before the name points at them
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        os.close(lock_fd)
    _fsync_folder(folder)


def remove_stale_temp_files(folder_uri: str, older_than_s: float = 600.0) -> int:
    """Delete the temp files that writes killed mid-way left in a local folder; returns how many.

    ``atomic_local_file`` writes ``_temp_name(name)`` and renames it; a process killed before
    the rename (a driver's node lost, ``kill -9``) leaves it behind, hidden from every listing
    but taking space, and a resumed run writes that file again under a new temp name. Only temp
    files untouched for ``older_than_s`` go, so a write still running in another process (two
    jobs sharing an output) is never pulled from under it. S3 has no such leftovers: an upload
    becomes visible whole or not at all.
    """
    if is_remote(folder_uri):
        return 0
    folder = local_path(folder_uri)
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat(follow_symlinks=False).st_mtime >= older_than_s:
                os.unlink(entry.path)
                removed += 1
    return removed


def remove_orphan_temp_files(folder_uri: str) -> int:
    """Delete the temp files in a local folder that no live write holds; returns how many.

    For the end of a run that owns the output: its own writes are done, so a temp file left is
    a killed write's (an earlier, interrupted run's), however recent; ``remove_stale_temp_files``
    would keep it for ten minutes. A write in progress holds an exclusive ``flock`` on its temp
    file (``atomic_local_file``), so a write by another live process, on this host or through a
    file system that shares locks, is never pulled from under it. Where locks cannot be taken
    the file is left to the age rule.
    """
    if is_remote(folder_uri):
        return 0
    try:
        entries = list(os.scandir(local_path(folder_uri)))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
            os.unlink(entry.path)
            removed += 1
        except OSError:  # held (a live write), or no locks here: keep it
            pass
        finally:
            os.close(fd)
    return removed


def _fsync_folder(folder: str) -> None:
    """Persist the rename itself; some file systems do not allow opening a folder, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_s3(uri: str, data: BytesLike) -> None:
    bucket, key = _split_s3(uri)
    client = s3_client()
    try:
        if len(data) <= MULTIPART_THRESHOLD:
            client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
            return
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=4,  # bounds memory: about this many chunks in flight
        )
        client.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)
    except Exception as err:  # noqa: BLE001
        raise _s3_error(uri, err) from None


# --------------------------------------------------------------------------- deleting and pyarrow


def delete(uri: str) -> None:
    """Remove a file or object; already gone is fine (a rerun finishing a killed compaction)."""
    if is_remote(uri):
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as err:  # noqa: BLE001
            raise StorageError(f"{uri}: cannot delete ({type(err).__name__})") from None
        return
    try:
        os.unlink(local_path(uri))
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StorageError(f"{uri}: cannot delete ({err.strerror})") from None


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """A pyarrow file system and path for a local path or ``s3://`` URI.

    pyarrow reads only the column chunks and row groups a scan needs (ranged GETs on S3), which
    is what keeps a filtered read of a big history cheap. The endpoint follows the same
    ``AWS_ENDPOINT_URL(_S3)`` variables boto3 honours here. (pyarrow is imported here, not at
    the top, as boto3 is: a decode worker that never scans a dataset never loads it.)
    """
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1]
