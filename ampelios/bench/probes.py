"""Events at a steady rate, with probe visitors whose answers time the latency (steady, collector, webhooks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from ampelios.bench.harness import SOURCE_ID, BenchOptions, Message, Workload, one_event_messages
from ampelios.core.events import VIEW, EventBatch
from ampelios.ingest.replay import new_producer

PROBE_EVERY_SECONDS = 0.025


MAX_PROBES = 1000


PROBE_POLL_SECONDS = 0.05  # the oldest pending probe of each partition is asked this often


PRODUCER_TICK_SECONDS = 0.002


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
