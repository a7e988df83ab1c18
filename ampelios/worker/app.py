"""The Faust application: topics, tables and the wiring of agents, services and views.

``create_pipeline(settings)`` builds everything; ``ampelios.app:app`` is the instance
``faust -A ampelios.app worker`` and ``ampelios worker`` run.

State, all in RocksDB tables backed by changelog topics:

==================  ==========  =======================================================
table               partitions  key -> value
==================  ==========  =======================================================
journeys            N           ``source:visitor`` -> journey bytes (distinct events,
                                active flag); see :mod:`ampelios.core.journeys`.
                                ``~counts:source`` -> events, visitors of the partition;
                                ``~rejected:source`` -> rejections counted;
                                ``~forwarded:source`` -> events forwarded;
                                ``~position``, ``~dlq-position`` -> last offset applied;
                                the activity index and event time (active days). A
                                :class:`BatchTable`: one changelog record per batch
segment-state       1           ``model:source`` -> the authoritative :class:`SegmentModel`,
                                ``shape:source:v,a,t,s`` -> visitors with that journey
                                shape (the population), ``applied:source:partition`` ->
                                newest events offset applied, ``clock:source`` -> next
                                event-time snapshot. A :class:`BatchTable` written only by
                                the model's owner, one record per update
segment-published   1 (global)  ``source`` -> a copy of the model every worker reads;
                                a :class:`PublishedTable`
identities          1 (global)  ``link:source:anonymousId`` -> the user id a collected
                                call linked it to (:mod:`ampelios.ingest.collector`)
webhooks            1 (global)  subscription id -> a webhook subscription made with
                                ``POST /webhooks`` (:mod:`ampelios.api.webhooks`)
visitor-names       1 (global)  ``name:source:visitor`` -> a collected visitor's original
                                id (``user:<userId>``) and the day it was stamped; a
                                :class:`VisitorNames`: one changelog record per collector
                                request, forgotten once the visitor left the window
==================  ==========  =======================================================
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from aiokafka.structs import TopicPartition

import ampelios.services.broker  # noqa: F401  (registers the tansu:// transport)
from ampelios import internals
from ampelios.api import server
from ampelios.api.web_guard import cors_options
from ampelios.api.webhooks import Webhooks
from ampelios.config import Settings
from ampelios.core.collect import collector_codes
from ampelios.core.events import event_codes
from ampelios.engine.batch_table import BatchTable, PublishedTable
from ampelios.engine.exactly_once import seek_stalled, steer
from ampelios.engine.intake import Intake
from ampelios.engine.visitor_names import VisitorNames
from ampelios.runtime.pipeline import Pipeline
from ampelios.services.broker import (
    CHANGELOG_CONFIG,
    EPOCH_FILE,
    MAX_MESSAGE_BYTES,
    broker_epoch,
    check_broker_epoch,
    ensure_topics,
    session_timeout_seconds,
)
from ampelios.sinks.history import History, Retention
from ampelios.sinks.postgres import PostgresSink
from ampelios.topology import Topology
from ampelios.worker import agents

log = logging.getLogger(__name__)


# RocksDB of each journeys partition: Faust's defaults (64 MiB write buffers, a 2 GiB block
# cache) would keep most of a replay's journeys in memory; flushed sooner, the full-scale
# replay's worker peaks lower at the same speed (docs/performance.md).
JOURNEYS_ROCKSDB = {"write_buffer_size": 16 * 2**20, "block_cache_size": 64 * 2**20}
EXIT_RECOVERY_STUCK = 70  # table recovery did not finish in AMPELIOS_RECOVERY_TIMEOUT_SECONDS
EXIT_BROKER_EMPTIED = 75  # the broker lost the data the local state was built on
EPOCH_CHECK_BEFORE_REBALANCE_SECONDS = 10.0
STOP_DEADLINE_SECONDS = 8.0  # a stop that takes longer (a broker gone) ends the process


class AmpeliosApp(internals.App):
    """A Faust app that makes sure its local state can be trusted before opening it.

    At start: topics exist, and the local tables belong to this broker's life
    (:func:`check_broker_epoch`). The local tables are kept whether the last run stopped
    cleanly or was killed: each of their writes holds the changelog offset it reflects
    (:class:`BatchTable`), so recovery reads only the changelog records after it. A
    recovery that does not finish within ``AMPELIOS_RECOVERY_TIMEOUT_SECONDS`` ends the
    process with exit code 70 and says which changelogs it was still reading. While it
    runs, a broker that comes back empty ends it with exit code 75 (see
    :meth:`_watch_broker_epoch` and :meth:`before_rebalance`).
    """

    pipeline: Pipeline

    async def on_first_start(self) -> None:
        settings, topology = self.pipeline.settings, self.pipeline.topology
        await ensure_topics(settings.broker_url, topology.topics())
        await check_broker_epoch(settings.broker_url, topology.epoch, settings.state_dir, settings.worker_dir)
        self._watchdog = asyncio.ensure_future(self._watch_recovery(settings.recovery_timeout_seconds))
        p = self.pipeline
        self._stall_watch = asyncio.ensure_future(seek_stalled(lambda: self.consumer, p.processors, p.ready))
        self._epoch = p.broker_epoch = (settings.state_dir / EPOCH_FILE).read_bytes()
        self._epoch_watch = asyncio.ensure_future(self._watch_broker_epoch())
        await super().on_first_start()

    def consumer_created(self, consumer: Any) -> None:
        """Faust's consumer is positioned and committed by the agents' stored positions
        rather than by Faust's acknowledgements (:mod:`ampelios.engine.exactly_once`)."""
        p = self.pipeline
        steer(consumer, p.processors, lambda: self.rebalancing, lambda: self.in_recovery)
        internals.divert_messages(consumer, p.topology.events, p.intake.deliver)

    async def on_stop(self) -> None:
        """Stopping starts: make sure it ends within STOP_DEADLINE_SECONDS. With its broker
        gone, Faust's consumer thread waits a minute for a coordinator that does not answer;
        ending the process then loses nothing, as every write holds the position and
        changelog offset it reflects (:class:`BatchTable`)."""
        deadline = threading.Timer(STOP_DEADLINE_SECONDS, self._stop_now)
        deadline.daemon = True
        deadline.start()
        await super().on_stop()

    @staticmethod
    def _stop_now() -> None:
        log.warning(
            "The worker did not stop within %.0f s (is the broker unreachable?); exiting now. "
            "Its local state is kept and the next start goes on from it.",
            STOP_DEADLINE_SECONDS,
        )
        logging.shutdown()
        os._exit(0)

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        self._watchdog.cancel()
        self._epoch_watch.cancel()
        self._stall_watch.cancel()

    async def _watch_broker_epoch(self, every: float = 5.0) -> None:
        """Exit (code 75) when the broker comes back without the life the local state was
        built in: an embedded broker restarted empty. Starting again then starts clean;
        going on would mix the old tables with a new log."""
        while True:
            await asyncio.sleep(every)
            await self._exit_if_broker_emptied()

    async def before_rebalance(self, wait: float = EPOCH_CHECK_BEFORE_REBALANCE_SECONDS) -> None:
        """Before giving up partitions (and so before their tables are recovered again):
        exit (code 75) if the broker came back empty. Table recovery would otherwise find
        persisted offsets beyond the emptied changelogs and crash first. An unreachable
        broker is asked again for up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while not await self._exit_if_broker_emptied() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def _exit_if_broker_emptied(self) -> bool:
        """Exit (code 75) if the broker lacks the life the local state was built in;
        ``False`` when it cannot be asked now."""
        url, topic = self.pipeline.settings.broker_url, self.pipeline.topology.epoch
        try:
            current = await broker_epoch(url, topic)
        except Exception:  # unreachable for now: Faust's clients retry
            return False
        if current != self._epoch:
            log.error(
                "The broker at %s came back without the data this worker's state was built on "
                "(an embedded broker keeps nothing across its restarts). Stopping now; start the "
                "worker again to start clean. History kept in Postgres is not affected.",
                url,
            )
            logging.shutdown()
            os._exit(EXIT_BROKER_EMPTIED)
        return True

    async def _watch_recovery(self, timeout: float) -> None:
        recovery, waited = None, 0.0
        while True:
            await asyncio.sleep(1.0)
            recovery = self.tables.recovery if self.tables is not None else None
            recovering = recovery is not None and (recovery.in_recovery or not recovery.completed.is_set())
            waited = waited + 1.0 if recovering else 0.0
            if waited > timeout:
                remaining = recovery.active_remaining() if recovery is not None else {}
                log.error(
                    "Table recovery did not finish within %.0f s (AMPELIOS_RECOVERY_TIMEOUT_SECONDS); "
                    "changelog records still to read: %s. Is the broker reachable and complete? Exiting.",
                    timeout,
                    {f"{tp.topic}[{tp.partition}]": n for tp, n in remaining.items()} or "unknown",
                )
                logging.shutdown()
                os._exit(EXIT_RECOVERY_STUCK)


def create_pipeline(settings: Settings) -> Pipeline:
    internals.check()
    topology = Topology.of(settings)
    app = AmpeliosApp(
        settings.app_id,
        broker=settings.broker_url,
        store="rocksdb://",
        datadir=str(settings.worker_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_host=settings.web_host,
        web_bind=settings.web_bind_address,
        web_port=settings.web_port,
        web_cors_options=cors_options(settings),
        # Group joins in seconds, not half a minute (docs/state-and-recovery.md).
        broker_rebalance_timeout=10,
        broker_session_timeout=session_timeout_seconds(settings.broker_url),
        broker_heartbeat_interval=1,
        broker_commit_interval=1.0,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        # Tansu has no transactions (docs/state-and-recovery.md): at-least-once, made idempotent
        # by journeys that hold distinct events.
        processing_guarantee="at_least_once",
        table_standby_replicas=0,
        logging_config=None,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    table = {"key_type": bytes, "value_type": bytes, "extra_topic_configs": CHANGELOG_CONFIG}
    n = settings.partitions
    history = History(settings.database_url) if settings.database_url else None
    retention = Retention(settings.history_days, settings.wall_snapshot_days)
    pipeline = Pipeline(
        settings=settings,
        topology=topology,
        app=app,
        events=app.topic(topology.events, partitions=n, internal=True, **raw),
        dead_letters=app.topic(topology.dead_letters, partitions=n, internal=True, **raw),
        segment_updates=app.topic(topology.segment_updates, partitions=1, internal=True, **raw),
        segment_changes=app.topic(topology.segment_changes, partitions=n, internal=True, **raw),
        visitor_updates=app.topic(topology.visitor_updates, partitions=n, internal=True, **raw),
        snapshots=app.topic(topology.snapshots, partitions=1, internal=True, **raw),
        journeys=app.tables.add(BatchTable(app, name="journeys", partitions=n, options=JOURNEYS_ROCKSDB, **table)),
        segments=app.tables.add(BatchTable(app, name="segment-state", partitions=1, **table)),
        published=app.tables.add(PublishedTable(app, name="segment-published", partitions=1, **table)),
        identities=app.tables.add(PublishedTable(app, name="identities", partitions=1, **table)),
        webhooks=app.tables.add(PublishedTable(app, name="webhooks", partitions=1, **table)),
        names=app.tables.add(VisitorNames(app, settings.active_days, name="visitor-names", partitions=1, **table)),
        history=history,
        event_codes=event_codes(settings.event_map),
        collector_codes=collector_codes(settings.event_map),
        sink=(
            PostgresSink(settings.broker_url, topology, history, retention, 10 * settings.snapshot_seconds)
            if history is not None
            else None
        ),
        intake=Intake(lambda: app.consumer_generation_id),
    )
    app.pipeline = pipeline

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def on_revoked(sender: Any, revoked: set[TopicPartition], **kwargs: Any) -> None:
        """Before a rebalance, once the agents have finished what they were applying."""
        if revoked:
            await app.before_rebalance()
        pipeline.intake.drop(tp.partition for tp in revoked if tp.topic == topology.events)
        for processing in pipeline.processors:
            await processing.forget(revoked)

    if pipeline.sink is not None:
        app.service(pipeline.sink)
    else:
        log.warning("AMPELIOS_DATABASE_URL is not set: no history is kept in Postgres")

    webhooks = Webhooks(pipeline)
    app.service(webhooks)
    agents.register(pipeline)
    server.register(pipeline, webhooks)
    return pipeline
