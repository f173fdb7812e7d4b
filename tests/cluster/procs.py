"""Process plumbing shared by the tests that start real Ray clusters with `ray start`.

Those clusters run in their own sessions and temp dirs, so cleaning up means finding their
processes by what they are (descendants of what we started, or anything naming our private
temp dir) rather than by a process group. Linux only: everything reads ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cluster.runtime import process_stats

__all__ = ["RAY", "free_ports", "descendants", "processes_mentioning", "comm", "kill", "tail", "torn_down",
           "wait_ray_started"]

RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` CLI of this interpreter


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held together, so never repeated)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every live (non-zombie) process below them, whatever session they moved to."""
    children: dict[int, list[int]] = {}
    for p in process_stats():
        if p.state != "Z":
            children.setdefault(p.ppid, []).append(p.pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def processes_mentioning(text: str) -> set[int]:
    """Live processes (but this one) whose command line names ``text``, e.g. a private temp dir."""
    needle, found = text.encode(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                pass
    found.discard(os.getpid())
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(path: Path, chars: int = 2500) -> str:
    """The end of a log file for a failure message; empty if it cannot be read."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_ray_started(proc: subprocess.Popen, log: Path, deadline: float, name: str) -> None:
    """Until ``ray start`` (``proc``, writing ``log``) prints that its node registered with the
    GCS; a test failure with the log's end if it exits or ``deadline`` passes first."""
    import pytest

    while b"Ray runtime started" not in log.read_bytes():
        if proc.poll() is not None:
            pytest.fail(f"`ray start` of {name} exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not start in time:\n{tail(log)}")
        time.sleep(0.3)


@contextlib.contextmanager
def torn_down(stop: Callable[[], list], base: Path) -> Iterator[None]:
    """However the block ends: ``stop()`` ends the cluster's processes and returns those still
    alive, the cluster's private folder ``base`` is removed, and a stray process fails the test."""
    try:
        yield
    finally:
        stray = stop()
        shutil.rmtree(base, ignore_errors=True)
        assert not stray, f"Ray processes left behind: {stray}"
