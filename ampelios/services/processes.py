"""Child processes Ampelios starts (broker, Postgres, workers): ports, readiness, stopping.

Every process is started in its own session, so a Ctrl-C reaches only Ampelios, which
then stops its children in order, each by its own PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Wait until something accepts connections on ``port``; fail if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    stop_process(process, signal.SIGKILL, 1.0)
    raise TimeoutError(f"{process.args[0]} did not listen on port {port} within {timeout}s; see {log_path}")


def stop_process(process: subprocess.Popen[bytes] | None, sig: int, grace: float) -> None:
    """Send ``sig`` to the process, wait ``grace`` seconds, then SIGKILL. Idempotent."""
    if process is None or process.poll() is not None:
        return
    try:
        os.kill(process.pid, sig)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass
