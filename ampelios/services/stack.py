"""The whole stack on one machine: broker, Postgres and a worker, started and stopped in order.

What is configured is used (``AMPELIOS_BROKER``, ``AMPELIOS_DATABASE_URL``); what is not
is started embedded, with its data and logs under ``AMPELIOS_STATE_DIR``. Stopping goes
in reverse: the worker (SIGTERM, a clean Faust shutdown that commits its offsets), then
the broker, then Postgres, each by its own PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ampelios.config import Settings
from ampelios.services.broker import LocalBroker, TansuBroker, bootstrap_servers
from ampelios.services.database import EmbeddedPostgres
from ampelios.services.kafka import ApacheKafka
from ampelios.services.processes import die_with_parent, port_in_use, reachable, running_as, stop_process

log = logging.getLogger(__name__)


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A small JSON HTTP client (status, decoded body); errors are answers, not raises.
    ``body`` is sent as JSON, or as is when it is ``bytes``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def changelog_records_recovered(base: str) -> dict[str, float]:
    """``ampelios_changelog_records_recovered`` of the worker at ``base`` (its
    ``/metrics``), per table."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    prefix = 'ampelios_changelog_records_recovered{table="'
    return {line[len(prefix) :].split('"')[0]: float(line.split()[-1]) for line in lines if line.startswith(prefix)}


def wait_for_job(
    base: str, job: str, timeout: float = 3600.0, on_status: Callable[[dict[str, Any]], None] = lambda s: None
) -> dict[str, Any]:
    """Poll ``/trigger/{job}`` until the replay is ``done`` or ``failed``; return its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, status = http_json("GET", f"{base}/trigger/{job}")
        if code != 200:
            raise RuntimeError(f"/trigger/{job} answered {code}: {status}")
        on_status(status)
        if status["state"] != "running":
            return dict(status)
        time.sleep(0.2)
    raise TimeoutError(f"replay job {job} still running after {timeout:.0f}s")


def wait_until_reflected(base: str, source_id: int, timeout: float = 3600.0, stored: bool = False) -> dict[str, Any]:
    """Poll ``/stats`` until nothing published is left to reflect (lag 0) and, with
    ``stored``, nothing is left to write to Postgres (sink_lag 0); return the stats."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, stats = http_json("GET", f"{base}/stats?source_id={source_id}")
        if code == 200 and stats["lag"] == 0 and (not stored or stats["sink_lag"] == 0):
            return dict(stats)
        time.sleep(0.2)
    raise TimeoutError(f"events were not reflected within {timeout:.0f}s")


class WorkerProcess:
    """``ampelios worker`` as a child process, ready when ``/health`` answers."""

    def __init__(self, settings: Settings, output: IO[bytes] | None = None) -> None:
        self.settings = settings
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return self.settings.web_url

    def start(self, timeout: float = 120.0) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")}
        env.update(self.settings.to_env())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ampelios", "worker"],
            env=env,
            stdout=self.output,
            stderr=subprocess.STDOUT if self.output is not None else None,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.process.returncode} before it was ready")
            try:
                if http_json("GET", f"{self.base_url}/health", timeout=1.0)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the worker did not answer {self.base_url}/health within {timeout}s")

    def peak_memory_mb(self) -> float | None:
        """The worker's peak resident memory so far (Linux ``VmHWM``), in MiB."""
        if self.process is None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return kib / 1024 if kib is not None else None

    def kill(self) -> int | None:
        """SIGKILL: a crash, for tests of what survives one."""
        return self.stop(grace=0.0, sig=signal.SIGKILL)

    def stop(self, grace: float = 60.0, sig: int = signal.SIGTERM) -> int | None:
        """Stop cleanly (SIGTERM), or SIGKILL after ``grace``; return the exit code."""
        process = self.process
        stop_process(process, sig, grace)
        self.process = None
        return process.returncode if process is not None else None


RUNNING_FILE = "running.json"  # in AMPELIOS_STATE_DIR while a stack runs there


class StackError(Exception):
    """The stack cannot start; the message is one line that says why."""


@dataclass(frozen=True)
class RunningStack:
    """What a running stack records in its state directory, so that a second ``up`` on
    it, ``ampelios replay`` and ``ampelios status`` find it: the pid of the process that
    runs it, its worker's web URL, its broker and database URLs."""

    pid: int
    web_url: str
    broker: str
    database_url: str | None

    @classmethod
    def find(cls, state_dir: Path) -> RunningStack | None:
        """The stack running on ``state_dir``, or ``None`` (a record left by a stack that
        was killed is removed)."""
        path = state_dir / RUNNING_FILE
        try:
            running = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if running_as(running.pid, "ampelios"):
            return running
        path.unlink(missing_ok=True)
        return None

    def record(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        partial = state_dir / (RUNNING_FILE + ".partial")
        partial.unlink(missing_ok=True)
        partial.touch(mode=0o600)  # the database URL holds the embedded Postgres's password
        partial.write_text(json.dumps(self.__dict__))
        partial.replace(state_dir / RUNNING_FILE)

    @staticmethod
    def forget(state_dir: Path) -> None:
        """Remove this process's record from ``state_dir``."""
        running = RunningStack.find(state_dir)
        if running is not None and running.pid == os.getpid():
            (state_dir / RUNNING_FILE).unlink(missing_ok=True)


def check_can_start(settings: Settings) -> None:
    """Raise :class:`StackError` unless a stack can start with ``settings``: none runs on
    its state directory, its web port is free, a configured broker and database answer."""
    running = RunningStack.find(settings.state_dir)
    if running is not None:
        raise StackError(
            f"Ampelios is already running on {settings.state_dir}: pid {running.pid}, web at {running.web_url}"
        )
    if port_in_use(settings.web_bind_address, settings.web_port):
        raise StackError(
            f"the web port {settings.web_port} on {settings.web_bind_address} is in use: "
            "stop what uses it or set AMPELIOS_WEB_PORT"
        )
    if settings.broker is not None:
        servers = [s.rsplit(":", 1) for s in bootstrap_servers(settings.broker).split(",")]
        if not any(reachable(host, int(port)) for host, port in servers):
            raise StackError(f"the broker at {settings.broker} (AMPELIOS_BROKER) cannot be reached")
    if settings.database_url is not None:
        url = urllib.parse.urlsplit(settings.database_url)
        if not reachable(url.hostname or "127.0.0.1", url.port or 5432):
            raise StackError(f"the database at {settings.database_url} (AMPELIOS_DATABASE_URL) cannot be reached")


LOCAL_KAFKA_HEAP = "512m"


def local_broker(settings: Settings) -> LocalBroker:
    """The broker ``up`` starts when none is configured (``AMPELIOS_LOCAL_BROKER``):
    Apache Kafka with its log in ``state_dir/kafka``, so that a restart finds every topic
    and the worker its state, or an in-memory Tansu broker."""
    log_path = settings.state_dir / "logs" / "broker.log"
    if settings.local_broker == "tansu":
        return TansuBroker(log_path)
    return ApacheKafka(log_path, settings.state_dir / "kafka", heap=LOCAL_KAFKA_HEAP)


class StopRequested(BaseException):
    """Ctrl-C or SIGTERM arrived: unwind, stopping every child process on the way."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`StopRequested` for the duration, so that
    ``with Stack(...)`` always stops its children, whichever signal ends Ampelios (a
    process started in the background may even have SIGINT ignored)."""

    requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal requested
        if not requested:  # a second Ctrl-C must not cut the clean-up short
            requested = True
            raise StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Stack:
    """Broker + Postgres + worker. Use as a context manager; ``settings`` are complete
    (with the embedded services' URLs) once it has started."""

    def __init__(self, settings: Settings, worker_output: IO[bytes] | None = None) -> None:
        self.settings = settings
        self.worker_output = worker_output
        self.broker: LocalBroker | None = None
        self.database: EmbeddedPostgres | None = None
        self.worker: WorkerProcess | None = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def logs(self) -> Path:
        return self.settings.state_dir / "logs"

    def start(self) -> None:
        """Start what is not configured, then the worker; record the stack in its state
        directory (:class:`RunningStack`). Raises :class:`StackError` before starting
        anything when :func:`check_can_start` says no."""
        check_can_start(self.settings)
        # Each service is kept before it starts, so that stop() ends it even when its start
        # is interrupted (Ctrl-C while waiting for it to be ready).
        if self.settings.broker is None:
            self.broker = local_broker(self.settings)
            self.settings = self.settings.with_(broker=self.broker.start().url)
        if self.settings.database_url is None:
            self.database = EmbeddedPostgres(self.settings.state_dir / "postgres", self.logs / "postgres.log")
            self.settings = self.settings.with_(database_url=self.database.start().url)
        self.worker = WorkerProcess(self.settings, self.worker_output)
        self.worker.start()
        s = self.settings
        RunningStack(os.getpid(), self.worker.base_url, s.broker_url, s.database_url).record(s.state_dir)

    def stop(self) -> None:
        for service in (self.worker, self.broker, self.database):
            if service is not None:
                service.stop()
        RunningStack.forget(self.settings.state_dir)
