"""``ampelios bench``: the throughput of each layer and the steady-state latency, side by side.

One run on one machine measures N generated events (``generate_events(N, seed)``); every
measurement gets a freshly started embedded broker (and, for Ampelios, its own embedded
Postgres and worker) in a temporary directory that is removed afterwards, so that no
measurement disturbs another. A configured ``AMPELIOS_BROKER`` or
``AMPELIOS_DATABASE_URL`` is not used: the bench measures the embedded stack.

=================  ====================================================================
row                what is timed
=================  ====================================================================
limit              a plain aiokafka consumer reading every message from the beginning
                   (first fetch -> last record): the replay's messages (``plan_messages``
                   + ``encode_events``, what ``ampelios replay`` sends) and, for the
                   first M events, one event per message (the single-event JSON form),
                   in event-time order as a site sends them
ceiling            a bare Faust agent that only counts the same messages
                   (:mod:`ampelios.services.bare_faust`): its first -> last message
replay             the real stack: ``POST /trigger`` of the CSV -> ``/stats`` counts every
                   distinct event and lag 0 (the segments have them too, as ``ampelios
                   demo`` waits for); the worker's peak RSS and RocksDB bytes at the end
takeover           the real stack after the same replay: its worker SIGKILLed and a new one
                   started on the same state directory: start -> ``/health`` ok, and ->
                   ``/stats`` counts every event again with lag 0 (the row's time); the
                   changelog records the new worker read back
single             the real stack: the M one-event messages produced to ``events``
                   (keyed and partitioned as any producer would) -> ``/stats`` counts
                   them all and lag 0; as a percentage of the bare-Faust
                   one-event-per-message ceiling
steady             the real stack: one event per message (in event-time order) at R
                   events/s for S seconds, among them probe events of new visitors whose
                   ``/visitors/{id}`` is polled until it answers 200: latency = that
                   answer - produce time (and - the broker's ack, without the
                   bench's own producer)
collector          the real stack fed as a site's tracker feeds it: the steady phase's
                   events (and probes) as Segment ``track`` calls, ``POST /v1/batch``
                   every COLLECTOR_TICK_SECONDS at R events/s for S seconds; latency =
                   ``/visitors/{id}`` 200 - the call's send (and - the collector's 200,
                   which comes once the broker has the events); at the end every
                   distinct event is in ``/stats`` (nothing lost)
webhooks           the real stack at R events/s, one event per message, with a webhook
                   subscription to every segment (a receiver in this process): after a
                   warm-up (a model, each probe's first view), probes buy; latency = the
                   receiver's arrival of the probe's move - the purchase's produce time;
                   every change ``segment-changes`` holds since the subscription must
                   arrive (nothing lost). ``--receiver-down-seconds`` takes the receiver
                   down from the start of sending, and says how soon after it is back
                   everything arrived
soak               (only with ``--phases soak``) the local stack as ``ampelios up`` runs it
                   (``AMPELIOS_LOCAL_BROKER``: Apache Kafka by default) under one event per
                   message at R events/s for ``--soak-seconds`` (an hour by default),
                   new visitors all along: the memory (PSS) of its broker, Postgres (with
                   its backends) and worker at the start and every minute
=================  ====================================================================

Nothing here judges a timing. A measurement that does not finish within its timeout is
reported with what it reached, and the other phases still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import click
import numpy as np
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from ampelios.config import Settings, load_settings
from ampelios.core.collect import visitor_id
from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch, encode_each_event, encode_events, write_csv
from ampelios.core.generate import generate_events
from ampelios.core.partitioning import partition_for, partitions_for, visitor_key
from ampelios.core.webhooks import Subscription, membership_changes
from ampelios.ingest.replay import new_producer, plan_messages
from ampelios.services.broker import (
    TansuBroker,
    TopicSpec,
    bootstrap_servers,
    end_offsets,
    ensure_topics,
    plain_consumer,
    read_range,
)
from ampelios.services.processes import die_with_parent, free_port, stop_process
from ampelios.services.stack import (
    Stack,
    StopRequested,
    WorkerProcess,
    changelog_records_recovered,
    http_json,
    stop_on_signals,
    wait_for_job,
    wait_until_reflected,
)
from ampelios.services.webhook_receiver import WebhookReceiver
from ampelios.topology import Topology

DEFAULT_EVENTS = 2_756_101  # the Retailrocket data set's size (about 1.4M visitors)
PHASES = ("limit", "ceiling", "replay", "takeover", "single", "steady", "collector", "webhooks", "soak")
DEFAULT_PHASES = PHASES[:-1]  # the soak runs for an hour by default: only when asked for
SOAK_SAMPLE_SECONDS = 60.0
SOURCE_ID = 1
DATA_FILE = "events.csv"
STATS_POLL_SECONDS = 0.5  # /stats costs the worker a few broker requests: not too often
PROBE_EVERY_SECONDS = 0.025
MAX_PROBES = 1000
PROBE_POLL_SECONDS = 0.05  # the oldest pending probe of each partition is asked this often
PRODUCER_TICK_SECONDS = 0.002
COLLECTOR_TICK_SECONDS = 0.02  # a tracker's batch every 20 ms: 100 calls a request at 5,000 events/s
COLLECTOR_IN_FLIGHT = 8  # requests under way at once at most (a tracker's sending threads)
WRITE_KEY = "bench"
WEBHOOK_WARM_SECONDS = 10.0  # of the rate's events sent before subscribing: a model, the probes' views

Message = tuple[int, bytes | None, bytes]  # partition, key, value


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: the command's options."""

    events: int = DEFAULT_EVENTS
    single_events: int = 200_000
    rate: float = 5000.0
    steady_seconds: float = 30.0
    soak_seconds: float = 3600.0
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


# ------------------------------------------------------------------ Kafka clients


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


# ------------------------------------------------------------------ processes


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


# ------------------------------------------------------------------ phases

SHAPES = {"batched": "replay msgs", "single": "1 event/msg"}


def shapes(bench: Bench) -> list[tuple[str, list[Message], int]]:
    """(shape, messages, events) of both message shapes."""
    w = bench.workload
    return [("batched", w.batched, len(w.events)), ("single", w.singles, len(w.singles))]


def phase_limit(bench: Bench) -> list[Row]:
    """A plain aiokafka consumer: what the broker and the client library can deliver."""
    rows = []
    for shape, messages, n_events in shapes(bench):
        with fresh_broker(bench.workdir(f"limit-{shape}")) as url:
            partitions = bench.settings.partitions
            produced = asyncio.run(produce(url, bench.topic, partitions, messages))
            read, seconds, first_to_last = asyncio.run(
                consume(url, bench.topic, partitions, len(messages), bench.options.timeout)
            )
        error = (
            None
            if read >= len(messages)
            else f"read {read} of {len(messages)} messages within {bench.options.timeout:.0f}s"
        )
        rows.append(
            Row(
                f"limit.{shape}",
                f"limit: aiokafka, {SHAPES[shape]}",
                len(messages),
                n_events,
                seconds,
                notes=f"first fetch -> last record ({first_to_last:.2f}s from the first); produced in {produced:.1f}s",
                error=error,
                figures={"read": read, "first_to_last_seconds": first_to_last, "produce_seconds": produced},
            )
        )
    return rows


def phase_ceiling(bench: Bench) -> list[Row]:
    """A bare Faust agent that only counts: what the framework can deliver."""
    rows = []
    for shape, messages, n_events in shapes(bench):
        workdir = bench.workdir(f"ceiling-{shape}")
        with fresh_broker(workdir) as url:
            partitions = bench.settings.partitions
            produced = asyncio.run(produce(url, bench.topic, partitions, messages))
            report = run_bare_faust(url, bench.topic, partitions, len(messages), workdir, bench.options.timeout)
        label = f"ceiling: bare Faust, {SHAPES[shape]}"
        if "error" in report:
            rows.append(Row(f"ceiling.{shape}", label, len(messages), n_events, None, error=report["error"]))
            continue
        seconds = report["last"] - report["first"]
        wall = report["last"] - report["started"]
        rows.append(
            Row(
                f"ceiling.{shape}",
                label,
                len(messages),
                n_events,
                seconds,
                notes=f"first -> last message; {wall:.1f}s from process start",
                figures={"counted": report["count"], "wall_seconds": wall, "produce_seconds": produced},
            )
        )
    return rows


def run_bare_faust(
    url: str, topic: str, partitions: int, expected: int, workdir: Path, timeout: float
) -> dict[str, Any]:
    """Run :mod:`ampelios.services.bare_faust` until it reports ``expected`` messages
    counted (or ``timeout`` passes, or it dies); its report plus ``started`` (wall clock
    at its start), or ``{"error": ...}``. The process is stopped by its PID."""
    report = workdir / "report.json"
    log_path = workdir / "bare-faust.log"
    command = [
        *(sys.executable, "-m", "ampelios.services.bare_faust", "--broker", url, "--topic", topic),
        *("--partitions", str(partitions), "--datadir", str(workdir / "faust")),
        *("--expected", str(expected), "--report", str(report)),
    ]
    with log_path.open("ab") as log:
        started = time.time()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        try:
            while not report.exists():
                if process.poll() is not None:
                    return {"error": f"bare Faust exited with code {process.returncode}; see {log_path}"}
                if time.time() - started > timeout:
                    return {"error": f"bare Faust did not count {expected} messages within {timeout:.0f}s"}
                time.sleep(0.1)
        finally:
            stop_process(process, signal.SIGTERM, 30.0)
    return {**json.loads(report.read_bytes()), "started": started}


def replay_file(bench: Bench, stack: Stack) -> tuple[Reflection, dict[str, Any], float]:
    """``POST /trigger`` of the bench's CSV to the stack's worker; wait until ``/stats``
    counts every distinct event with lag 0: (what was seen, the job, seconds)."""
    base = base_url(stack)
    started = time.monotonic()
    code, answer = http_json("POST", f"{base}/trigger", {"source_id": SOURCE_ID, "events_path": DATA_FILE})
    if code != 202:
        raise RuntimeError(f"/trigger answered {code}: {answer}")
    seen = wait_for_reflection(base, bench.workload.distinct, started, bench.options.timeout)
    seconds = seen.reflected or time.monotonic() - started
    job = wait_for_job(base, answer["job"], bench.options.timeout) if seen.reflected is not None else {}
    return seen, job, seconds


def replay_stack(bench: Bench, phase: str) -> contextlib.AbstractContextManager[Stack]:
    """A fresh stack for ``phase`` with the bench's events written as its CSV."""
    workdir = bench.workdir(phase)
    settings = stack_settings(bench, workdir)
    with (settings.data_dir / DATA_FILE).open("wb") as f:
        write_csv(bench.workload.events, f)
    return fresh_stack(settings, workdir, bench.profile(phase))


def phase_replay(bench: Bench) -> list[Row]:
    """Ampelios end to end: the CSV through ``POST /trigger`` until ``/stats`` counts every
    distinct event and has nothing left to reflect (lag 0)."""
    w = bench.workload
    with replay_stack(bench, "replay") as stack:
        seen, job, seconds = replay_file(bench, stack)
        figures = {
            "reflected_events": seen.stats["events"],
            "expected_events": w.distinct,
            "counted_seconds": seen.counted,
            "visitors": seen.stats.get("visitors"),
            "job_state": job.get("state"),
            "rows_rejected": job.get("rows_rejected"),
            **worker_figures(stack),
            "stats_at_end": seen.stats,
        }
    rss, rocksdb = figures["peak_rss_mib"] or 0, figures["rocksdb_bytes"]
    notes = (
        f"trigger -> /stats lag 0 (all counted at {_number(seen.counted, 2)}s); "
        f"peak RSS {rss:.0f} MiB; RocksDB {rocksdb / 2**20:.1f} MiB"
    )
    row = Row(
        "replay", "Ampelios: replay end to end", len(w.batched), seen.stats["events"], seconds, notes, figures=figures
    )
    row.error = seen.problem(w.distinct, seconds)
    if row.error is None and job["state"] != "done":
        row.error = f"the replay job is {job['state']}: {job.get('error')}"
    return [row]


def phase_takeover(bench: Bench) -> list[Row]:
    """After the replay, the worker is SIGKILLed and a new one started on its state
    directory: the seconds from that start until ``/health`` answers ok, and until
    ``/stats`` counts every event again with lag 0 (the row's time)."""
    w = bench.workload
    with replay_stack(bench, "takeover") as stack:
        replayed, _, _ = replay_file(bench, stack)
        if replayed.reflected is None:
            row = Row("takeover", "Ampelios: takeover after SIGKILL", 0, 0, None)
            row.error = f"the replay before the kill: {replayed.problem(w.distinct, bench.options.timeout)}"
            return [row]
        assert stack.worker is not None
        stack.worker.kill()
        started = time.monotonic()
        stack.worker = WorkerProcess(stack.settings, stack.worker_output).start(bench.options.timeout)
        healthy = time.monotonic() - started
        seen = wait_for_reflection(stack.worker.base_url, w.distinct, started, bench.options.timeout)
        seconds = seen.reflected or time.monotonic() - started
        recovered = changelog_records_recovered(stack.worker.base_url)
    figures = {
        "healthy_seconds": healthy,
        "reflected_events": seen.stats["events"],
        "changelog_records_recovered": recovered,
        "stats_at_end": seen.stats,
    }
    read_back = ", ".join(f"{table} {n:.0f}" for table, n in sorted(recovered.items()))
    notes = (
        f"SIGKILL after the replay, new worker: start -> /health ok {healthy:.2f}s -> every event "
        f"counted, lag 0; changelog records read back: {read_back}"
    )
    row = Row("takeover", "Ampelios: takeover after SIGKILL", 0, 0, seconds, notes, figures=figures)
    row.error = seen.problem(w.distinct, seconds)
    return [row]


def phase_single(bench: Bench) -> list[Row]:
    """Ampelios, one event per message: produced straight to the events topic of a
    running worker until ``/stats`` counts them all and has nothing left to reflect."""
    w = bench.workload
    workdir = bench.workdir("single")
    with fresh_stack(stack_settings(bench, workdir), workdir, bench.profile("single")) as stack:
        base = base_url(stack)
        started = time.monotonic()
        produced = asyncio.run(produce(stack.settings.broker_url, bench.topic, bench.settings.partitions, w.singles))
        seen = wait_for_reflection(base, w.singles_distinct, started, bench.options.timeout)
        seconds = seen.reflected or time.monotonic() - started
        figures = {
            "reflected_events": seen.stats["events"],
            "expected_events": w.singles_distinct,
            "counted_seconds": seen.counted,
            "produce_seconds": produced,
            **worker_figures(stack),
            "stats_at_end": seen.stats,
        }
    notes = f"produce -> /stats lag 0 (all counted at {_number(seen.counted, 1)}s); produced in {produced:.1f}s"
    row = Row("single", "Ampelios: 1 event/msg", len(w.singles), seen.stats["events"], seconds, notes, figures=figures)
    row.error = seen.problem(w.singles_distinct, seconds)
    return [row]


@dataclass
class Schedule:
    """The steady phase's messages, one event each, in the order they are sent; every
    message ``i`` in ``probes`` is the only event of visitor ``probes[i]``."""

    messages: list[Message]
    events: EventBatch
    probes: dict[int, int]

    @classmethod
    def of(cls, workload: Workload, partitions: int, rate: float, seconds: float) -> Schedule:
        """``rate * seconds`` messages: the first generated events (wrapping around) in
        time order, with about one in every ``PROBE_EVERY_SECONDS`` (at most
        ``MAX_PROBES``, spread evenly) replaced by a view, at the same time, of a new
        visitor: an id above every generated one."""
        events = workload.events
        total = max(1, round(rate * seconds))
        n_probes = min(MAX_PROBES, max(1, round(seconds / PROBE_EVERY_SECONDS)), total)
        at = (np.arange(n_probes) * total) // n_probes + total // (2 * n_probes)
        chosen = events.take(np.arange(total) % len(events))
        chosen = chosen.take(chosen.time_order())
        visitors = int(events.visitorid.max()) + 1 + np.arange(n_probes)
        columns = {c: getattr(chosen, c).copy() for c in ("visitorid", "event", "itemid", "transactionid")}
        for column, value in (("visitorid", visitors), ("event", VIEW), ("itemid", 0), ("transactionid", -1)):
            columns[column][at] = value
        scheduled = EventBatch(source_id=chosen.source_id, timestamp=chosen.timestamp, **columns)
        return cls(
            messages=one_event_messages(scheduled, partitions),
            events=scheduled,
            probes=dict(zip(at.tolist(), visitors.tolist())),
        )


class ProbeWatch:
    """Polls ``/visitors/{id}`` of the probes not yet visible and records each one's
    latency: the time of its first 200 answer minus its produce time (when the producer
    was handed it), and minus its ack time (when the broker had it), which leaves out the
    bench's own producer.

    A partition's messages are applied in order, so only the oldest pending probe of each
    partition is asked, every ``PROBE_POLL_SECONDS`` (and the next one at once when it
    answers): each latency is known to within that interval, and the worker answers at
    most one request per partition and interval, however far behind it is (asking every
    pending probe would load the worker being measured, more so the further it falls
    behind)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.pending: dict[int, deque[tuple[int, float]]] = {}  # partition -> (visitor, produced at), oldest first
        self.acked_at: dict[int, float] = {}  # visitor -> when the broker acknowledged it
        self.latencies: list[float] = []  # produced -> visible, seconds
        self.after_ack: list[float] = []  # acknowledged -> visible, seconds
        self.probes = 0
        self.polls = 0

    @property
    def not_visible(self) -> int:
        return sum(map(len, self.pending.values()))

    def add(self, partition: int, visitor: int, produced_at: float) -> None:
        self.pending.setdefault(partition, deque()).append((visitor, produced_at))
        self.probes += 1

    def acked(self, visitor: int, at: float) -> None:
        self.acked_at[visitor] = at

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll until cancelled."""
        while True:
            tick = time.monotonic()
            await asyncio.gather(*(self._advance(session, queue) for queue in self.pending.values() if queue))
            await asyncio.sleep(max(0.0, PROBE_POLL_SECONDS - (time.monotonic() - tick)))

    async def _advance(self, session: aiohttp.ClientSession, queue: deque[tuple[int, float]]) -> None:
        """Ask for the oldest probe of a partition, and the next ones while they answer."""
        while queue:
            visitor, produced_at = queue[0]
            visible_at = await self._visible_at(session, visitor)
            self.polls += 1
            if visible_at is None:
                return
            queue.popleft()
            self.latencies.append(visible_at - produced_at)
            self.after_ack.append(visible_at - self.acked_at.get(visitor, produced_at))

    async def _visible_at(self, session: aiohttp.ClientSession, visitor: int) -> float | None:
        """When ``/visitors/{visitor}`` answered 200, or ``None`` (any other answer or error)."""
        try:
            async with session.get(f"{self.base}/visitors/{visitor}", params={"source_id": SOURCE_ID}) as response:
                await response.read()
                return time.monotonic() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def settle(self, timeout: float) -> None:
        """Wait until every probe is visible or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.not_visible and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def watching(self, session: aiohttp.ClientSession, timeout: float) -> AsyncIterator[None]:
        """Poll while the block sends; after it, wait up to ``timeout`` for the probes
        still pending (:meth:`settle`)."""
        poller = asyncio.create_task(self.run(session))
        try:
            yield
            await self.settle(timeout)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller


@dataclass
class SteadyRun:
    """What the steady phase's producer did, and its probes."""

    sent: int  # messages sent (ordinary and probes), one event each
    seconds: float  # from the start of producing to the last send
    watch: ProbeWatch


async def send_at_rate(
    url: str,
    topic: str,
    messages: Sequence[Message],
    rate: float,
    seconds: float,
    on_send: Callable[[int, int, asyncio.Future[Any]], None] = lambda i, partition, ack: None,
) -> tuple[int, float]:
    """Produce ``messages`` in order at ``rate`` messages/s, stopping after ``seconds``
    whatever was sent; ``on_send(i, partition, ack)`` as message ``i`` is handed to the
    producer. Returns the messages sent and the seconds from the start to the last."""
    producer = new_producer(url)
    await producer.start()
    try:
        acks: list[asyncio.Future[Any]] = []
        sent, started, last = 0, time.monotonic(), 0.0
        while sent < len(messages):
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            for i in range(sent, min(len(messages), int(elapsed * rate) + 1)):
                partition, key, value = messages[i]
                ack = await producer.send(topic, value, key=key, partition=partition)
                on_send(i, partition, ack)
                acks.append(ack)
                sent, last = i + 1, time.monotonic() - started
            # keep only what is outstanding: gathering every ack at the end would block
            # this loop (and the probes' poller) for a second at 150,000 messages
            acks = [a for a in acks if not a.done() or a.exception() is not None]
            await asyncio.sleep(PRODUCER_TICK_SECONDS)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return sent, last


async def run_steady(url: str, topic: str, base: str, schedule: Schedule, options: BenchOptions) -> SteadyRun:
    """Send ``schedule`` at ``options.rate`` messages/s, stopping after
    ``options.steady_seconds`` whatever was sent, while probes are watched; then wait up
    to ``options.probe_timeout`` for the probes still pending."""
    watch = ProbeWatch(base)

    def on_send(i: int, partition: int, ack: asyncio.Future[Any]) -> None:
        if i in schedule.probes:
            visitor = schedule.probes[i]
            watch.add(partition, visitor, time.monotonic())
            ack.add_done_callback(lambda _: watch.acked(visitor, time.monotonic()))

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        watch.watching(session, options.probe_timeout),
    ):
        sent, last = await send_at_rate(url, topic, schedule.messages, options.rate, options.steady_seconds, on_send)
    return SteadyRun(sent, last, watch)


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


def phase_steady(bench: Bench) -> list[Row]:
    """Ampelios at a fixed rate, one event per message, with probes for the latency from
    produce to ``/visitors`` answering."""
    options = bench.options
    schedule = Schedule.of(bench.workload, bench.settings.partitions, options.rate, options.steady_seconds)
    workdir = bench.workdir("steady")
    with fresh_stack(stack_settings(bench, workdir), workdir, bench.profile("steady")) as stack:
        base = base_url(stack)
        run = asyncio.run(run_steady(stack.settings.broker_url, bench.topic, base, schedule, options))
        stats, figures = after_sending(stack, options.timeout)
    watch = run.watch
    p50, p99, top = percentiles(watch.latencies)
    ack_p50, ack_p99, ack_top = percentiles(watch.after_ack)
    failures = watch.not_visible
    distinct = distinct_events(schedule.events.take(slice(0, run.sent)))
    figures.update(
        target_rate=options.rate,
        achieved_rate=run.sent / run.seconds if run.seconds else None,
        probes=watch.probes,
        probes_visible=len(watch.latencies),
        probes_not_visible=failures,
        latency_ms={"p50": p50, "p99": p99, "max": top},
        after_ack_latency_ms={"p50": ack_p50, "p99": ack_p99, "max": ack_top},
        polls=watch.polls,
        sent_distinct_events=distinct,
        stats_at_end=stats,
    )
    latency = "-" if p50 is None or p99 is None else f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {top:,.0f} ms"
    if ack_p50 is not None and ack_p99 is not None:
        latency += f" (from the broker's ack: p50 {ack_p50:,.0f} ms, p99 {ack_p99:,.0f} ms)"
    counted = f"{stats['events']:,}" if stats is not None else "?"
    row = Row(
        "steady",
        f"Ampelios: steady {options.rate:g} ev/s, 1 event/msg",
        run.sent,
        run.sent,
        run.seconds,
        notes=f"events/s as sent; {counted} of {distinct:,} reflected at the end; "
        f"{watch.probes} probes produce -> /visitors 200: {latency}",
        figures=figures,
    )
    if failures:
        row.error = f"{failures} of {watch.probes} probes not visible {options.probe_timeout:.0f}s after producing"
    return [row]


SEGMENT_NAMES = {VIEW: "Product Viewed", ADDTOCART: "Product Added", TRANSACTION: "Order Completed"}


def segment_calls(events: EventBatch) -> list[dict[str, Any]]:
    """Events as the Segment ``track`` calls a site's tracker sends for them (visitor ``v``
    is user ``"v"``; one product per order), which the collector turns back into them."""
    calls = []
    for i, (at, visitor, code, item, order) in enumerate(
        zip(
            *(
                c.tolist()
                for c in (events.timestamp, events.visitorid, events.event, events.itemid, events.transactionid)
            )
        )
    ):
        product = {"product_id": str(item)} if item >= 0 else {}
        properties = product if code != TRANSACTION else {"products": [product]}
        if code == TRANSACTION and order >= 0:
            properties["order_id"] = str(order)
        moment = datetime.fromtimestamp(at / 1000, tz=UTC).isoformat(timespec="milliseconds")
        calls.append(
            {
                "type": "track",
                "userId": str(visitor),
                "event": SEGMENT_NAMES[code],
                "timestamp": moment,
                "messageId": f"bench-{i}",
                "properties": properties,
            }
        )
    return calls


async def run_collector(base: str, schedule: Schedule, partitions: int, options: BenchOptions) -> SteadyRun:
    """Send ``schedule`` as Segment batches to ``base`` at ``options.rate`` events/s for
    ``options.steady_seconds``, while the probes are watched; then wait for them."""
    calls = segment_calls(schedule.events)
    watch = ProbeWatch(base)
    gate = asyncio.Semaphore(COLLECTOR_IN_FLIGHT)
    failures: list[str] = []

    async def post(session: aiohttp.ClientSession, batch: list[dict[str, Any]], probes: list[int]) -> None:
        async with gate:
            try:
                async with session.post(f"{base}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY}) as answer:
                    body = await answer.json()
                    if answer.status != 200 or body["rejected"]:
                        failures.append(f"{answer.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(repr(exc))
                return
        for visitor in probes:
            watch.acked(visitor, time.monotonic())

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        watch.watching(session, options.probe_timeout),
    ):
        requests: list[asyncio.Task[None]] = []
        sent, started, last = 0, time.monotonic(), 0.0
        while sent < len(calls):
            elapsed = time.monotonic() - started
            if elapsed >= options.steady_seconds:
                break
            upto = min(len(calls), int(elapsed * options.rate) + 1)
            probes = []
            for i in range(sent, upto):
                if i in schedule.probes:
                    visitor = visitor_id("user", str(schedule.probes[i]))
                    watch.add(partition_for(SOURCE_ID, visitor, partitions), visitor, time.monotonic())
                    probes.append(visitor)
            if upto > sent:
                requests.append(asyncio.create_task(post(session, calls[sent:upto], probes)))
                sent, last = upto, time.monotonic() - started
            requests = [r for r in requests if not r.done()]
            await asyncio.sleep(COLLECTOR_TICK_SECONDS)
        await asyncio.gather(*requests)
    if failures:
        raise RuntimeError(f"{len(failures)} collector requests failed, the first: {failures[0]}")
    return SteadyRun(sent, last, watch)


def phase_collector(bench: Bench) -> list[Row]:
    """Ampelios fed through its collector at a fixed rate, with probes for the latency from
    a call's send to ``/visitors`` answering, and every event counted at the end."""
    options = bench.options
    schedule = Schedule.of(bench.workload, bench.settings.partitions, options.rate, options.steady_seconds)
    workdir = bench.workdir("collector")
    settings = stack_settings(bench, workdir).with_(write_keys={WRITE_KEY: SOURCE_ID})
    with fresh_stack(settings, workdir, bench.profile("collector")) as stack:
        base = base_url(stack)
        run = asyncio.run(run_collector(base, schedule, bench.settings.partitions, options))
        stats, figures = after_sending(stack, options.timeout)
    watch = run.watch
    p50, p99, top = percentiles(watch.latencies)
    ack_p50, ack_p99, _ = percentiles(watch.after_ack)
    distinct = distinct_events(schedule.events.take(slice(0, run.sent)))
    counted = stats["events"] if stats is not None else None
    figures.update(
        target_rate=options.rate,
        achieved_rate=run.sent / run.seconds if run.seconds else None,
        probes=watch.probes,
        probes_visible=len(watch.latencies),
        probes_not_visible=watch.not_visible,
        latency_ms={"p50": p50, "p99": p99, "max": top},
        after_answer_latency_ms={"p50": ack_p50, "p99": ack_p99},
        sent_distinct_events=distinct,
        reflected_events=counted,
        stats_at_end=stats,
    )
    latency = "-" if p50 is None or p99 is None else f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {top:,.0f} ms"
    row = Row(
        "collector",
        f"Ampelios: collector {options.rate:g} ev/s, Segment batches",
        run.sent,
        run.sent,
        run.seconds,
        notes=f"events/s as sent; {_number(counted)} of {distinct:,} counted at the end; "
        f"{watch.probes} probes send -> /visitors 200: {latency}",
        figures=figures,
    )
    if watch.not_visible or counted != distinct:
        row.error = f"{watch.not_visible} probes not visible; {_number(counted)} of {distinct:,} events counted"
    return [row]


@dataclass
class WebhookSchedule:
    """The webhooks phase's messages, one event each: ``warm`` first (sent at once, before
    subscribing: a model, and every probe visitor's first view), then ``measured`` (sent
    at the rate), in which message ``i`` of ``probes`` is a purchase of visitor
    ``probes[i]``, which moves it out of the segment its one view put it in."""

    warm: list[Message]
    measured: list[Message]
    events: EventBatch  # of ``measured``
    probes: dict[int, int]

    @classmethod
    def of(cls, workload: Workload, partitions: int, rate: float, seconds: float) -> WebhookSchedule:
        """The steady phase's schedule for ``WARM_SECONDS + seconds``, split: the probes
        of the measured part buy (one product, an order of their own) where the steady
        phase has them view, and view a minute earlier in the warm part."""
        whole = Schedule.of(workload, partitions, rate, WEBHOOK_WARM_SECONDS + seconds)
        split = round(rate * WEBHOOK_WARM_SECONDS)
        probes = {i - split: v for i, v in whole.probes.items() if i >= split}
        measured = whole.events.take(slice(split, len(whole.events)))
        at = np.array(sorted(probes), dtype=np.int64)
        event, order = measured.event.copy(), measured.transactionid.copy()
        event[at], order[at] = TRANSACTION, measured.visitorid[at]
        measured = EventBatch(measured.source_id, measured.timestamp, measured.visitorid, event, measured.itemid, order)
        views = EventBatch(
            measured.source_id[at],
            measured.timestamp[at] - 60_000,
            measured.visitorid[at],
            np.full(len(at), VIEW, dtype=measured.event.dtype),
            measured.itemid[at],
            np.full(len(at), -1, dtype=measured.transactionid.dtype),
        )
        return cls(
            warm=whole.messages[:split] + one_event_messages(views, partitions),
            measured=one_event_messages(measured, partitions),
            events=measured,
            probes=probes,
        )


async def records_since(url: str, starts: dict[TopicPartition, int]) -> list[dict[str, Any]]:
    """The records (JSON) of each partition from its offset in ``starts`` to its end now."""
    ends = await end_offsets(url, list(starts))
    records = []
    for tp, start in starts.items():
        records += [orjson.loads(r.value) for r in await read_range(url, tp, start, ends[tp])]
    return records


async def members_delivered(
    url: str, group: str, tps: list[TopicPartition], timeout: float
) -> dict[TopicPartition, int]:
    """Wait until a subscription's group committed an offset on every partition (it does
    once the partition's members are delivered); those offsets, where its changes begin."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(url))
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            if all(tp in offsets and offsets[tp].offset >= 0 for tp in tps) or time.monotonic() > deadline:
                return {tp: max(0, offsets[tp].offset) if tp in offsets else 0 for tp in tps}
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


def phase_webhooks(bench: Bench) -> list[Row]:
    """Ampelios at a fixed rate, one event per message, with a webhook subscription to
    every segment of the source: latency from a probe's purchase to its move arriving at
    the receiver, and every change of ``segment-changes`` since the subscription
    delivered (nothing lost), with the receiver down for ``--receiver-down-seconds``
    from the start of sending."""
    options = bench.options
    partitions = bench.settings.partitions
    schedule = WebhookSchedule.of(bench.workload, partitions, options.rate, options.steady_seconds)
    workdir = bench.workdir("webhooks")
    settings = stack_settings(bench, workdir)
    topology = Topology.of(settings)
    with fresh_stack(settings, workdir, bench.profile("webhooks")) as stack, WebhookReceiver() as receiver:
        base, url = base_url(stack), stack.settings.broker_url
        asyncio.run(produce(url, bench.topic, partitions, schedule.warm))
        wait_until_reflected(base, SOURCE_ID, timeout=options.timeout)
        code, sub = http_json("POST", f"{base}/webhooks", {"url": receiver.url("/hook"), "source_id": SOURCE_ID})
        if code != 201:
            raise RuntimeError(f"POST /webhooks answered {code}: {sub}")
        changes = [TopicPartition(topology.segment_changes, p) for p in range(partitions)]
        starts = asyncio.run(members_delivered(url, topology.webhook_group(sub["id"]), changes, options.timeout))
        members = sum(len(orjson.loads(r.body).get("visitors", [])) for r in receiver.attempts("/hook"))
        sent_at: dict[int, float] = {}  # probe visitor -> when its purchase was handed to the producer

        def on_send(i: int, partition: int, ack: asyncio.Future[Any]) -> None:
            if i in schedule.probes:
                sent_at[schedule.probes[i]] = time.time()

        if options.receiver_down_seconds:
            receiver.status["/hook"] = 503
        down_from = time.monotonic()
        sent, seconds = asyncio.run(
            send_at_rate(url, bench.topic, schedule.measured, options.rate, options.steady_seconds, on_send)
        )
        stats, figures = after_sending(stack, options.timeout)
        time.sleep(max(0.0, options.receiver_down_seconds - (time.monotonic() - down_from)))
        receiver.status.pop("/hook", None)
        back_at = time.time()
        everything = Subscription.from_json(
            {"url": receiver.url("/hook"), "source_id": SOURCE_ID}, id="x", secret=sub["secret"]
        )
        expected = membership_changes(asyncio.run(records_since(url, starts)), everything)
        key = operator.itemgetter("visitorid", "at", "action", "segment")
        deadline = time.monotonic() + options.timeout
        while True:
            arrived: dict[tuple[Any, ...], float] = {}
            for r in receiver.attempts("/hook"):
                if r.status == 200:
                    body = orjson.loads(r.body)
                    for change in body.get("changes", []):
                        arrived.setdefault(key(change), r.at)
            missing = [c for c in expected if key(c) not in arrived]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    latencies = []
    for visitor, at in sent_at.items():
        moved = [t for (v, _, action, _), t in arrived.items() if v == visitor and action == "enter"]
        if moved:
            latencies.append(min(moved) - at)
    p50, p95, p99, top = (None,) * 4 if not latencies else np.percentile(np.array(latencies) * 1000, [50, 95, 99, 100])
    caught_up = max((arrived[key(c)] for c in expected if key(c) in arrived), default=back_at) - back_at
    figures.update(
        target_rate=options.rate,
        achieved_rate=sent / seconds if seconds else None,
        members_delivered=members,
        changes_expected=len(expected),
        changes_delivered=len(expected) - len(missing),
        changes_missing=len(missing),
        missing_sample=missing[:5],
        changes_from={tp.partition: offset for tp, offset in starts.items()},
        probes=len(sent_at),
        probes_moved=len(latencies),
        latency_ms={"p50": p50, "p95": p95, "p99": p99, "max": top},
        receiver_down_seconds=options.receiver_down_seconds,
        caught_up_seconds_after_back=caught_up if options.receiver_down_seconds else None,
        deliveries=sum(1 for r in receiver.attempts("/hook") if r.status == 200),
        failed_attempts=sum(1 for r in receiver.attempts("/hook") if r.status != 200),
        stats_at_end=stats,
    )
    latency = "-" if p50 is None else f"p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms"
    outage = (
        f"; receiver down {options.receiver_down_seconds:g} s, all delivered {caught_up:,.1f} s after it was back"
        if options.receiver_down_seconds
        else ""
    )
    row = Row(
        "webhooks",
        f"Ampelios: webhooks {options.rate:g} ev/s, 1 event/msg",
        sent,
        sent,
        seconds,
        notes=f"{len(expected) - len(missing):,} of {len(expected):,} changes delivered; "
        f"{len(latencies)} probes purchase -> webhook: {latency}{outage}",
        figures=figures,
    )
    if missing:
        row.error = f"{len(missing)} of {len(expected)} changes not delivered"
    return [row]


def soak_messages(workload: Workload, partitions: int, lap: int) -> list[Message]:
    """The workload's events as one-event messages in time order, for the ``lap``-th time:
    each lap's visitors are new ones, its events later than the previous lap's."""
    events = workload.events
    span = int(events.timestamp.max() - events.timestamp.min()) + 1
    shifted = EventBatch(
        source_id=events.source_id,
        timestamp=events.timestamp + lap * span,
        visitorid=events.visitorid + lap * (int(events.visitorid.max()) + 1),
        event=events.event,
        itemid=events.itemid,
        transactionid=events.transactionid,
    )
    return one_event_messages(shifted.take(shifted.time_order()), partitions)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def tree_memory_mib(pid: int | None) -> float | None:
    """The memory of process ``pid`` and its descendants (Postgres's backends), in MiB:
    their proportional set size (Linux ``Pss``: resident pages, each shared page counted
    once across the processes that share it)."""
    if pid is None:
        return None
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, StopIteration):
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()
            total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        pending += _children(current)
    return total / 1024


def stack_memory(stack: Stack) -> dict[str, float | None]:
    """The memory of the stack's broker, Postgres and worker (:func:`tree_memory_mib`)."""
    pids = {
        "broker": stack.broker.pid if stack.broker is not None else None,
        "postgres": stack.database.process.pid if stack.database and stack.database.process else None,
        "worker": stack.worker.process.pid if stack.worker and stack.worker.process else None,
    }
    return {role: tree_memory_mib(pid) for role, pid in pids.items()}


async def run_soak(url: str, topic: str, stack: Stack, bench: Bench) -> tuple[int, list[dict[str, Any]]]:
    """Send new one-event messages at ``rate`` for ``soak_seconds``, sampling the stack's
    memory at the start and every SOAK_SAMPLE_SECONDS; the messages sent and the samples."""
    options = bench.options
    producer = new_producer(url)
    await producer.start()
    samples = [{"seconds": 0.0, "sent": 0, **stack_memory(stack)}]
    try:
        sent, lap, messages = 0, 0, soak_messages(bench.workload, bench.settings.partitions, 0)
        started = time.monotonic()
        acks: list[asyncio.Future[Any]] = []
        while (elapsed := time.monotonic() - started) < options.soak_seconds:
            while sent < int(elapsed * options.rate) + 1:
                if sent - lap * len(messages) == len(messages):
                    lap += 1
                    messages = soak_messages(bench.workload, bench.settings.partitions, lap)
                partition, key, value = messages[sent - lap * len(messages)]
                acks.append(await producer.send(topic, value, key=key, partition=partition))
                sent += 1
            acks = [a for a in acks if not a.done() or a.exception() is not None]
            if elapsed >= len(samples) * SOAK_SAMPLE_SECONDS:
                samples.append({"seconds": round(elapsed, 1), "sent": sent, **stack_memory(stack)})
            await asyncio.sleep(PRODUCER_TICK_SECONDS)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return sent, samples


def phase_soak(bench: Bench) -> list[Row]:
    """The local stack (``AMPELIOS_LOCAL_BROKER``) under live events for a long time: does
    its memory stay bounded?"""
    options = bench.options
    workdir = bench.workdir("soak")
    settings = stack_settings(bench, workdir).with_(local_broker=bench.settings.local_broker)
    with fresh_stack(settings, workdir, bench.profile("soak")) as stack:
        base = base_url(stack)
        started = time.monotonic()
        sent, samples = asyncio.run(run_soak(stack.settings.broker_url, bench.topic, stack, bench))
        seconds = time.monotonic() - started
        with contextlib.suppress(TimeoutError):
            wait_until_reflected(base, SOURCE_ID, timeout=options.timeout)
        samples.append({"seconds": round(time.monotonic() - started, 1), "sent": sent, **stack_memory(stack)})
        code, stats = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
    totals = [sum(v for k, v in s.items() if k in ("broker", "postgres", "worker") and v) for s in samples]
    for sample, total in zip(samples, totals, strict=True):
        sample["total"] = total
    first, last = samples[0], samples[-1]
    memory = ", ".join(
        f"{role} {first[role] or 0:.0f} -> {last[role] or 0:.0f} (max {max(s[role] or 0 for s in samples):.0f})"
        for role in ("broker", "postgres", "worker")
    )
    reflected = f"{stats['events']:,}" if code == 200 else "?"
    row = Row(
        "soak",
        f"Ampelios: soak {options.rate:g} ev/s for {options.soak_seconds:g} s",
        sent,
        sent,
        seconds,
        notes=f"{settings.local_broker} broker; memory (PSS, MiB) start -> end: {memory}; whole stack "
        f"{totals[0]:.0f} -> {totals[-1]:.0f} (max {max(totals):.0f}); {reflected} events reflected",
        figures={
            "local_broker": settings.local_broker,
            "samples_pss_mib": samples,
            "stats_at_end": stats if code == 200 else None,
        },
    )
    return [row]


PHASE_RUNNERS: dict[str, Callable[[Bench], list[Row]]] = {
    "limit": phase_limit,
    "ceiling": phase_ceiling,
    "replay": phase_replay,
    "takeover": phase_takeover,
    "single": phase_single,
    "steady": phase_steady,
    "collector": phase_collector,
    "webhooks": phase_webhooks,
    "soak": phase_soak,
}


def relate(rows: list[Row]) -> None:
    """Set the one-event-per-message Ampelios rate as a percentage of the bare-Faust one
    (the issue's target: at least 85%), when both were measured."""
    by_id = {r.id: r for r in rows}
    single, ceiling = by_id.get("single"), by_id.get("ceiling.single")
    if single is None or ceiling is None or not single.events_per_s or not ceiling.events_per_s:
        return
    share = 100 * single.events_per_s / ceiling.events_per_s
    single.figures["percent_of_ceiling"] = share
    single.notes += f"; {share:.0f}% of bare Faust 1 event/msg (target >= 85%)"


# ------------------------------------------------------------------ report


def _number(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table; a failed row's notes start with its error."""
    header = ["phase", "messages", "events", "seconds", "events/s", "msgs/s", "notes"]
    lines = [
        [
            r.phase,
            _number(r.messages),
            _number(r.events),
            _number(r.seconds, 2),
            _number(r.events_per_s),
            _number(r.messages_per_s),
            f"FAILED: {r.error}; {r.notes}".rstrip("; ") if r.error else r.notes,
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in [header, *lines]
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def report_json(settings: Settings, options: BenchOptions, workload: Workload, rows: list[Row]) -> dict[str, Any]:
    """Every figure, with the machine and the workload it was measured on."""
    w, o = workload, options
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "nproc": len(os.sched_getaffinity(0)),
        "events": len(w.events),
        "distinct_events": w.distinct,
        "visitors": w.visitors,
        "partitions": settings.partitions,
        "replay_batch_events": settings.replay_batch_events,
        "replay_messages": len(w.batched),
        "single_events": len(w.singles),
        "rate": o.rate,
        "steady_seconds": o.steady_seconds,
        "soak_seconds": o.soak_seconds,
        "seed": o.seed,
        "phases": list(o.phases),
        "rows": {r.id: r.to_json() for r in rows},
    }


def run_bench(settings: Settings, options: BenchOptions) -> int:
    """Run the chosen phases in order, print the table and write the JSON report; 0 when
    every measurement finished, 1 when one did not, 130 when interrupted (everything
    started is stopped either way)."""
    rows: list[Row] = []
    workload: Workload | None = None
    code = 0
    try:
        with stop_on_signals():
            click.echo(f"Generating {options.events:,} events (seed {options.seed}) ...", err=True)
            workload = Workload.generate(
                options.events,
                min(options.single_events, options.events),
                options.seed,
                settings.partitions,
                settings.replay_batch_events,
            )
            with tempfile.TemporaryDirectory(prefix="ampelios-bench-") as root:
                bench = Bench(settings, options, workload, Path(root))
                for phase in options.phases:
                    click.echo(f"[{phase}] ...", err=True)
                    try:
                        measured = PHASE_RUNNERS[phase](bench)
                    except Exception as exc:  # one broken phase must not cost the others
                        measured = [Row(phase, phase, 0, 0, None, error=repr(exc))]
                    rows += measured
                    click.echo("\n".join(format_table(measured).splitlines()[2:]), err=True)
    except StopRequested:
        click.echo("Interrupted: every broker, Postgres and worker started is stopped.", err=True)
        code = 130
    if workload is None:
        return code
    relate(rows)
    click.echo(
        f"\n{len(workload.events):,} events of {workload.visitors:,} visitors, {settings.partitions} partitions, "
        f"{len(workload.batched):,} replay messages of up to {settings.replay_batch_events:,} events; "
        f"{len(os.sched_getaffinity(0))} CPUs\n"
    )
    click.echo(format_table(rows))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report_json(settings, options, workload, rows), indent=2) + "\n")
    return code or (1 if any(r.error for r in rows) else 0)


def _phases(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = {p.strip() for p in value.split(",") if p.strip()}
    unknown = sorted(names - set(PHASES))
    if unknown or not names:
        raise click.BadParameter(f"choose among {', '.join(PHASES)}; got {value!r}")
    return tuple(p for p in PHASES if p in names)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--events", "n_events", default=DEFAULT_EVENTS, show_default=True, type=click.IntRange(1), help="Events (N)."
)
@click.option(
    "--single-events",
    default=200_000,
    show_default=True,
    type=click.IntRange(1),
    help="The first M events are also sent one per message (limit, ceiling, single).",
)
@click.option(
    "--rate",
    default=5000.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Steady and collector phases: events per second.",
)
@click.option(
    "--steady-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Steady and collector phases: seconds of sending.",
)
@click.option(
    "--soak-seconds",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Soak phase: seconds of producing.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated events.")
@click.option(
    "--phases",
    default=",".join(DEFAULT_PHASES),
    show_default=True,
    callback=_phases,
    help=f"Comma-separated phases to run (always in this order; {PHASES[-1]} only when named).",
)
@click.option(
    "--timeout",
    default=900.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a measurement waits for its messages to be consumed or its events reflected.",
)
@click.option(
    "--probe-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Steady phase: seconds to wait for probes after producing stops.",
)
@click.option(
    "--receiver-down-seconds",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Webhooks phase: seconds the receiver answers 503 from the start of sending.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write every figure here."
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Record the worker with py-spy in each Ampelios phase; speedscope profiles go here.",
)
def main(
    n_events: int,
    single_events: int,
    rate: float,
    steady_seconds: float,
    soak_seconds: float,
    seed: int,
    phases: tuple[str, ...],
    timeout: float,
    probe_timeout: float,
    receiver_down_seconds: float,
    json_path: Path | None,
    profile_dir: Path | None,
) -> None:
    """Measure, side by side on this machine, raw aiokafka consumption, a bare Faust agent
    and Ampelios (replay end to end, one event per message, and latency at a steady rate),
    each on a freshly started embedded broker; print a table (and JSON with --json)."""
    options = BenchOptions(
        events=n_events,
        single_events=single_events,
        rate=rate,
        steady_seconds=steady_seconds,
        soak_seconds=soak_seconds,
        seed=seed,
        phases=phases,
        timeout=timeout,
        probe_timeout=probe_timeout,
        receiver_down_seconds=receiver_down_seconds,
        json_path=json_path,
        profile_dir=profile_dir,
    )
    sys.exit(run_bench(load_settings(), options))
