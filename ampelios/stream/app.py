"""The Faust application: topics, tables and the wiring of agents, services and views.

``create_pipeline(settings)`` builds everything; ``ampelios.app:app`` is the instance
``faust -A ampelios.app worker`` and ``ampelios worker`` run.

State, all in RocksDB tables backed by changelog topics:

==================  ==========  =======================================================
table               partitions  key -> value
==================  ==========  =======================================================
journeys            N           ``source:visitor`` -> journey bytes (distinct events,
                                segment); see :mod:`ampelios.core.journeys`. A
                                :class:`BatchTable`: one changelog record per batch
source-stats        N           ``source:partition`` -> events, visitors, rejected
segment-state       1           ``model:source`` -> the authoritative :class:`SegmentModel`
                                and ``shape:source:v,a,t,s`` -> visitors with that
                                journey shape (the population). A :class:`BatchTable`
                                written only by the model's owner, one record per update
segment-published   1 (global)  ``source`` -> a copy of the model every worker reads
==================  ==========  =======================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.structs import TopicPartition

import ampelios.services.broker  # noqa: F401  (registers the tansu:// transport)
from ampelios.config import Settings
from ampelios.core.model import SegmentModel
from ampelios.services.broker import check_broker_epoch, committed_offsets, end_offsets, ensure_topics
from ampelios.sinks.history import History
from ampelios.sinks.postgres import PostgresSink
from ampelios.stream.batch_table import BatchTable
from ampelios.stream.topology import Topology

log = logging.getLogger(__name__)


class AmpeliosApp(faust.App):
    """A Faust app that prepares its broker before anything opens local state."""

    pipeline: Pipeline

    async def on_first_start(self) -> None:
        settings, topology = self.pipeline.settings, self.pipeline.topology
        await ensure_topics(self.pipeline.settings.broker_url, topology.topics())
        await check_broker_epoch(
            self.pipeline.settings.broker_url, topology.epoch, settings.state_dir, settings.worker_dir
        )
        await super().on_first_start()


@dataclass
class Pipeline:
    """Everything a running worker has: settings, the app, its topics and tables."""

    settings: Settings
    topology: Topology
    app: AmpeliosApp
    events: Any
    dead_letters: Any
    segment_updates: Any
    segment_changes: Any
    visitor_updates: Any
    snapshots: Any
    journeys: BatchTable
    stats: Any
    segments: BatchTable
    published: Any
    history: History | None
    sink: PostgresSink | None
    jobs: dict[str, Any] = field(default_factory=dict)

    def ready(self) -> bool:
        """Table recovery has completed and no rebalance is under way."""
        recovery = self.app.tables.recovery
        return recovery.completed.is_set() and not recovery.in_recovery and not self.app.rebalancing

    def published_model(self, source_id: int) -> SegmentModel | None:
        """The newest model of a source this worker has seen (possibly a batch behind)."""
        value = self.published.get(b"%d" % source_id)
        return SegmentModel.from_bytes(value) if value is not None else None

    def source_stats(self, source_id: int) -> dict[str, int]:
        totals = {"events": 0, "visitors": 0, "rejected": 0}
        for partition in range(self.topology.partitions):
            value = self.stats.get(b"%d:%d" % (source_id, partition))
            if value is not None:
                for name, count in decode_counts(value).items():
                    totals[name] += count
        return totals

    async def pending(self) -> dict[str, Any]:
        """Records not yet processed: ``lag`` (events, rejections and segment updates
        the worker has not committed, i.e. not yet reflected in journeys, stats and
        segments), ``sink_lag`` (output records not yet written to Postgres) and
        ``sink_error`` (why this worker's sink cannot write right now, or ``None``)."""
        t = self.topology
        url = self.settings.broker_url
        n = range(t.partitions)
        inputs = [TopicPartition(topic, p) for topic in (t.events, t.dead_letters) for p in n]
        inputs.append(TopicPartition(t.segment_updates, 0))
        outputs = [TopicPartition(topic, p) for topic in (t.visitor_updates, t.segment_changes) for p in n]
        outputs.append(TopicPartition(t.snapshots, 0))
        ends = await end_offsets(url, inputs + outputs)
        done = await committed_offsets(url, self.settings.app_id, inputs)
        lag = sum(max(0, ends[tp] - done[tp]) for tp in inputs)
        if self.sink is None:
            return {"lag": lag, "sink_lag": 0, "sink_error": None}
        written = await committed_offsets(url, t.sink_group, outputs)
        sink_lag = sum(max(0, ends[tp] - written[tp]) for tp in outputs)
        return {"lag": lag, "sink_lag": sink_lag, "sink_error": self.sink.unavailable}


def encode_counts(counts: dict[str, int]) -> bytes:
    return b"%d,%d,%d" % (counts["events"], counts["visitors"], counts["rejected"])


def decode_counts(value: bytes) -> dict[str, int]:
    events, visitors, rejected = (int(x) for x in value.split(b","))
    return {"events": events, "visitors": visitors, "rejected": rejected}


def create_pipeline(settings: Settings) -> Pipeline:
    topology = Topology.of(settings)
    app = AmpeliosApp(
        settings.app_id,
        broker=settings.broker_url,
        store="rocksdb://",
        datadir=str(settings.worker_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # Group joins in seconds, not half a minute (DESIGN.md section 3).
        broker_rebalance_timeout=10,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_commit_interval=1.0,
        producer_max_request_size=16 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        # Tansu has no transactions (DESIGN.md section 3): at-least-once, made idempotent
        # by journeys that hold distinct events.
        processing_guarantee="at_least_once",
        table_standby_replicas=0,
        logging_config=None,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    n = settings.partitions
    history = History(settings.database_url) if settings.database_url else None
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
        journeys=app.tables.add(BatchTable(app, name="journeys", key_type=bytes, value_type=bytes, partitions=n)),
        stats=app.Table("source-stats", key_type=bytes, value_type=bytes, partitions=n),
        segments=app.tables.add(BatchTable(app, name="segment-state", key_type=bytes, value_type=bytes, partitions=1)),
        published=app.GlobalTable("segment-published", key_type=bytes, value_type=bytes, partitions=1),
        history=history,
        sink=PostgresSink(settings.broker_url, topology, history) if history is not None else None,
    )
    app.pipeline = pipeline
    if pipeline.sink is not None:
        app.service(pipeline.sink)
    else:
        log.warning("AMPELIOS_DATABASE_URL is not set: no history is kept in Postgres")

    from ampelios.stream import agents, views

    agents.register(pipeline)
    views.register(pipeline)
    return pipeline
