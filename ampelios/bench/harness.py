"""The bench's harness: options, the workload, rows, Kafka clients and fresh stacks every phase shares."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.structs import TopicPartition

from ampelios.config import Settings
from ampelios.core.events import EventBatch, encode_each_event, encode_events
from ampelios.core.generate import generate_events
from ampelios.core.partitioning import partitions_for, visitor_key
from ampelios.ingest.replay import new_producer, plan_messages
from ampelios.services.broker import (
    TansuBroker,
    TopicSpec,
    ensure_topics,
    plain_consumer,
)
from ampelios.services.processes import free_port, stop_process
from ampelios.services.stack import (
    Stack,
    http_json,
    wait_until_reflected,
)
from ampelios.topology import Topology

DEFAULT_EVENTS = 2_756_101  # the Retailrocket data set's size (about 1.4M visitors)


PHASES = ("limit", "ceiling", "replay", "takeover", "single", "steady", "collector", "webhooks", "soak", "year")


DEFAULT_PHASES = PHASES[:-2]  # the soak runs for an hour, the year on Apache Kafka for long: only when asked for


SOURCE_ID = 1


DATA_FILE = "events.csv"


STATS_POLL_SECONDS = 0.5  # /stats costs the worker a few broker requests: not too often


Message = tuple[int, bytes | None, bytes]  # partition, key, value


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: the command's options."""

    events: int = DEFAULT_EVENTS
    single_events: int = 200_000
    rate: float = 5000.0
    steady_seconds: float = 30.0
    soak_seconds: float = 3600.0
    months: int = 12
    month_events: int = 37_000
    year_runs: tuple[str, ...] = ()  # the year phase's runs (none named: all)
    seed: int = 0
    phases: tuple[str, ...] = DEFAULT_PHASES
    timeout: float = 900.0  # a measurement waits this long for its messages to be consumed or reflected
    probe_timeout: float = 120.0  # after producing, the steady phase waits this long for its probes
    receiver_down_seconds: float = 0.0  # the webhooks phase's receiver answers 503 this long from the start
    json_path: Path | None = None
    profile_dir: Path | None = None  # py-spy profiles of the worker in each Ampelios phase


def distinct_events(events: EventBatch) -> int:
    """Distinct (source, visitor, timestamp, event, item, transaction) rows: the events
    ``/stats`` counts once each."""
    if len(events) == 0:
        return 0
    columns = np.stack(
        [events.source_id, events.visitorid, events.timestamp, events.event, events.itemid, events.transactionid]
    ).astype(np.int64)
    rows = columns[:, np.lexsort(columns)]
    return 1 + int(np.count_nonzero((rows[:, 1:] != rows[:, :-1]).any(axis=0)))


def one_event_messages(events: EventBatch, partitions: int) -> list[Message]:
    """One message per event in the single-event JSON form (see :mod:`ampelios.core.events`),
    keyed ``source:visitor`` and on the partition Kafka's default partitioner gives that key."""
    partition = partitions_for(events.source_id, events.visitorid, partitions).tolist()
    keys = [visitor_key(s, v) for s, v in zip(events.source_id.tolist(), events.visitorid.tolist())]
    return list(zip(partition, keys, encode_each_event(events)))


@dataclass(frozen=True)
class Workload:
    """The generated events and the messages every phase sends."""

    events: EventBatch
    visitors: int
    distinct: int  # distinct events among ``events``
    batched: list[Message]  # the replay's messages, all events
    singles: list[Message]  # one message per event: the first ``len(singles)`` events, in time order
    singles_distinct: int

    @classmethod
    def generate(cls, n_events: int, n_singles: int, seed: int, partitions: int, batch_events: int) -> Workload:
        events = generate_events(n_events, seed=seed, source_id=SOURCE_ID)
        plan = plan_messages(events, partitions, batch_events, True)
        first = events.take(slice(0, n_singles))
        first = first.take(first.time_order())  # as a site sends them (and as the replay does)
        return cls(
            events=events,
            visitors=len(np.unique(events.visitorid)),
            distinct=distinct_events(events),
            batched=[(partition, None, encode_events(chunk)) for partition, chunk in plan],
            singles=one_event_messages(first, partitions),
            singles_distinct=distinct_events(first),
        )


@dataclass
class Row:
    """One line of the table: what was timed (``seconds``) and the figures behind it.
    ``error`` says why a measurement did not finish; its figures are what it reached."""

    id: str
    phase: str
    messages: int
    events: int
    seconds: float | None
    notes: str = ""
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float | None:
        return self.events / self.seconds if self.seconds else None

    @property
    def messages_per_s(self) -> float | None:
        return self.messages / self.seconds if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "messages": self.messages,
            "events": self.events,
            "seconds": self.seconds,
            "events_per_s": self.events_per_s,
            "messages_per_s": self.messages_per_s,
            "notes": self.notes,
            "error": self.error,
            **self.figures,
        }


@dataclass
class Bench:
    """One run: settings, options, the workload and the temporary directory of it all."""

    settings: Settings
    options: BenchOptions
    workload: Workload
    root: Path

    @property
    def topic(self) -> str:
        return Topology.of(self.settings).events

    def profile(self, phase: str) -> Path | None:
        """Where the worker's profile of an Ampelios phase goes (``None``: not profiled)."""
        directory = self.options.profile_dir
        return directory / f"{phase}.speedscope.json" if directory is not None else None

    def workdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path


async def produce(url: str, topic: str, partitions: int, messages: Sequence[Message]) -> float:
    """Create ``topic`` if missing, send every message and wait for every acknowledgement;
    the seconds it took."""
    await ensure_topics(url, [TopicSpec(topic, partitions)])
    producer = new_producer(url)
    await producer.start()
    try:
        started = time.monotonic()
        acks = [await producer.send(topic, value, key=key, partition=p) for p, key, value in messages]
        await asyncio.gather(*acks)
        return time.monotonic() - started
    finally:
        await producer.stop()


async def consume(url: str, topic: str, partitions: int, expected: int, timeout: float) -> tuple[int, float, float]:
    """Read ``topic`` from the beginning with a plain consumer (no group, no decoding)
    until ``expected`` records are read or ``timeout`` passes; (records read, seconds from
    the first fetch request to the last record, seconds from the first record to the last:
    the span the bare Faust agent measures of itself)."""
    consumer = plain_consumer(url)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.monotonic()
        first = last = started
        read = 0
        while read < expected and time.monotonic() - started < timeout:
            fetched = sum(map(len, (await consumer.getmany(timeout_ms=200)).values()))
            if fetched:
                last = time.monotonic()
                first = last if not read else first
                read += fetched
        return read, last - started, last - first
    finally:
        await consumer.stop()


@contextlib.contextmanager
def fresh_broker(workdir: Path) -> Iterator[str]:
    """A new embedded broker logging to ``workdir``; its URL. Stopped at exit."""
    broker = TansuBroker(workdir / "broker.log")
    try:
        yield broker.start().url
    finally:
        broker.stop()


def stack_settings(bench: Bench, workdir: Path) -> Settings:
    """The bench's settings for a stack of its own under ``workdir`` (a Tansu broker and an
    embedded Postgres, a free web port); the data directory exists."""
    settings = bench.settings.with_(
        broker=None,
        local_broker="tansu",
        database_url=None,
        web_port=free_port(),
        state_dir=workdir / "state",
        data_dir=workdir / "data",
    )
    settings.data_dir.mkdir(parents=True)
    return settings


@contextlib.contextmanager
def fresh_stack(settings: Settings, workdir: Path, profile: Path | None = None) -> Iterator[Stack]:
    """Broker, Postgres and worker started with ``settings`` (the worker logging to
    ``workdir``); all stopped at exit, each by its own PID. With ``profile``, py-spy
    samples the worker meanwhile and writes a speedscope profile there."""
    with (workdir / "worker.log").open("ab") as log, Stack(settings, worker_output=log) as stack:
        assert stack.worker is not None and stack.worker.process is not None
        with profiled(stack.worker.process.pid, profile) if profile is not None else contextlib.nullcontext():
            yield stack


@contextlib.contextmanager
def profiled(pid: int, out: Path) -> Iterator[None]:
    """py-spy records process ``pid`` (100 samples/s, without stopping it) into ``out``
    (speedscope JSON: open it at https://www.speedscope.app or with ``py-spy``'s viewer)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--nonblocking"]
    command += ["--rate", "100", "--format", "speedscope", "--output", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes the profile when interrupted
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(spy, signal.SIGKILL, 0)


def base_url(stack: Stack) -> str:
    assert stack.worker is not None
    return stack.worker.base_url


def wait_for_events(base: str, expected: int, timeout: float) -> tuple[dict[str, Any], bool]:
    """Poll ``/stats`` until it counts ``expected`` events of the source or ``timeout``
    passes; (the last stats answered, whether they were reached)."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {"events": 0}
    while True:
        code, answer = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
        if code == 200:
            stats = dict(answer)
            if stats["events"] >= expected:
                return stats, True
        if time.monotonic() > deadline:
            return stats, False
        time.sleep(STATS_POLL_SECONDS)


@dataclass
class Reflection:
    """What ``/stats`` showed of a phase's events: the last answer, the seconds from the
    phase's start until it counted every expected event (in journeys), and until, besides,
    nothing published was left to reflect (lag 0: the segments too, as ``ampelios demo``
    waits for); ``None`` where the timeout came first."""

    stats: dict[str, Any]
    counted: float | None
    reflected: float | None

    def problem(self, expected: int, elapsed: float) -> str | None:
        """Why the events are not all reflected, or ``None``."""
        if self.counted is None:
            return f"{self.stats['events']} of {expected} events counted after {elapsed:.0f}s"
        if self.reflected is None:
            lag = self.stats.get("lag")
            return f"all {expected} events counted after {self.counted:.1f}s, but lag {lag} after {elapsed:.0f}s"
        return None


def wait_for_reflection(base: str, expected: int, started: float, timeout: float) -> Reflection:
    """Poll ``/stats`` until ``expected`` events are counted and reflected (see
    :class:`Reflection`) or ``timeout`` seconds after ``started`` (``time.monotonic()``)."""
    deadline = started + timeout
    stats, counted = wait_for_events(base, expected, deadline - time.monotonic())
    if not counted:
        return Reflection(stats, None, None)
    counted_at = time.monotonic() - started
    try:
        stats = wait_until_reflected(base, SOURCE_ID, timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        code, answer = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
        return Reflection(answer if code == 200 else stats, counted_at, None)
    return Reflection(stats, counted_at, time.monotonic() - started)


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def worker_figures(stack: Stack) -> dict[str, Any]:
    """The worker's peak resident memory and the bytes of its RocksDB tables, now."""
    assert stack.worker is not None
    return {
        "peak_rss_mib": stack.worker.peak_memory_mb(),
        "rocksdb_bytes": tree_bytes(stack.settings.worker_dir),
    }


SHAPES = {"batched": "replay msgs", "single": "1 event/msg"}


def shapes(bench: Bench) -> list[tuple[str, list[Message], int]]:
    """(shape, messages, events) of both message shapes."""
    w = bench.workload
    return [("batched", w.batched, len(w.events)), ("single", w.singles, len(w.singles))]


def after_sending(stack: Stack, timeout: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """After sending: wait up to ``timeout`` for what was sent to be reflected; the
    worker's ``/stats`` then (``None`` if it did not answer) and its figures."""
    base = base_url(stack)
    with contextlib.suppress(TimeoutError):  # what was sent, reflected (or what was, at the timeout)
        wait_until_reflected(base, SOURCE_ID, timeout=timeout)
    code, stats = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
    return (stats if code == 200 else None), worker_figures(stack)


def percentiles(seconds: list[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p99 and max of ``seconds``, in milliseconds (``None`` for none)."""
    if not seconds:
        return None, None, None
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max())
