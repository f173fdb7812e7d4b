"""Stopping a job's process with a signal at a chosen moment, for the interrupt tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster.evalset import kill_session, wait_session_gone


def signal_when(cmd: list[str], env: dict, cwd: Path, ready: Callable[[], bool], sig: int, log: Path,
                what: str = "the moment to stop it") -> tuple[int, str, list[int]]:
    """Run ``cmd`` in its own session, send ``sig`` once ``ready()`` (SIGINT to its process group,
    as Ctrl-C does; SIGTERM to the process); (exit status, stderr, processes of it left)."""
    with open(log, "w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None and not ready():
                time.sleep(0.02)
            err.seek(0)
            assert proc.poll() is None and ready(), f"ended before {what}: {err.read()[-3000:]}"
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                kill_session(proc.pid)
                proc.wait()
        leftover = wait_session_gone(proc.pid, timeout_s=30)
        kill_session(proc.pid)
        err.seek(0)
        return code, err.read(), leftover
