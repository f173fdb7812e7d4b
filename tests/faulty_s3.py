"""An HTTP proxy that breaks a chosen share of S3 responses, for fault-injection tests.

It sits on 127.0.0.1 in front of the test S3 server (moto) and relays each request as it
came (headers untouched, so signatures stay valid), then sends the answer back, damaged
when the counter says so:

* ``reset``: the status line, headers and half of the body, then a TCP reset (RST), which
  is what a load balancer dropping a connection looks like to the client;
* ``truncate``: the same half answer, then a clean close (FIN) before the promised length;
* ``shorten``: ``Content-Length`` rewritten to half and half the body sent: a response
  that looks complete and is silently short, caught only by an ETag/size check;
* ``unavailable``: a well-formed ``503 SlowDown`` instead of the answer, as a store under an
  outage or throttling sends (with ``share=1`` and a time-bounded ``matches``, an outage).

A response without a body (HEAD, most PUTs) is cut in the middle of its headers instead.
Which responses are damaged is decided by counting, not by chance: with ``share = 0.25``
exactly every fourth matching response is damaged, so a test fails or passes the same way
every run, and with any share below 0.5 no two consecutive matching responses are both
damaged, so a retried request always gets through. ``max_faults`` bounds the damage and
``lifetime_s`` stops the proxy by itself if a test forgets to.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

MODES = ("reset", "truncate", "shorten", "unavailable")

#: (method, path) -> whether this request's response may be damaged
Matcher = Callable[[str, str], bool]


def _any_request(method: str, path: str) -> bool:
    return True


@dataclass
class FaultCounter:
    """Decides, by counting, which matching responses to damage: exactly ``share`` of them."""

    share: float
    max_faults: int | None = None
    seen: int = 0
    faults: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_is_fault(self) -> bool:
        with self.lock:
            self.seen += 1
            due = int(self.seen * self.share) > int((self.seen - 1) * self.share)
            if due and (self.max_faults is None or self.faults < self.max_faults):
                self.faults += 1
                return True
            return False


class FaultyS3Proxy:
    """A threaded proxy on 127.0.0.1; ``url`` is the endpoint to give boto3 instead of the server's."""

    def __init__(
        self,
        upstream: str,
        share: float,
        mode: str = "reset",
        matches: Matcher = _any_request,
        max_faults: int | None = None,
        lifetime_s: float = 300.0,
        max_connections: int = 64,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.mode = mode
        self.matches = matches
        self.counter = FaultCounter(share, max_faults)
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, damaged), for assertions
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="faulty-s3-proxy", daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultyS3Proxy:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._timer.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._listener.close()

    @property
    def faults(self) -> int:
        return self.counter.faults

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not self._slots.acquire(timeout=5):
                client.close()
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    # ------------------------------------------------------------------ one client connection

    def _handle(self, client: socket.socket) -> None:
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        client.settimeout(30)
        reader = client.makefile("rb")
        try:
            while not self._stop.is_set():
                request = _read_request(reader, client)
                if request is None:
                    return
                method, target, headers, body = request
                response = _forward(upstream, method, target, headers, body)
                damaged = self.matches(method, target) and self.counter.next_is_fault()
                self.requests.append((method, target, damaged))
                if not self._reply(client, method, response, damaged):
                    return
        except (OSError, http.client.HTTPException):
            return
        finally:
            reader.close()
            client.close()
            upstream.close()
            self._slots.release()

    def _reply(self, client: socket.socket, method: str, response: tuple, damaged: bool) -> bool:
        """Send the answer (whole or damaged); False when the connection is finished."""
        status, reason, headers, body = response
        if damaged and self.mode == "unavailable":
            body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>")
            status, reason, headers, damaged = 503, "Slow Down", [("Content-Type", "application/xml")], False
        if damaged and self.mode == "shorten" and len(body) > 1:
            body = body[: len(body) // 2]
            damaged = False  # from here on it is a well-formed, short, answer
        head = _head(status, reason, headers, len(body), keep_length=method == "HEAD")
        if not damaged:
            client.sendall(head + body)
            return True
        if body:
            client.sendall(head + body[: len(body) // 2])
        else:
            client.sendall(head[: len(head) // 2])
        if self.mode == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False


def _read_request(reader, client: socket.socket) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    line = reader.readline(65537)
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    if lower.get("expect", "").lower() == "100-continue":
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # answered here; not forwarded
        headers = [(k, v) for k, v in headers if k.lower() != "expect"]
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
        headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        headers.append(("Content-Length", str(len(body))))
    else:
        body = reader.read(int(lower.get("content-length", "0") or 0))
    return method, target, headers, body


def _read_chunked(reader) -> bytes:
    parts = []
    while True:
        size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while reader.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(reader.read(size))
        reader.readline()


def _forward(upstream: http.client.HTTPConnection, method: str, target: str, headers, body: bytes) -> tuple:
    upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        upstream.putheader(name, value)
    upstream.endheaders(body or None)
    response = upstream.getresponse()
    data = response.read()
    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "content-length", "connection")]
    if method == "HEAD":
        kept += [(k, v) for k, v in response.getheaders() if k.lower() == "content-length"]
    return response.status, response.reason, kept, data


def _head(status: int, reason: str, headers, length: int, keep_length: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not keep_length:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
