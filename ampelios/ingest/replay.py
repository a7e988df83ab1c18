"""Replay a CSV file into the events topic (``ampelios replay`` and ``POST /trigger``).

The file is parsed and validated first (bad rows go to the dead-letter topic with their
line and reason), then the good events are sent in event-time order: each visitor's
events go to the partition Kafka's default partitioner gives its key
(:mod:`ampelios.core.partitioning`), many events per message so that a replay of
millions of events costs thousands of messages, not millions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiokafka
import numpy as np
import orjson

from ampelios.core.events import EVENT_CODES, EventBatch, ParsedCsv, Rejection, encode_events, read_csv
from ampelios.core.partitioning import partitions_for
from ampelios.core.rejections import RejectionSummary
from ampelios.services.broker import MAX_MESSAGE_BYTES, bootstrap_servers, ensure_topics
from ampelios.topology import Topology


@dataclass
class ReplayProgress:
    """What a replay has done so far; ``on_progress`` sees it after every message."""

    rows: int = 0  # data rows in the file
    rejected: int = 0  # rows sent to the dead-letter topic
    ignored: int = 0  # rows whose event AMPELIOS_EVENT_MAP ignores
    events: int = 0  # good events in the file
    sent: int = 0  # good events acknowledged by the broker
    messages: int = 0
    reasons: RejectionSummary = field(default_factory=RejectionSummary)  # why rows were rejected

    def all_rejected(self) -> str | None:
        """Why the replay is a failure when no row of the file could be used, else ``None``."""
        if self.events or not self.rejected:
            return None
        top = "; ".join(f"{r['reason']} ({r['count']:,})" for r in self.reasons.report(limit=3))
        return f"every row was rejected: {top}"


def plan_messages(
    events: EventBatch, partitions: int, batch_events: int, in_time_order: bool
) -> list[tuple[int, EventBatch]]:
    """Split events into (partition, events) messages of at most ``batch_events``.

    Within a partition, messages follow event time (or file order); messages of
    different partitions are interleaved so the replay moves through time evenly.
    """
    if len(events) == 0:
        return []
    if in_time_order and not (events.timestamp[1:] >= events.timestamp[:-1]).all():
        events = events.take(events.time_order())
    visitors, owner = np.unique(events.visitorid, return_inverse=True)
    partition = partitions_for(np.full(len(visitors), events.source_id[0]), visitors, partitions)[owner]
    order = np.argsort(partition.astype(np.uint16), kind="stable")  # a radix sort
    bounds = np.searchsorted(partition[order], np.arange(partitions + 1))
    chunks: list[list[tuple[int, EventBatch]]] = []
    for p in range(partitions):
        rows = order[bounds[p] : bounds[p + 1]]
        chunks.append([(p, events.take(rows[i : i + batch_events])) for i in range(0, len(rows), batch_events)])
    plan: list[tuple[int, EventBatch]] = []
    for round_ in range(max(map(len, chunks))):
        plan.extend(c[round_] for c in chunks if round_ < len(c))
    return plan


def rejection_record(source_id: int, rejection: Rejection, stage: str) -> bytes:
    """The dead-letter record of one rejected row or message."""
    return orjson.dumps({"source_id": source_id, "stage": stage, **rejection.to_dict()})


def ignored_record(source_id: int, ignored: int) -> bytes:
    """The dead-letter topic's record of the rows of a file whose event was ignored
    (AMPELIOS_EVENT_MAP): a count for ``/stats``, no rejection."""
    return orjson.dumps({"source_id": source_id, "stage": "replay", "ignored": ignored})


async def send_rejections(
    producer: aiokafka.AIOKafkaProducer,
    topic: str,
    source_id: int,
    rejections: list[Rejection],
    stage: str,
    ignored: int = 0,
) -> None:
    """Dead-letter ``rejections`` (and the count of ``ignored`` rows), acknowledged."""
    key = b"%d" % source_id
    futures = [await producer.send(topic, rejection_record(source_id, r, stage), key=key) for r in rejections]
    if ignored:
        futures.append(await producer.send(topic, ignored_record(source_id, ignored), key=key))
    await asyncio.gather(*futures)


def new_producer(url: str) -> aiokafka.AIOKafkaProducer:
    """The producer replays use (not started): batches of up to 1 MiB after 5 ms, records
    up to ``MAX_MESSAGE_BYTES``, each acknowledged by all replicas."""
    return aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(url),
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
        acks="all",
    )


async def replay_parsed(
    url: str,
    topology: Topology,
    parsed: ParsedCsv,
    source_id: int,
    *,
    batch_events: int,
    in_time_order: bool = True,
    on_progress: Callable[[ReplayProgress], None] = lambda p: None,
) -> ReplayProgress:
    """Send parsed rows to the broker at ``url``; return what was sent."""
    reasons = RejectionSummary()
    await asyncio.to_thread(reasons.add, parsed.rejections)
    progress = ReplayProgress(
        rows=parsed.rows,
        rejected=len(parsed.rejections),
        ignored=parsed.ignored,
        events=len(parsed.events),
        reasons=reasons,
    )
    await ensure_topics(url, topology.topics())
    producer = new_producer(url)
    await producer.start()
    try:
        await send_rejections(
            producer, topology.dead_letters, source_id, parsed.rejections, "replay", ignored=parsed.ignored
        )
        on_progress(progress)
        window: list[tuple[asyncio.Future[object], int]] = []
        # Planning sorts millions of rows: in a thread, so the worker's agents go on meanwhile.
        plan = await asyncio.to_thread(plan_messages, parsed.events, topology.partitions, batch_events, in_time_order)
        for partition, chunk in plan:
            future = await producer.send(topology.events, encode_events(chunk), partition=partition)
            window.append((future, len(chunk)))
            if len(window) >= 64:  # bound memory; keep the pipe full
                await _settle(window[:32], progress, on_progress)
                del window[:32]
        await _settle(window, progress, on_progress)
    finally:
        await producer.stop()
    return progress


async def _settle(
    window: list[tuple[asyncio.Future[object], int]],
    progress: ReplayProgress,
    on_progress: Callable[[ReplayProgress], None],
) -> None:
    for future, n in window:
        await future
        progress.sent += n
        progress.messages += 1
        on_progress(progress)


async def replay_file(
    url: str,
    topology: Topology,
    path: Path,
    source_id: int,
    *,
    batch_events: int,
    codes: Mapping[str, int] = EVENT_CODES,
    in_time_order: bool = True,
    on_progress: Callable[[ReplayProgress], None] = lambda p: None,
) -> ReplayProgress:
    """Parse ``path`` (in a thread: parsing is CPU work; event names read with ``codes``)
    and replay it."""
    parsed = await asyncio.to_thread(read_csv, path, source_id, codes)
    return await replay_parsed(
        url,
        topology,
        parsed,
        source_id,
        batch_events=batch_events,
        in_time_order=in_time_order,
        on_progress=on_progress,
    )
