"""The agents: events -> journeys -> population deltas -> the segment model.

``journeys`` (one stream over the N partitions of ``events``): each message -- one event
or thousands -- is one batch. Its events are merged into the journeys of their visitors
(one RocksDB read per visitor, one write batch and one changelog record per batch), and
one :class:`PopulationDelta` for the whole batch (which journey shapes lost and gained
visitors) goes to ``segment-updates``.

``segments`` (the single partition of ``segment-updates``): the model's one owner applies
deltas in order to the population of their source, updates the segment model
(:func:`ampelios.core.model.update`), stores both in one atomic write of
``segment-state`` and publishes the model in the global table every worker reads. A
delta at or below the offset the model has already applied is skipped, so a redelivered
update counts once.

``rejections`` (``events-dlq``): counts dead-lettered rows and messages per source.

A message that cannot be used never stops an agent: it is dead-lettered with its
position and reason, and counted.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson

from ampelios.core.events import EventBatch, InvalidMessage, Rejection, decode_events
from ampelios.core.journeys import merge_journeys
from ampelios.core.model import SegmentModel, update
from ampelios.core.partitioning import visitor_key
from ampelios.core.population import Population, PopulationDelta, Shape
from ampelios.stream.app import Pipeline, decode_counts, encode_counts
from ampelios.stream.replay import rejection_record

log = logging.getLogger(__name__)

UNKNOWN_SOURCE = -1


def model_key(source_id: int) -> bytes:
    return b"model:%d" % source_id


def shape_key(source_id: int, shape: Shape) -> bytes:
    return b"shape:%d:%d,%d,%d,%d" % (source_id, *shape)


def register(p: Pipeline) -> None:
    gap_ms = p.settings.session_gap_ms

    def add_counts(source_id: int, partition: int, **added: int) -> None:
        key = b"%d:%d" % (source_id, partition)
        value = p.stats.get(key)
        counts = decode_counts(value) if value is not None else {"events": 0, "visitors": 0, "rejected": 0}
        for name, n in added.items():
            counts[name] += n
        p.stats[key] = encode_counts(counts)

    async def dead_letter(source_id: int, rejections: list[Rejection]) -> None:
        for rejection in rejections:
            await p.dead_letters.send(key=b"%d" % source_id, value=rejection_record(source_id, rejection, "worker"))

    async def apply_batch(source_id: int, partition: int, offset: int, events: EventBatch) -> None:
        visitors, owner = np.unique(events.visitorid, return_inverse=True)
        keys = [visitor_key(source_id, v) for v in visitors.tolist()]
        batch = merge_journeys(p.journeys.get_many(partition, keys), events, owner, gap_ms)
        changed = np.flatnonzero(batch.changed)
        if len(changed):
            p.journeys.set_many(
                partition, b"%d:%d" % (partition, offset), [keys[i] for i in changed.tolist()], batch.encode(changed)
            )
            delta = PopulationDelta.between(
                batch.existed[changed], batch.old_shapes[changed], batch.new_shapes[changed]
            )
            if len(delta):
                value = orjson.dumps({"source_id": source_id, **delta.to_json()})
                await p.segment_updates.send(key=b"%d" % source_id, value=value)
        add_counts(
            source_id,
            partition,
            events=int(batch.added.sum()),
            visitors=int((~batch.existed & batch.changed).sum()),
        )

    @p.app.agent(p.events, name="journeys")
    async def journeys(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            position = f"{message.topic}:{message.partition}:{message.offset}"
            try:
                source, events, rejections = decode_events(event.value, position)
            except InvalidMessage as exc:
                raw = (event.value or b"")[:200].decode("utf-8", "replace")
                await dead_letter(UNKNOWN_SOURCE, [Rejection(position, str(exc), raw)])
                continue
            if rejections:
                await dead_letter(source, rejections)
            if not len(events):
                continue
            try:
                await apply_batch(source, message.partition, message.offset, events)
            except Exception as exc:  # never let one message stop the stream
                log.exception("could not apply %s (source %d)", position, source)
                await dead_letter(source, [Rejection(position, f"internal error: {exc!r}")])

    populations: dict[int, Population] = {}  # the owner's copy of segment-state's shapes

    def population_of(source_id: int) -> Population:
        if source_id not in populations:
            prefix = b"shape:%d:" % source_id
            counts: dict[Shape, int] = {}
            for key, value in p.segments.items_with_prefix(0, prefix):
                views, carts, buys, sessions = (int(x) for x in key[len(prefix) :].split(b","))
                if int(value):
                    counts[(views, carts, buys, sessions)] = int(value)
            populations[source_id] = Population(counts)
        return populations[source_id]

    @p.app.agent(p.segment_updates, name="segments")
    async def segments(stream: Any) -> None:
        async for event in stream.events():
            offset = event.message.offset
            try:
                message = orjson.loads(event.value)
                source_id = int(message["source_id"])
                stored = p.segments.get(model_key(source_id))
                model = SegmentModel.from_bytes(stored) if stored is not None else None
                if model is not None and offset <= model.offset:
                    continue  # applied before a restart
                population = population_of(source_id)
                changed = population.apply(PopulationDelta.from_json(message))
                model = update(model, population, p.settings.k_for(source_id), offset=offset)
            except Exception:
                log.exception("could not apply segment update at offset %d", offset)
                populations.clear()  # reload from segment-state: nothing was written
                continue
            value = model.to_bytes()
            p.segments.set_many(
                0,
                b"%d" % offset,
                [*(shape_key(source_id, shape) for shape, _ in changed), model_key(source_id)],
                [*(b"%d" % count for _, count in changed), value],
            )
            p.published[b"%d" % source_id] = value

    @p.app.agent(p.dead_letters, name="rejections")
    async def rejections(stream: Any) -> None:
        async for event in stream.events():
            try:
                source_id = int(orjson.loads(event.value)["source_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                source_id = UNKNOWN_SOURCE
            add_counts(source_id, event.message.partition, rejected=1)
