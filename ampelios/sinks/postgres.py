"""The Postgres sink: Kafka output topics -> :class:`~ampelios.sinks.history.History`.

It reads ``<app>-snapshots``, ``<app>-visitor-updates``, ``segment-changes`` and
``segment-alerts`` with a consumer group of its own (``<app>-postgres``) and commits its offsets only after Postgres
has the records. While Postgres is down it retries the same records with backoff; the
stream goes on meanwhile, the records wait in Kafka, and the sink catches up when the
database is back: no snapshot is dropped. With several workers, the group spreads the
partitions over them. Every ``prune_seconds`` it deletes what the retention no longer
keeps (:meth:`History.prune`).
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka
import orjson
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from ampelios.internals import leave_even_the_first_generation
from ampelios.services.broker import group_consumer
from ampelios.sinks.history import History, HistoryUnavailable, Retention
from ampelios.topology import Topology

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0


class PostgresSink(Service):
    """Consumes the output topics and writes them to Postgres (see the module docstring)."""

    def __init__(
        self,
        broker_url: str,
        topology: Topology,
        history: History,
        retention: Retention,
        prune_seconds: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.broker_url = broker_url
        self.topology = topology
        self.history = history
        self.retention = retention
        self.prune_seconds = prune_seconds
        self.pruned: dict[str, int] = {}  # rows deleted since start, per table
        self.consumer: aiokafka.AIOKafkaConsumer | None = None
        self.written = 0  # records written since start
        self.unavailable: str | None = None  # why the last write failed, until one succeeds

    async def on_start(self) -> None:
        t = self.topology
        topics = (t.snapshots, t.visitor_updates, t.segment_changes, t.segment_alerts)
        self.consumer = group_consumer(self.broker_url, t.sink_group, *topics, fetch_max_bytes=64 * 1024 * 1024)
        await self.consumer.start()

    async def on_stop(self) -> None:
        if self.consumer is not None:
            leave_even_the_first_generation(self.consumer)
            await self.consumer.stop()
        await self.history.close()

    @Service.task
    async def _drain(self) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            records = await self.consumer.getmany(timeout_ms=500, max_records=2000)
            if not records:
                continue
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for tp, batch in records.items():
                by_topic.setdefault(tp.topic, []).extend(orjson.loads(r.value) for r in batch)
            await self._write_until_done(by_topic)
            await self._commit()

    @Service.task
    async def _prune(self) -> None:
        """Delete what the retention no longer keeps, once the sink starts and then every
        ``prune_seconds`` (each worker's sink does; deleting twice deletes nothing more; a
        worker restarted more often than that still prunes). Postgres away: the next time."""
        while not self.should_stop:
            try:
                deleted = await self.history.prune(self.retention)
            except HistoryUnavailable:
                deleted = {}
            for table, n in deleted.items():
                self.pruned[table] = self.pruned.get(table, 0) + n
            if any(deleted.values()):
                log.info("history retention deleted %s", ", ".join(f"{n} {t}" for t, n in deleted.items() if n))
            await self.sleep(self.prune_seconds)

    async def _commit(self) -> None:
        """Commit what was written. When the group rebalanced meanwhile, the partitions'
        new holder (maybe this worker) reads the records from the last commit and writes
        them again, which changes nothing (every write is an idempotent upsert that never
        moves a visitor back in time); any other broker error is retried, so that the
        task never dies and leaves the sink's lag above 0 for good."""
        assert self.consumer is not None
        backoff = 0.2
        while not self.should_stop:
            try:
                await self.consumer.commit()
                return
            except CommitFailedError:
                log.info("the sink's partitions moved during a write; their new holder repeats it")
                return
            except KafkaError as exc:
                log.warning("could not commit the sink's offsets (%r); retrying", exc)
                await self.sleep(backoff)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)

    async def _write_until_done(self, by_topic: dict[str, list[dict[str, Any]]]) -> None:
        t = self.topology
        backoff = 0.2
        while not self.should_stop:
            try:
                await self.history.write(
                    by_topic.get(t.snapshots, []),
                    by_topic.get(t.visitor_updates, []),
                    by_topic.get(t.segment_changes, []),
                    by_topic.get(t.segment_alerts, []),
                )
            except HistoryUnavailable as exc:
                if self.unavailable is None:
                    log.warning("%s; keeping the records in Kafka and retrying", exc)
                self.unavailable = str(exc)
                await self.sleep(backoff)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
                continue
            if self.unavailable is not None:
                log.info("Postgres is back; writing the records that waited")
                self.unavailable = None
            self.written += sum(map(len, by_topic.values()))
            return
