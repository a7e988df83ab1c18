"""Webhooks: each subscription's segment membership, delivered to its URL.

Subscriptions come from the ``AMPELIOS_WEBHOOKS`` file (read at start, fixed) and from
``POST /webhooks`` (kept in the global table ``webhooks``, so every worker has them).
Every worker runs, for every subscription, a :class:`Deliveries`: a Kafka consumer of
``segment-changes`` in the subscription's own group (``<app>-webhook-<id>``). The group
spreads the partitions over the workers; each subscription keeps its own position, so a
receiver that is down holds up only its own deliveries.

The protocol, per partition of ``segment-changes``:

1. **Members first.** A partition assigned with no committed offset (a new
   subscription) is paused at its end offset; the members of the subscribed segments
   among the visitors of the same ``events`` partition are delivered (``type:
   "members"``, pages of :data:`~ampelios.core.webhooks.MEMBERS_PAGE`, read here or from
   the worker holding them), then that end offset is committed. A change written after
   it may also be in the members: a receiver sees it twice, never misses it.
2. **Then changes.** Each fetch (up to :data:`FETCH` records) is one delivery (``type:
   "changes"``) of the exits and entries it makes in the subscribed segments, in the
   topic's order, which is every visitor's order. Its offsets are committed only after
   the receiver answered 2xx.
3. **Retries.** Any other answer, a timeout or a refused connection is retried with
   backoff (:data:`FIRST_BACKOFF` doubling to :data:`MAX_BACKOFF`), re-signed each time,
   under the same ``webhook-id``, for as long as it takes: a receiver down for ten
   minutes gets everything when it is back, in order. A partition that moves to another
   worker meanwhile is delivered again from its last commit by that worker: at least
   once.

Each worker keeps the log of its last :data:`LOG_SIZE` deliveries per subscription
(``GET /webhooks/{id}/deliveries`` gathers every worker's) and counts them in
``/metrics``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiokafka
import orjson
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import TopicPartition
from mode import Service

from ampelios.api.members import MemberCursor, MemberPages
from ampelios.core.webhooks import (
    MEMBERS_PAGE,
    Subscription,
    SubscriptionRefused,
    delivery_id,
    membership_changes,
    new_id,
    new_secret,
    read_subscriptions,
    signed_headers,
)
from ampelios.internals import leave_even_the_first_generation
from ampelios.runtime.cluster import PeerUnavailable
from ampelios.runtime.pipeline import Pipeline
from ampelios.services.broker import group_consumer

log = logging.getLogger(__name__)

FETCH = 1000  # segment-changes records per delivery at most
FIRST_BACKOFF = 0.5  # seconds before the first retry
MAX_BACKOFF = 10.0  # seconds between retries at most: a receiver back is served within it
DELIVERY_TIMEOUT = aiohttp.ClientTimeout(total=10)
LOG_SIZE = 100  # deliveries kept in each worker's log, per subscription
# A delivery retried for as long as its receiver is down keeps the consumer from polling;
# the group must not take that for a dead consumer (its heartbeats say it lives).
MAX_POLL_INTERVAL_MS = 7 * 24 * 3600 * 1000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Deliveries(Service):
    """One subscription's deliveries from this worker (see the module docstring)."""

    def __init__(self, p: Pipeline, sub: Subscription, pages: MemberPages, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.p = p
        self.sub = sub
        self.pages = pages
        self.consumer: aiokafka.AIOKafkaConsumer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.unsynced: dict[TopicPartition, int] = {}  # partition -> end offset, members not yet sent
        self.generation = 0  # assignments so far: a sync begun under an older one is left to the newer
        self.recent: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)  # the delivery log

    async def on_start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=DELIVERY_TIMEOUT)
        group = self.p.topology.webhook_group(self.sub.id)
        self.consumer = group_consumer(self.p.settings.broker_url, group, max_poll_interval_ms=MAX_POLL_INTERVAL_MS)
        self.consumer.subscribe([self.p.topology.segment_changes], listener=_NewPartitions(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        try:
            if self.session is not None:
                await self.session.close()
        finally:
            if self.consumer is not None:
                leave_even_the_first_generation(self.consumer)
                await self.consumer.stop()

    @Service.task
    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while not self.should_stop:
            for tp, end in list(self.unsynced.items()):
                await self._send_members(tp, end)
            records = await consumer.getmany(timeout_ms=200, max_records=FETCH)
            if records:
                await self._send_changes(records)

    async def _send_members(self, tp: TopicPartition, end: int) -> None:
        """Deliver the members of the subscribed segments among the visitors of ``tp``'s
        partition, then commit ``end`` and resume the partition there."""
        assert self.consumer is not None
        sub, held, generation = self.sub, {tp}, self.generation
        while not self.p.ready() and not self.should_stop:
            await self.sleep(0.5)
        model = self.p.published_model(sub.source_id)
        segments = [s for s in range(model.k) if sub.wants(model.labels[s])] if model is not None else []
        for segment in segments:
            cursor: MemberCursor | None = MemberCursor(sub.source_id, segment, model, partition=tp.partition)
            while cursor is not None:
                if self.should_stop or self.generation != generation:
                    return
                try:
                    found, following = await self.pages.page(cursor, MEMBERS_PAGE, local=True)
                except PeerUnavailable as exc:
                    log.info("webhook %s: members of partition %d unreadable (%s); retrying", sub.id, tp.partition, exc)
                    await self.sleep(1.0)
                    continue
                if found:
                    body = {
                        "type": "members",
                        "subscription": sub.id,
                        "source_id": sub.source_id,
                        "segment": segment,
                        "label": model.labels[segment],
                        "model_version": model.version,
                        "visitors": [m["visitorid"] for m in found],
                        "original_ids": self._original_ids(m["visitorid"] for m in found),
                    }
                    key = delivery_id(sub, "members", tp.partition, end, model.version, segment, cursor.after)
                    if not await self._deliver(body, key, held, None, len(found)):
                        return
                cursor = following
        # Asked again after the commit: an assignment made during it may have found no
        # commit yet and put the partition to sync at a newer end, which is its to resume.
        if self.generation == generation and await self._commit({tp: end}) and self.generation == generation:
            self.unsynced.pop(tp, None)
            self.consumer.resume(tp)

    def _original_ids(self, visitors: Iterable[int]) -> dict[str, str]:
        """visitor id (as JSON keys are: text) -> original id, for the collected ones."""
        found = ((v, self.p.original_id(self.sub.source_id, v)) for v in visitors)
        return {str(v): original for v, original in found if original is not None}

    async def _send_changes(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Deliver the changes of one fetch, then commit it; when it could not be
        delivered here, put the partitions still held back to its start."""
        assert self.consumer is not None
        sub = self.sub
        ordered = [orjson.loads(r.value) for tp in sorted(records) for r in records[tp]]
        changes = membership_changes(ordered, sub)
        for change in changes:
            change["original_id"] = self.p.original_id(sub.source_id, change["visitorid"])
        if changes:
            ranges = sorted((tp.partition, rs[0].offset, rs[-1].offset) for tp, rs in records.items())
            body = {"type": "changes", "subscription": sub.id, "source_id": sub.source_id, "changes": changes}
            oldest = min(rs[0].timestamp for rs in records.values())
            if not await self._deliver(body, delivery_id(sub, "changes", ranges), set(records), oldest, len(changes)):
                for tp, rs in records.items():
                    if tp in self.consumer.assignment():
                        self.consumer.seek(tp, rs[0].offset)
                return
        await self._commit({tp: rs[-1].offset + 1 for tp, rs in records.items()})

    async def _deliver(
        self, body: dict[str, Any], message_id: str, held: set[TopicPartition], written_ms: int | None, size: int
    ) -> bool:
        """POST ``body`` until the receiver answers 2xx (True); False when this worker
        stops or no longer holds ``held``, whose next holder delivers it again."""
        assert self.session is not None and self.consumer is not None
        sub, metrics = self.sub, self.p.metrics
        data = orjson.dumps(body)
        entry: dict[str, Any] = {
            "id": message_id,
            "type": body["type"],
            "size": size,
            "created": _now(),
            "attempts": 0,
            "status": None,
            "error": None,
            "delivered": None,
        }
        self.recent.append(entry)
        backoff = FIRST_BACKOFF
        while not self.should_stop:
            if not held <= self.consumer.assignment():
                entry["error"] = "its partitions moved to another worker, which delivers them again"
                return False
            entry["attempts"] += 1
            try:
                async with self.session.post(sub.url, data=data, headers=signed_headers(sub, message_id, data)) as r:
                    await r.read()
                    entry["status"], entry["error"] = r.status, None if r.status < 300 else f"answered {r.status}"
            except Exception as exc:  # whatever failed the attempt (the connection, the loop), it is tried again
                entry["status"], entry["error"] = None, f"{exc!r:.200}"
            if entry["status"] is not None and 200 <= entry["status"] < 300:
                entry["delivered"] = _now()
                metrics.webhook_deliveries.labels(sub.id, "delivered").inc()
                metrics.webhook_changes.labels(sub.id).inc(size)
                if written_ms is not None:
                    metrics.webhook_seconds.labels(sub.id).observe(max(0.0, time.time() - written_ms / 1000))
                return True
            metrics.webhook_deliveries.labels(sub.id, "failed").inc()
            if entry["attempts"] == 1:
                log.warning("webhook %s: %s %s; retrying with backoff", sub.id, sub.url, entry["error"])
            await self.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)
        return False

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit what was delivered; False when the group moved the partitions meanwhile
        (their new holder delivers from the last commit again)."""
        assert self.consumer is not None
        try:
            await self.consumer.commit(offsets)
            return True
        except CommitFailedError:
            log.info("webhook %s: partitions moved during a delivery; their new holder repeats it", self.sub.id)
        except KafkaError as exc:
            log.warning("webhook %s: could not commit (%r); the next commit covers it", self.sub.id, exc)
        return False


class _NewPartitions(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]
    """Pauses a partition assigned with no committed offset at its end until its members
    are delivered (step 1 of the protocol)."""

    def __init__(self, deliveries: Deliveries) -> None:
        self.d = deliveries

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.d.generation += 1  # whatever was begun is done again under the new assignment
        for tp in revoked:
            self.d.unsynced.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.d.consumer
        assert consumer is not None
        for tp in assigned:
            if await consumer.committed(tp) is None:
                end = (await consumer.end_offsets([tp]))[tp]
                consumer.seek(tp, end)
                consumer.pause(tp)
                self.d.unsynced[tp] = end


class Webhooks(Service):
    """The subscriptions (file and HTTP) and, on this worker, a :class:`Deliveries` for
    each, started and stopped as subscriptions come and go."""

    def __init__(self, p: Pipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.p = p
        self.pages = MemberPages(p)
        self.fixed = {s.id: s for s in read_subscriptions(p.settings.webhooks)} if p.settings.webhooks else {}
        self.running: dict[str, Deliveries] = {}

    def subscriptions(self) -> dict[str, Subscription]:
        """Every subscription by id: the file's, then those made over HTTP."""
        made = {key.decode(): Subscription.from_json(orjson.loads(value)) for key, value in self.p.webhooks.items()}
        return {**made, **self.fixed}

    async def subscribe(self, raw: Any) -> Subscription:
        """Keep a new subscription (a new id; a new secret unless it gives one)."""
        if isinstance(raw, dict) and "id" in raw:
            raise SubscriptionRefused("id is given by Ampelios; leave it out")
        sub = Subscription.from_json(raw, id=new_id(), secret=new_secret())
        await self.p.webhooks.publish(sub.id.encode(), orjson.dumps(sub.to_json(with_secret=True)))
        return sub

    async def unsubscribe(self, sub_id: str) -> None:
        """Forget a subscription made over HTTP; its deliveries stop on every worker."""
        await self.p.webhooks.publish(sub_id.encode(), None)

    def deliveries(self, sub_id: str) -> list[dict[str, Any]]:
        """This worker's log of the subscription's deliveries, newest first."""
        running = self.running.get(sub_id)
        return list(reversed(running.recent)) if running is not None else []

    @Service.task
    async def _follow_subscriptions(self) -> None:
        while not self.should_stop:
            if self.p.ready():
                await self._start_and_stop()
            await self.sleep(1.0)

    async def _start_and_stop(self) -> None:
        wanted = self.subscriptions()
        for sub_id, deliveries in list(self.running.items()):
            if wanted.get(sub_id) != deliveries.sub or deliveries.crashed:  # a crashed one would keep its partitions
                await deliveries.stop()
                del self.running[sub_id]
        for sub_id, sub in wanted.items():
            if sub_id not in self.running and not self.should_stop:
                deliveries = Deliveries(self.p, sub, self.pages)
                await deliveries.start()
                self.running[sub_id] = deliveries

    async def on_stop(self) -> None:
        running, self.running = self.running, {}
        for deliveries in running.values():
            await deliveries.stop()
