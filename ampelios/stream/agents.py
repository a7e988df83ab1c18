"""The agents: events -> journeys -> population deltas -> the segment model -> outputs.

``journeys`` (one stream over the N partitions of ``events``): each message -- one event
or thousands -- is one batch. Its events are merged into the journeys of their visitors
(one RocksDB read per visitor, one write batch and one changelog record per batch). Per
batch it sends one :class:`PopulationDelta` (which journey shapes lost and gained
visitors) to ``segment-updates``, one record of the changed visitors' shapes to
``visitor-updates`` (for SQL), and one ``segment-changes`` record per visitor whose own
events moved it to another segment under the current model.

``segments`` (the single partition of ``segment-updates``): the model's one owner applies
deltas in order to the population of their source, updates the segment model
(:func:`ampelios.core.model.update`), stores both in one atomic write of
``segment-state`` and publishes the model in the global table every worker reads. A
delta at or below the offset the model has already applied is skipped, so a redelivered
update counts once. It also takes the snapshots: on event time, when a batch's events
pass a period boundary (``AMPELIOS_SNAPSHOT_EVENT_HOURS``), and on wall time when asked
(every ``AMPELIOS_SNAPSHOT_SECONDS`` by a timer on the owner, and at the end of each
replay job), and sends them to ``snapshots``.

``rejections`` (``events-dlq``): counts dead-lettered rows and messages per source.

A message that cannot be used never stops an agent: it is dead-lettered with its
position and reason, and counted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import orjson
from aiokafka.structs import TopicPartition

from ampelios.core.events import EventBatch, InvalidMessage, Rejection, decode_events
from ampelios.core.journeys import JourneyBatch, features_from_shapes, merge_journeys
from ampelios.core.model import SegmentModel, update
from ampelios.core.partitioning import visitor_key
from ampelios.core.population import Population, PopulationDelta, Shape
from ampelios.stream.app import Pipeline, decode_counts, encode_counts
from ampelios.stream.replay import rejection_record

log = logging.getLogger(__name__)

UNKNOWN_SOURCE = -1
MAX_SNAPSHOTS_PER_BATCH = 1000  # event-time snapshots one batch may take (a jump in time)


def model_key(source_id: int) -> bytes:
    return b"model:%d" % source_id


def shape_key(source_id: int, shape: Shape) -> bytes:
    return b"shape:%d:%d,%d,%d,%d" % (source_id, *shape)


def clock_key(source_id: int) -> bytes:
    """segment-state key of the next event-time snapshot of a source (ms)."""
    return b"clock:%d" % source_id


def snapshot_request(source_id: int, reason: str) -> bytes:
    """A segment-updates message asking the owner for a wall-clock snapshot."""
    return orjson.dumps({"source_id": source_id, "snapshot": reason})


def snapshot_record(
    source_id: int, model: SegmentModel, clock: str, at_ms: int, reason: str, shapes: list[list[int]] | None = None
) -> bytes:
    """A snapshots record: the segments of a source at ``at_ms`` on ``clock``, and for
    wall-clock snapshots the segment of every journey shape (for SQL's visitor_segments)."""
    return orjson.dumps(
        {
            "source_id": source_id,
            "clock": clock,
            "at": at_ms,
            "reason": reason,
            "model_version": model.version,
            "segments": model.segments(),
            "shapes": shapes,
        }
    )


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

    window_ms = p.settings.active_window_ms

    def activity_key(source_id: int, last_event: int, visitor: int) -> bytes:
        """Index of active journeys by latest event, to find those that expire."""
        return b"~active:%d:%013d:%d" % (source_id, last_event, visitor)

    def expire(
        source_id: int, partition: int, cutoff: int, in_batch: set[int], writes: dict[bytes, bytes | None]
    ) -> tuple[list[int], JourneyBatch] | None:
        """Journeys of the partition whose latest event is at or before ``cutoff`` leave
        the population: their stored flag and the index are updated in ``writes``; return
        their visitors and their (inactive) journeys."""
        prefix = b"~active:%d:" % source_id
        found = p.journeys.items_between(partition, prefix, prefix + b"%013d:" % (cutoff + 1))
        visitors: list[int] = []
        for key, _ in found:
            visitor = int(key.rsplit(b":", 1)[1])
            if visitor not in in_batch:  # those follow their new events
                writes[key] = None
                visitors.append(visitor)
        keys = [visitor_key(source_id, v) for v in visitors]
        old = p.journeys.get_many(partition, keys)
        known = [i for i, value in enumerate(old) if value is not None]
        if not known:
            return None
        none = np.empty(0, dtype=np.int64)
        batch = merge_journeys([old[i] for i in known], EventBatch.empty(), none, gap_ms, window_ms, cutoff)
        writes.update(zip((keys[i] for i in known), batch.encode(np.arange(len(known)))))
        return [visitors[i] for i in known], batch

    async def announce_moves(source_id: int, visitors: np.ndarray, batch: JourneyBatch, moved: np.ndarray) -> None:
        """One segment-changes record per visitor whose own events moved it to another
        segment under the current model (``moved``: journeys active before and after)."""
        model = p.published_model(source_id)
        if model is None or not len(moved):
            return
        before = model.assign(features_from_shapes(batch.old_shapes[moved]))
        after = model.assign(features_from_shapes(batch.new_shapes[moved]))
        last_event = batch.last_event
        for i, old, new in zip(moved.tolist(), before.tolist(), after.tolist()):
            if old != new:
                visitor = int(visitors[i])
                record = {
                    "source_id": source_id,
                    "visitorid": visitor,
                    "from": old,
                    "to": new,
                    "from_label": model.labels[old],
                    "to_label": model.labels[new],
                    "at": int(last_event[i]),
                    "model_version": model.version,
                }
                await p.segment_changes.send(key=visitor_key(source_id, visitor), value=orjson.dumps(record))

    async def apply_batch(source_id: int, partition: int, offset: int, events: EventBatch) -> None:
        visitors, owner = np.unique(events.visitorid, return_inverse=True)
        ids = visitors.tolist()
        keys = [visitor_key(source_id, v) for v in ids]
        watermark = int(events.timestamp.max())
        writes: dict[bytes, bytes | None] = {}  # one write batch, one changelog record
        cutoff = None
        if window_ms is not None:
            clock = b"~watermark:%d" % source_id
            (stored,) = p.journeys.get_many(partition, [clock])
            watermark = max(watermark, int(stored or 0))
            writes[clock] = b"%d" % watermark
            cutoff = watermark - window_ms
        batch = merge_journeys(p.journeys.get_many(partition, keys), events, owner, gap_ms, window_ms, cutoff)
        changed = np.flatnonzero(batch.changed)
        writes.update(zip((keys[i] for i in changed.tolist()), batch.encode(changed)))
        left = [batch.old_shapes[changed[batch.was_active[changed]]]]
        joined = batch.new_shapes[changed[batch.active[changed]]]
        columns = [ids[i] for i in changed.tolist()], batch.new_shapes[changed], batch.last_event[changed]
        update = {
            "visitorid": columns[0],
            "shapes": columns[1],
            "last_event": columns[2],
            "active": batch.active[changed],
        }
        if cutoff is not None:
            for i in changed.tolist():  # the activity index follows each changed journey
                if batch.was_active[i]:
                    writes[activity_key(source_id, int(batch.old_last_event[i]), ids[i])] = None
                if batch.active[i]:
                    writes[activity_key(source_id, int(batch.last_event[i]), ids[i])] = b""
            expiry = expire(source_id, partition, cutoff, set(ids), writes)
            if expiry is not None:
                gone, expired = expiry
                left.append(expired.old_shapes)
                update["visitorid"] = [*update["visitorid"], *gone]
                update["shapes"] = np.concatenate([update["shapes"], expired.old_shapes])
                update["last_event"] = np.concatenate([update["last_event"], expired.last_event])
                update["active"] = np.concatenate([update["active"], expired.active])
        p.journeys.set_many(partition, b"%d:%d" % (partition, offset), list(writes), list(writes.values()))
        delta = PopulationDelta.of(np.concatenate(left), joined)
        if len(delta):
            value = {"source_id": source_id, "watermark": watermark, **delta.to_json()}
            await p.segment_updates.send(key=b"%d" % source_id, value=orjson.dumps(value))
        await announce_moves(source_id, visitors, batch, changed[batch.was_active[changed] & batch.active[changed]])
        if len(update["visitorid"]):
            value = orjson.dumps({"source_id": source_id, **update}, option=orjson.OPT_SERIALIZE_NUMPY)
            await p.visitor_updates.send(value=value, partition=partition)
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

    period_ms = round(p.settings.snapshot_event_hours * 3_600_000)

    async def event_time_snapshots(source_id: int, model: SegmentModel | None, watermark: int) -> bytes:
        """Snapshot the model at every period boundary the batch's events passed; return
        the next boundary to store."""
        stored = p.segments.get(clock_key(source_id))
        boundary = int(stored) if stored is not None else (watermark // period_ms + 1) * period_ms
        taken = 0
        while model is not None and watermark >= boundary:
            if taken < MAX_SNAPSHOTS_PER_BATCH:
                record = snapshot_record(source_id, model, "event", boundary, "event time")
                await p.snapshots.send(key=b"%d" % source_id, value=record)
            taken += 1
            boundary += period_ms
        if taken > MAX_SNAPSHOTS_PER_BATCH:
            log.warning("event time of source %d jumped %d periods; kept %d", source_id, taken, MAX_SNAPSHOTS_PER_BATCH)
        return b"%d" % boundary

    async def wall_snapshot(source_id: int, reason: str) -> None:
        stored = p.segments.get(model_key(source_id))
        if stored is None:
            return
        model = SegmentModel.from_bytes(stored)
        shapes, _ = population_of(source_id).arrays()
        segments = model.assign(features_from_shapes(shapes))
        mapping = np.column_stack([shapes, segments]).tolist()
        record = snapshot_record(source_id, model, "wall", round(time.time() * 1000), reason, mapping)
        await p.snapshots.send(key=b"%d" % source_id, value=record)

    @p.app.agent(p.segment_updates, name="segments")
    async def segments(stream: Any) -> None:
        async for event in stream.events():
            offset = event.message.offset
            try:
                message = orjson.loads(event.value)
                source_id = int(message["source_id"])
                if "snapshot" in message:
                    await wall_snapshot(source_id, str(message["snapshot"]))
                    continue
                stored = p.segments.get(model_key(source_id))
                model = SegmentModel.from_bytes(stored) if stored is not None else None
                if model is not None and offset <= model.offset:
                    continue  # applied before a restart
                keys, values = [], []
                if period_ms:
                    keys.append(clock_key(source_id))
                    values.append(await event_time_snapshots(source_id, model, int(message["watermark"])))
                population = population_of(source_id)
                changed = population.apply(PopulationDelta.from_json(message))
                model = update(model, population, p.settings.k_for(source_id), offset=offset)
            except Exception:
                log.exception("could not apply segment update at offset %d", offset)
                populations.clear()  # reload from segment-state: nothing was written
                continue
            value = model.to_bytes()
            keys += [*(shape_key(source_id, shape) for shape, _ in changed), model_key(source_id)]
            values += [*(b"%d" % count for _, count in changed), value]
            p.segments.set_many(0, b"%d" % offset, keys, values)
            p.published[b"%d" % source_id] = value

    last_requested: dict[bytes, int] = {}

    @p.app.timer(p.settings.snapshot_seconds)
    async def request_wall_snapshots() -> None:
        """On the model's owner: ask for a snapshot of every source whose model changed."""
        owner = TopicPartition(p.topology.segment_updates, 0) in p.app.assignor.assigned_actives()
        if not owner:
            return
        for key, value in p.segments.items_with_prefix(0, b"model:"):
            version = SegmentModel.from_bytes(value).version
            if last_requested.get(key) != version:
                last_requested[key] = version
                source_id = int(key.split(b":")[1])
                await p.segment_updates.send(key=b"%d" % source_id, value=snapshot_request(source_id, "periodic"))

    @p.app.agent(p.dead_letters, name="rejections")
    async def rejections(stream: Any) -> None:
        async for event in stream.events():
            try:
                source_id = int(orjson.loads(event.value)["source_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                source_id = UNKNOWN_SOURCE
            add_counts(source_id, event.message.partition, rejected=1)
