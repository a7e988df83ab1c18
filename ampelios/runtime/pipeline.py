"""What a running worker has -- settings, the app, its topics and tables -- and the keys
and records its agents and routes share. Built by :func:`ampelios.worker.app.create_pipeline`;
the agents (:mod:`ampelios.worker.agents`) and the routes (:mod:`ampelios.api.routes`)
are given it and take nothing else from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka.structs import TopicPartition

from ampelios.config import Settings
from ampelios.core.model import SegmentModel
from ampelios.core.rejections import RejectionSummary
from ampelios.engine.batch_table import BatchTable, PublishedTable
from ampelios.engine.exactly_once import ExactlyOnce, forwarded_key
from ampelios.engine.intake import Intake
from ampelios.engine.visitor_names import VisitorNames, name_key
from ampelios.runtime.metrics import Metrics
from ampelios.services.broker import committed_offsets, end_offsets
from ampelios.sinks.history import History
from ampelios.sinks.postgres import PostgresSink
from ampelios.topology import Topology


@dataclass
class Pipeline:
    """Everything a running worker has: settings, the app, its topics and tables."""

    settings: Settings
    topology: Topology
    app: faust.App
    events: Any
    dead_letters: Any
    segment_updates: Any
    segment_changes: Any
    visitor_updates: Any
    snapshots: Any
    journeys: BatchTable
    segments: BatchTable
    published: PublishedTable
    identities: PublishedTable  # link_key -> the user id an anonymous id is linked to
    webhooks: PublishedTable  # subscription id -> the subscription made over HTTP (JSON, with its secret)
    names: VisitorNames  # name_key -> a collected visitor's original id, while kept
    history: History | None
    sink: PostgresSink | None
    intake: Intake  # the messages of events, taken from Faust's consumer as fetched
    jobs: dict[str, Any] = field(default_factory=dict)
    event_codes: dict[str, int] = field(default_factory=dict)  # names read, see event_codes
    collector_codes: dict[str, int] = field(default_factory=dict)  # names collected, see collector_codes
    processors: list[ExactlyOnce] = field(default_factory=list)  # one per agent, see agents
    metrics: Metrics = field(default_factory=Metrics)
    broker_epoch: bytes = b""  # the broker's life, as its epoch record names it (set at start)

    def ready(self) -> bool:
        """Table recovery has completed and no rebalance is under way."""
        recovery = self.app.tables.recovery
        return recovery.completed.is_set() and not recovery.in_recovery and not self.app.rebalancing

    def published_model(self, source_id: int) -> SegmentModel | None:
        """The newest model of a source this worker has seen (possibly a batch behind)."""
        value = self.published.get(b"%d" % source_id)
        return SegmentModel.from_bytes(value) if value is not None else None

    def published_models(self) -> list[tuple[int, SegmentModel]]:
        """The newest model of every source this worker has seen."""
        return [(int(key), SegmentModel.from_bytes(v)) for key, v in self.published.items() if key.isdigit()]

    def published_alerts(self) -> list[dict[str, Any]]:
        """The alerts of every source as their model's owner last judged them."""
        return [a for key, v in self.published.items() if key.startswith(b"alerts:") for a in orjson.loads(v).values()]

    def linked_user(self, source_id: int, anonymous_id: str) -> str | None:
        """The user id a collected call linked an anonymous id of a source to, if any."""
        value = self.identities.get(link_key(source_id, anonymous_id))
        return value.decode() if value is not None else None

    def original_id(self, source_id: int, visitor: int) -> str | None:
        """The original id of a collected visitor (``user:<userId>`` or
        ``anonymous:<anonymousId>``); ``None`` for a visitor that was not collected."""
        found = self.names.original(name_key(source_id, visitor))
        return found[0] if found is not None else None

    def local_partitions(self) -> list[int]:
        """The events partitions this worker owns (and so the journeys it holds)."""
        topic = self.topology.events
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic)

    def source_stats(self, source_id: int) -> dict[str, int]:
        """Events and visitors held, rejections, events ignored (AMPELIOS_EVENT_MAP), events
        forwarded to the partition that owns their visitor, and events too late to apply,
        summed over local partitions."""
        totals = {"events": 0, "visitors": 0, "rejected": 0, "ignored": 0, "forwarded": 0, "late": 0}
        for partition in self.local_partitions():
            keys = [counts_key(source_id), rejected_key(source_id), ignored_key(source_id), forwarded_key(source_id)]
            counts, rejected, ignored, forwarded, late = self.journeys.get_many(partition, [*keys, late_key(source_id)])
            if counts is not None:
                events, visitors = counts.split(b",")
                totals["events"] += int(events)
                totals["visitors"] += int(visitors)
            if rejected is not None:
                totals["rejected"] += int(rejected)
            if ignored is not None:
                totals["ignored"] += int(ignored)
            if forwarded is not None:
                totals["forwarded"] += int(forwarded)
            if late is not None:
                totals["late"] += int(late)
        return totals

    def rejection_summary(self, source_id: int) -> RejectionSummary:
        """The reasons a source's rows and messages were rejected, over local partitions."""
        summary = RejectionSummary()
        for partition in self.local_partitions():
            (raw,) = self.journeys.get_many(partition, [rejections_key(source_id)])
            summary.merge(RejectionSummary.from_bytes(raw))
        return summary

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
        outputs += [TopicPartition(t.snapshots, 0), TopicPartition(t.segment_alerts, 0)]
        ends = await end_offsets(url, inputs + outputs)
        done = await committed_offsets(url, self.settings.app_id, inputs)
        lag = sum(max(0, ends[tp] - done[tp]) for tp in inputs)
        if self.sink is None:
            return {"lag": lag, "sink_lag": 0, "sink_error": None}
        written = await committed_offsets(url, t.sink_group, outputs)
        sink_lag = sum(max(0, ends[tp] - written[tp]) for tp in outputs)
        return {"lag": lag, "sink_lag": sink_lag, "sink_error": self.sink.unavailable}


def counts_key(source_id: int) -> bytes:
    """journeys key (per partition) of ``events,visitors`` reflected for a source."""
    return b"~counts:%d" % source_id


def rejected_key(source_id: int) -> bytes:
    """journeys key (per partition) of the rejections counted for a source."""
    return b"~rejected:%d" % source_id


def rejections_key(source_id: int) -> bytes:
    """journeys key (per partition) of a source's :class:`RejectionSummary` (reasons)."""
    return b"~rejections:%d" % source_id


def late_key(source_id: int) -> bytes:
    """journeys key (per partition) of a source's events that came too late
    (``AMPELIOS_ACTIVE_DAYS`` or ``AMPELIOS_LATENESS_DAYS`` behind the partition's event
    time, or summarized by a visitor linked to another), not applied."""
    return b"~late:%d" % source_id


def ignored_key(source_id: int) -> bytes:
    """journeys key (per partition) of a source's events ignored by AMPELIOS_EVENT_MAP."""
    return b"~ignored:%d" % source_id


def link_key(source_id: int, anonymous_id: str) -> bytes:
    """identities key of the user id an anonymous id of a source is linked to."""
    return b"link:%d:%s" % (source_id, anonymous_id.encode())


def snapshot_request(source_id: int, reason: str) -> bytes:
    """A segment-updates message asking the owner for a wall-clock snapshot."""
    return orjson.dumps({"source_id": source_id, "snapshot": reason})
