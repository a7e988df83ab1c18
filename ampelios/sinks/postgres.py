"""The Postgres sink: Kafka output topics -> :class:`~ampelios.sinks.history.History`.

It reads ``<app>-snapshots``, ``<app>-visitor-updates``, ``segment-changes`` and
``segment-alerts`` with a consumer group of its own (``<app>-postgres``) and commits its offsets only after Postgres
has the records. While Postgres is down it retries the same records with backoff; the
stream goes on meanwhile, the records wait in Kafka, and the sink catches up when the
database is back: no snapshot is dropped. With several workers, the group spreads the
partitions over them, and each write is fenced by the group generation its records were
read in: a sink that lost its partitions while it waited (Postgres away) cannot put its
older rows over what their new holder wrote since (found by the fault campaign, seed 8: a
visitor's row ended with 16 views of its 20). Every ``prune_seconds`` it deletes what the retention no longer
keeps (:meth:`History.prune`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import aiokafka
import orjson
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service

from ampelios.internals import group_generation, leave_even_the_first_generation
from ampelios.services.broker import broker_epoch, group_consumer
from ampelios.sinks.history import Fenced, History, HistoryUnavailable, Retention
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
        self.fence: str | None = None  # the sink group and the broker's life (History.write)

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
            generation = group_generation(self.consumer)  # no await since getmany: the records' own
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for tp, batch in records.items():
                by_topic.setdefault(tp.topic, []).extend(orjson.loads(r.value) for r in batch)
            if await self._write_until_done(by_topic, generation):
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
        them again, which changes nothing (every write is an idempotent upsert); any other
        broker error is retried, so that the task never dies and leaves the sink's lag
        above 0 for good."""
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

    async def _write_until_done(self, by_topic: dict[str, list[dict[str, Any]]], generation: int) -> bool:
        """Write the records read in ``generation`` of the sink's group, retrying while
        Postgres is away; whether they were written. A newer generation wrote meanwhile
        (:class:`Fenced`): their partitions were handed over during the wait, and a write
        now could put an older row over a newer one, so they are read again from the last
        commit by whoever holds them now (maybe this sink)."""
        t = self.topology
        backoff = 0.2
        if self.fence is None:
            epoch = await broker_epoch(self.broker_url, t.epoch) or b""
            self.fence = f"{t.sink_group}:{epoch.hex()}"
        while not self.should_stop:
            try:
                await self.history.write(
                    by_topic.get(t.snapshots, []),
                    by_topic.get(t.visitor_updates, []),
                    by_topic.get(t.segment_changes, []),
                    by_topic.get(t.segment_alerts, []),
                    fence=(self.fence, generation),
                )
            except Fenced as exc:
                log.info("%s: reading them again", exc)
                assert self.consumer is not None
                with contextlib.suppress(IllegalStateError):  # moving now: assigned again from the commits
                    await self.consumer.seek_to_committed()
                return False
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
            return True
        return False
