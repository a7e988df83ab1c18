"""Child processes Ampelios starts (broker, Postgres, workers): ports, readiness, stopping.

Every process is started in its own session, so a Ctrl-C reaches only Ampelios, which
then stops its children in order, each by its own PID; and each is told by the kernel to
stop when Ampelios dies (:func:`die_with_parent`), so that even a SIGKILL of Ampelios
leaves no orphan.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when the
    thread that started it ends, however it ends (Linux ``PR_SET_PDEATHSIG``; kept across
    ``exec``). Start children from the main thread."""

    def request() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

    return request


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already (or it cannot be bound)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def reachable(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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
            name = Path(str(process.args[0])).name
            raise RuntimeError(f"{name} exited with {process.returncode} ({last_line(log_path)}); see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    stop_process(process, signal.SIGKILL, 1.0)
    raise TimeoutError(f"{process.args[0]} did not listen on port {port} within {timeout}s; see {log_path}")


def last_line(path: Path) -> str:
    """The last non-empty line of a log file ("" when there is none)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def running_as(pid: int, name: str) -> bool:
    """Whether process ``pid`` runs and its command line names ``name`` (a pid reused
    by another program does not)."""
    try:
        return name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def wait_until_gone(pid: int, name: str, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` running ``name`` (as
    :func:`running_as` tells) to end and be reaped; whether it has. A killed server's pid
    stays taken until its new parent reaps it, and a server that finds its lock file's
    pid taken (PostgreSQL) refuses to start."""
    deadline = time.monotonic() + timeout
    while running_as(pid, name) or _zombie(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


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
