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
from ampelios.services.broker import check_broker_epoch, ensure_topics
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
    journeys: BatchTable
    stats: Any
    segments: BatchTable
    published: Any
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

    def committed_partitions(self) -> list[TopicPartition]:
        """The input partitions whose lag says whether everything is reflected: events,
        rejections (counted in stats) and segment updates."""
        t = self.topology
        inputs = [TopicPartition(topic, p) for topic in (t.events, t.dead_letters) for p in range(t.partitions)]
        return [*inputs, TopicPartition(t.segment_updates, 0)]


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
    pipeline = Pipeline(
        settings=settings,
        topology=topology,
        app=app,
        events=app.topic(topology.events, partitions=n, internal=True, **raw),
        dead_letters=app.topic(topology.dead_letters, partitions=n, internal=True, **raw),
        segment_updates=app.topic(topology.segment_updates, partitions=1, internal=True, **raw),
        journeys=app.tables.add(BatchTable(app, name="journeys", key_type=bytes, value_type=bytes, partitions=n)),
        stats=app.Table("source-stats", key_type=bytes, value_type=bytes, partitions=n),
        segments=app.tables.add(BatchTable(app, name="segment-state", key_type=bytes, value_type=bytes, partitions=1)),
        published=app.GlobalTable("segment-published", key_type=bytes, value_type=bytes, partitions=1),
    )
    app.pipeline = pipeline

    from ampelios.stream import agents, history, views

    agents.register(pipeline)
    history.register(pipeline)
    views.register(pipeline)
    return pipeline
