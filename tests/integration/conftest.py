"""Real components for integration tests: the embedded broker (one per test: it starts in
milliseconds), embedded Postgres (one per session, a fresh database per test) and worker
processes. Everything runs on free loopback ports in temporary directories and is
stopped by its own PID at teardown."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from ampelios.config import Settings
from ampelios.core.events import EventBatch, write_csv
from ampelios.core.journeys import features_of, sessionize
from ampelios.services.broker import TansuBroker
from ampelios.services.database import EmbeddedPostgres
from ampelios.services.kafka import ApacheKafka
from ampelios.services.processes import free_port
from ampelios.services.stack import WorkerProcess, http_json, wait_for_job, wait_until_reflected
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def postgres_server() -> Iterator[EmbeddedPostgres]:
    """An embedded Postgres in its own temporary directory, stopped and removed at exit.

    Not under pytest's temporary directory: any other pytest session resets that to mode
    0700, which the server's own user can then no longer traverse."""
    with tempfile.TemporaryDirectory(prefix="ampelios-test-postgres-") as root:
        server = EmbeddedPostgres(Path(root) / "data", Path(root) / "postgres.log").start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    with postgres_server() as server:
        yield server


def _admin(url: str, sql: str) -> None:
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        conn.cursor().execute(sql)
    finally:
        conn.close()


@pytest.fixture
def database_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(postgres.url, f"CREATE DATABASE {name}")
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    _admin(postgres.url, f"DROP DATABASE {name} WITH (FORCE)")


Broker = TansuBroker | ApacheKafka


@pytest.fixture
def new_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    """Start a broker of the kind chosen with ``--broker`` (named ``name`` in tmp_path);
    every one is stopped at teardown."""
    started: list[Broker] = []

    def start(name: str) -> Broker:
        if request.config.getoption("--broker") == "apache":
            server: Broker = ApacheKafka(tmp_path / f"{name}.log", tmp_path / name)
        else:
            server = TansuBroker(tmp_path / f"{name}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def reference(
    settings: Settings, postgres: EmbeddedPostgres, new_broker: Callable[[str], Broker], tmp_path: Path
) -> Callable[[], contextlib.AbstractContextManager[Settings]]:
    """For a one-worker reference run: ``with reference() as settings`` gives settings
    with a broker (of the same kind), a database and a state directory of their own,
    all removed at the end of the block."""

    @contextlib.contextmanager
    def start() -> Iterator[Settings]:
        server = new_broker("reference-broker")
        try:
            _admin(postgres.url, "CREATE DATABASE reference")
            yield settings.with_(
                broker=server.url,
                database_url=postgres.url.rsplit("/", 1)[0] + "/reference",
                state_dir=tmp_path / "reference-state",
            )
        finally:
            server.stop()
            _admin(postgres.url, "DROP DATABASE reference WITH (FORCE)")

    return start


@pytest.fixture
def broker(new_broker: Callable[[str], Broker]) -> Broker:
    return new_broker("broker")


@pytest.fixture
def apache_only(request: pytest.FixtureRequest) -> None:
    """For what needs a broker that keeps its data across restarts (mark such a test
    ``apache`` too, or it never runs)."""
    if request.config.getoption("--broker") != "apache":
        pytest.skip("needs Apache Kafka (--broker=apache)")


@pytest.fixture
def settings(tmp_path: Path, broker: Broker, database_url: str) -> Settings:
    (tmp_path / "data").mkdir()
    return Settings(
        broker=broker.url,
        database_url=database_url,
        web_port=free_port(),
        state_dir=tmp_path / "state",
        data_dir=tmp_path / "data",
        partitions=4,
        replay_batch_events=500,
        snapshot_seconds=0.5,
        # The generated data spans months, and the sink prunes every 5 s: only the tests
        # of the retention keep less history than all of it.
        history_days=36_500.0,
    )


class Workers:
    """Starts workers for a test and stops every one of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(self, settings: Settings) -> WorkerProcess:
        log = (self.tmp_path / f"worker-{len(self.started)}.log").open("wb")
        worker = WorkerProcess(settings, output=log)
        self.started.append(worker)
        return worker.start()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker-*.log")))

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()
LOG_LINES_SHOWN = 150


@pytest.fixture
def workers(request: pytest.FixtureRequest, tmp_path: Path, settings: Settings) -> Iterator[Workers]:
    """Workers for the test; when it fails, the end of each worker's log is printed (the
    report shows it under "Captured stdout teardown"). It depends on ``settings`` so that
    its workers stop before the test's broker and database do."""
    w = Workers(tmp_path)
    yield w
    w.stop_all()
    if request.node.stash.get(FAILED, False):
        for path in sorted(tmp_path.glob("worker-*.log")):
            lines = path.read_text(errors="replace").splitlines()[-LOG_LINES_SHOWN:]
            print(f"----- last {len(lines)} lines of {path.name} -----", *lines, sep="\n")


@pytest.fixture
def worker(workers: Workers, settings: Settings) -> WorkerProcess:
    return workers.start(settings)


def write_events(path: Path, events: EventBatch) -> Path:
    with path.open("wb") as f:
        write_csv(events, f)
    return path


def replay(base: str, name: str, source_id: int = 1) -> dict:
    """POST /trigger, wait until the job is done and everything is reflected and stored
    in Postgres; the job's status."""
    code, answer = http_json("POST", f"{base}/trigger", {"source_id": source_id, "events_path": name})
    assert code == 202, answer
    job = wait_for_job(base, answer["job"], timeout=600)
    assert job["state"] == "done", job
    wait_until_reflected(base, source_id, timeout=600, stored=True)
    return job


def batch_definition(events: EventBatch, visitor: int, gap_ms: int) -> tuple[list, np.ndarray]:
    """Sessions and features of one visitor by the plain definition (ampelios.core.journeys's docstring)."""
    mine = events.take(events.visitorid == visitor)
    rows = sorted(
        set(zip(mine.timestamp.tolist(), mine.event.tolist(), mine.itemid.tolist(), mine.transactionid.tolist()))
    )
    ts = np.array([r[0] for r in rows], dtype=np.int64)
    ev = np.array([r[1] for r in rows], dtype=np.uint8)
    sessions = sessionize(ts, ev, gap_ms)
    return sessions, features_of(sessions)


def replay_with_cli(settings: Settings, path: Path) -> subprocess.Popen:
    """``ampelios replay`` in its own process: it goes on while workers crash."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")} | settings.to_env()
    command = [sys.executable, "-m", "ampelios", "replay", str(path), "--source-id", "1"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def settle(*bases: str) -> None:
    """Wait until the newest wall-clock snapshot (taken after the owner settled the model)
    is of the current model: nothing changed since (the owner settles after any update),
    as every worker of ``bases`` sees it (a worker's copy of the model may be a
    publication behind the owner's)."""
    for base in bases:
        deadline = time.monotonic() + 120
        while True:
            stats = wait_until_reflected(base, 1, timeout=300, stored=True)
            snapshots = http_json("GET", f"{base}/history?source_id=1&clock=wall")[1]["snapshots"]
            if snapshots and snapshots[-1]["model_version"] == stats["model_version"]:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the model did not settle on {base}")
            time.sleep(0.2)


def settled_periods(base: str, source_id: int = 1) -> dict:
    """/history (basis current) once it is of the model /stats reports: taken at a
    settling after the last update, so of the whole population (and that settling's
    alerts are stored too: its step's outputs are sent before lag is 0)."""
    deadline = time.monotonic() + 120
    while True:
        stats = wait_until_reflected(base, source_id, timeout=300, stored=True)
        code, history = http_json("GET", f"{base}/history?source_id={source_id}")
        if code == 200 and history["model_version"] == stats["model_version"]:
            return history
        assert time.monotonic() < deadline, f"source {source_id}'s periods were not settled"
        time.sleep(0.2)


def outcome(settings: Settings, base: str, sample: list[int]) -> dict:
    """Everything an uninterrupted run and a crashed one must agree on."""
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT visitorid, views, addtocarts, transactions, sessions, last_event_at, active "
            "FROM visitors WHERE source_id = 1 ORDER BY visitorid"
        )
        visitors = cur.fetchall()
    days = [
        (s["at"], [(x["id"], x["size"], x["visitors"]) for x in s["segments"]], s["activity"])
        for s in settled_periods(base)["snapshots"]
    ]
    alerts = sorted(  # not ids: they name the model's lineage, another in another deployment (and so
        # does the order of alerts detected on the same day, which follows their ids)
        (
            tuple(a[k] for k in ("signal", "segment", "direction", "started_at", "detected_at", "recovered_at"))
            for a in http_json("GET", f"{base}/alerts?source_id=1")[1]["alerts"]
        ),
        key=repr,
    )
    stats = http_json("GET", f"{base}/stats?source_id=1")[1]
    segments = http_json("GET", f"{base}/view?source_id=1")[1]
    answers = [http_json("GET", f"{base}/visitors/{v}?source_id=1") for v in sample]
    return {
        "days": days,
        "alerts": alerts,
        "stats": {k: stats[k] for k in ("events", "visitors", "rejected")},
        # ids and names too: the same events give the same segments whatever the path
        "segments": [(s["id"], s["label"], s["users"], tuple(s["centroid"])) for s in segments],
        "visitors": visitors,
        "journeys": [  # not transitions: they depend on when the model was asked
            {k: answer[k] for k in ("sessions", "features", "active", "segment", "label")} if code == 200 else code
            for code, answer in answers
        ],
    }


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium = require_tool("chromium", "Debian: apt-get install chromium chromium-driver")
    driver_path = require_tool("chromedriver", "Debian: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1900")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(driver_path, log_output=str(tmp_path / "driver.log")))
    try:
        yield driver
    finally:
        driver.quit()  # stops chromedriver and the browser it started


def held_partitions(worker: WorkerProcess) -> list[int] | None:
    """The events partitions a worker holds now (``None``: it is recovering)."""
    code, answer = http_json("GET", f"{worker.base_url}/stats?source_id=1&local=true")
    return answer["partitions"] if code == 200 else None


def wait_for_split(workers: list[WorkerProcess], partitions: int, timeout: float = 120) -> list[list[int]]:
    """Wait until every worker holds some partitions and together they hold each once."""
    deadline = time.monotonic() + timeout
    held: list[list[int] | None] = []
    while time.monotonic() < deadline:
        held = [held_partitions(w) for w in workers]
        if all(held) and sorted(p for h in held for p in h or []) == list(range(partitions)):
            return [h or [] for h in held]
        time.sleep(0.5)
    raise AssertionError(f"the partitions were not split between the workers: {held}")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The bench's TMPDIR. Not under pytest's temporary directory, which another pytest
    session may make untraversable for the embedded Postgres's own user."""
    with tempfile.TemporaryDirectory(prefix="ampelios-test-bench-") as root:
        yield Path(root)
