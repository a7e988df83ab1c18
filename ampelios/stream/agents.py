"""The agents: events -> journeys -> population deltas -> the segment model -> outputs.

``journeys`` (one stream over the N partitions of ``events``): each message -- one event
or thousands -- is one batch. Its events are merged into the journeys of their visitors,
and it produces one :class:`PopulationDelta` (which journey shapes lost and gained
visitors) for ``segment-updates``, one record of the changed visitors' shapes for
``visitor-updates`` (SQL), and one ``segment-changes`` record per visitor whose own events
moved it to another segment under the current model.

``segments`` (the single partition of ``segment-updates``): the model's one owner applies
deltas in order to the population of their source, updates the segment model
(:func:`ampelios.core.model.update`), stores both in one atomic write of
``segment-state`` and publishes the model in the global table every worker reads. It also
takes the snapshots: on event time, when a batch's events pass a period boundary
(``AMPELIOS_SNAPSHOT_EVENT_HOURS``), and on wall time when asked (every
``AMPELIOS_SNAPSHOT_SECONDS`` by a timer on the owner, and at the end of each replay job),
settling the model first.

``rejections`` (``events-dlq``): counts dead-lettered rows and messages per source.

**Nothing lost, nothing counted twice** (at-least-once delivery, no transactions):

1. Every agent stores the offset of the last message it applied with the state it
   changed, in one changelog record and one RocksDB write (:class:`BatchTable`), and
   applies each message of a partition exactly once, in order, whatever Faust commits
   (:mod:`ampelios.stream.positions`).
2. A message's outputs (delta, visitor updates, segment changes, dead letters) are sent
   and acknowledged by the broker *before* that write. A crash before it loses nothing:
   the message is applied again and gives the same outputs, since the state is as it was
   (a worker that crashed rebuilds its tables from the changelogs). A crash after it
   leaves a state that says the message was applied.
3. A delta names the events message it came from (partition, offset); the owner keeps the
   newest offset applied per source and partition, in the same atomic write as the model
   and population, and skips a delta sent again by a replayed message.

A message that cannot be used never stops an agent: it is dead-lettered with its position
and reason, and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from ampelios.core.events import EventBatch, InvalidMessage, Rejection, decode_events
from ampelios.core.journeys import JourneyBatch, features_from_shapes, merge_journeys
from ampelios.core.model import SegmentModel, update
from ampelios.core.partitioning import visitor_key
from ampelios.core.population import Population, PopulationDelta, Shape
from ampelios.stream.app import Pipeline, counts_key, rejected_key
from ampelios.stream.journey_store import read_journeys, store
from ampelios.stream.positions import Positions
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


def applied_key(source_id: int, partition: int) -> bytes:
    """segment-state key of the newest events offset of a partition the model has applied."""
    return b"applied:%d:%d" % (source_id, partition)


def activity_key(source_id: int, last_event: int, visitor: int) -> bytes:
    """journeys key indexing active journeys by latest event, to find those that expire."""
    return b"~active:%d:%013d:%d" % (source_id, last_event, visitor)


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
    window_ms = p.settings.active_window_ms

    async def dead_letter(source_id: int, rejections: list[Rejection]) -> None:
        """Dead-letter rejections, acknowledged (before the position that says so is stored)."""
        sent = [
            await p.dead_letters.send(key=b"%d" % source_id, value=rejection_record(source_id, r, "worker"))
            for r in rejections
        ]
        await asyncio.gather(*sent)

    def expire(
        source_id: int, partition: int, cutoff: int, in_batch: set[int], writes: dict[bytes, bytes | None]
    ) -> tuple[list[int], JourneyBatch] | None:
        """Journeys of the partition whose latest event is at or before ``cutoff`` leave
        the population: their stored flag and the index are updated in ``writes``; return
        their visitors and their (inactive) journeys."""
        prefix = b"~active:%d:" % source_id
        visitors: list[int] = []
        for key, _ in p.journeys.items_between(partition, prefix, prefix + b"%013d:" % (cutoff + 1)):
            visitor = int(key.rsplit(b":", 1)[1])
            if visitor not in in_batch:  # those follow their new events
                writes[key] = None
                visitors.append(visitor)
        keys = [visitor_key(source_id, v) for v in visitors]
        old = read_journeys(p.journeys, partition, keys)
        known = [i for i, value in enumerate(old) if value is not None]
        if not known:
            return None
        none = np.empty(0, dtype=np.int64)
        batch = merge_journeys([old[i] for i in known], EventBatch.empty(), none, gap_ms, window_ms, cutoff)
        store(writes, [keys[i] for i in known], [old[i] for i in known], batch, np.arange(len(known)))
        return [visitors[i] for i in known], batch

    def segment_moves(
        source_id: int, ids: list[int], batch: JourneyBatch, moved: np.ndarray
    ) -> list[tuple[int, bytes]]:
        """(visitor, segment-changes record) of visitors (``moved``: active before and
        after) whose own events moved them to another segment under the current model."""
        model = p.published_model(source_id)
        if model is None or not len(moved):
            return []
        before = model.assign(features_from_shapes(batch.old_shapes[moved]))
        after = model.assign(features_from_shapes(batch.new_shapes[moved]))
        return [
            (
                ids[i],
                orjson.dumps(
                    {
                        "source_id": source_id,
                        "visitorid": ids[i],
                        "from": old,
                        "to": new,
                        "from_label": model.labels[old],
                        "to_label": model.labels[new],
                        "at": int(batch.last_event[i]),
                        "model_version": model.version,
                    }
                ),
            )
            for i, old, new in zip(moved.tolist(), before.tolist(), after.tolist())
            if old != new
        ]

    async def store_writes(partition: int, offset: int, writes: dict[bytes, bytes | None]) -> None:
        """One events message's state, position included: one changelog record, one RocksDB write."""
        await p.journeys.write(partition, b"%d:%d" % (partition, offset), list(writes), list(writes.values()))

    async def apply_batch(
        source_id: int, partition: int, offset: int, events: EventBatch, writes: dict[bytes, bytes | None]
    ) -> None:
        """Merge ``events`` into journeys; send the outputs, then store everything in
        ``writes`` (one changelog record, one RocksDB write)."""
        visitors, owner = np.unique(events.visitorid, return_inverse=True)
        ids = visitors.tolist()
        keys = [visitor_key(source_id, v) for v in ids]
        watermark = int(events.timestamp.max())
        cutoff = None
        if window_ms is not None:
            clock = b"~watermark:%d" % source_id
            (stored,) = p.journeys.get_many(partition, [clock])
            watermark = max(watermark, int(stored or 0))
            writes[clock] = b"%d" % watermark
            cutoff = watermark - window_ms
        old = read_journeys(p.journeys, partition, keys)
        batch = merge_journeys(old, events, owner, gap_ms, window_ms, cutoff)
        changed = np.flatnonzero(batch.changed)
        store(writes, keys, old, batch, changed)
        left = [batch.old_shapes[changed[batch.was_active[changed]]]]
        update = {
            "visitorid": [ids[i] for i in changed.tolist()],
            "shapes": batch.new_shapes[changed],
            "last_event": batch.last_event[changed],
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
        (stored,) = p.journeys.get_many(partition, [counts_key(source_id)])
        events_seen, visitors_seen = (int(x) for x in stored.split(b",")) if stored is not None else (0, 0)
        events_seen += int(batch.added.sum())
        visitors_seen += int((~batch.existed & batch.changed).sum())
        writes[counts_key(source_id)] = b"%d,%d" % (events_seen, visitors_seen)

        # 1. outputs, acknowledged ...
        sent: list[Awaitable[Any]] = []
        delta = PopulationDelta.of(np.concatenate(left), batch.new_shapes[changed[batch.active[changed]]])
        if len(delta):
            value = {"source_id": source_id, "partition": partition, "offset": offset, "watermark": watermark}
            value.update(delta.to_json())
            sent.append(await p.segment_updates.send(key=b"%d" % source_id, value=orjson.dumps(value)))
        moved = changed[batch.was_active[changed] & batch.active[changed]]
        for visitor, record in segment_moves(source_id, ids, batch, moved):
            sent.append(await p.segment_changes.send(key=visitor_key(source_id, visitor), value=record))
        if update["visitorid"]:
            value = orjson.dumps({"source_id": source_id, **update}, option=orjson.OPT_SERIALIZE_NUMPY)
            sent.append(await p.visitor_updates.send(value=value, partition=partition))
        await asyncio.gather(*sent)
        # 2. ... before the state that says they were produced
        await store_writes(partition, offset, writes)

    async def apply_events(message: Any) -> None:
        """Apply one message of the events topic; store its position with its effects."""
        partition, offset = message.partition, message.offset
        where = f"{message.topic}:{partition}:{offset}"
        writes: dict[bytes, bytes | None] = dict([positions.position(offset)])
        try:
            source, events, rejections = decode_events(message.value, where, p.event_codes)
        except InvalidMessage as exc:
            source, events, rejections = UNKNOWN_SOURCE, EventBatch.empty(), []
            raw = (message.value or b"")[:200].decode("utf-8", "replace")
            await dead_letter(UNKNOWN_SOURCE, [Rejection(where, str(exc), raw)])
        if rejections:
            await dead_letter(source, rejections)
        if len(events):
            try:
                await apply_batch(source, partition, offset, events, writes)
                return
            except (KafkaError, TimeoutError):
                raise  # the broker: Faust restarts the agent; the next message shows the gap
            except Exception as exc:  # a message that breaks the code must not stop the stream
                log.exception("could not apply %s (source %d)", where, source)
                await dead_letter(source, [Rejection(where, f"internal error: {exc!r}")])
        await store_writes(partition, offset, writes)

    positions = Positions(p.settings.broker_url, p.topology.events, p.journeys, b"~position")
    p.positions.append(positions)

    @p.app.agent(p.events, name="journeys")
    async def journeys(stream: Any) -> None:
        async for event in stream.events():
            for message in await positions.admit(event.message):
                await apply_events(message)

    populations: dict[int, Population] = {}  # the owner's copy of segment-state's shapes
    changed_sources: set[int] = set()  # sources updated since their last wall snapshot
    owned = False  # this worker owns the model (since its last check)

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
    updates_positions = Positions(p.settings.broker_url, p.topology.segment_updates, p.segments, b"position")
    p.positions.append(updates_positions)

    async def event_time_snapshots(source_id: int, model: SegmentModel | None, watermark: int) -> bytes:
        """Snapshot the model at every period boundary the batch's events passed; return
        the next boundary to store."""
        stored = p.segments.get_many(0, [clock_key(source_id)])[0]
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

    def stored_model(source_id: int) -> SegmentModel | None:
        stored = p.segments.get_many(0, [model_key(source_id)])[0]
        return SegmentModel.from_bytes(stored) if stored is not None else None

    async def save_model(
        source_id: int, offset: int, model: SegmentModel | None, keys: list[bytes], values: list[bytes]
    ) -> None:
        """Store the model (if any) with ``keys``, the owner's position, atomically; publish it."""
        key, position = updates_positions.position(offset)
        keys, values = [*keys, key], [*values, position]
        if model is not None:
            value = model.to_bytes()
            keys, values = [*keys, model_key(source_id)], [*values, value]
        await p.segments.write(0, b"%d" % offset, keys, values)
        if model is not None:
            p.published[b"%d" % source_id] = value

    async def wall_snapshot(source_id: int, offset: int, reason: str) -> None:
        """Settle the model on the population, then snapshot it with the shape mapping."""
        model = stored_model(source_id)
        if model is None:
            await save_model(source_id, offset, None, [], [])
            return
        population = population_of(source_id)
        model = update(model, population, p.settings.k_for(source_id), settle=True)
        shapes, _ = population.arrays()
        mapping = np.column_stack([shapes, model.assign(features_from_shapes(shapes))]).tolist()
        record = snapshot_record(source_id, model, "wall", round(time.time() * 1000), reason, mapping)
        await (await p.snapshots.send(key=b"%d" % source_id, value=record))
        await save_model(source_id, offset, model, [], [])

    async def apply_delta(offset: int, message: dict[str, Any]) -> None:
        source_id, partition = int(message["source_id"]), int(message["partition"])
        applied = p.segments.get_many(0, [applied_key(source_id, partition)])[0]
        if applied is not None and message["offset"] <= int(applied):
            await save_model(source_id, offset, None, [], [])  # a batch sent again after a crash
            return
        model = stored_model(source_id)
        keys, values = [applied_key(source_id, partition)], [b"%d" % message["offset"]]
        if period_ms:
            keys.append(clock_key(source_id))
            values.append(await event_time_snapshots(source_id, model, int(message["watermark"])))
        population = population_of(source_id)
        try:
            changed = population.apply(PopulationDelta.from_json(message))
            model = update(model, population, p.settings.k_for(source_id))
        except Exception:
            populations.pop(source_id, None)  # reload from segment-state: nothing was written
            raise
        keys += [shape_key(source_id, shape) for shape, _ in changed]
        values += [b"%d" % count for _, count in changed]
        await save_model(source_id, offset, model, keys, values)
        changed_sources.add(source_id)

    async def apply_segment_update(record: Any) -> None:
        """Apply one message of the segment-updates topic (a delta or a snapshot request)."""
        offset, message = record.offset, {}
        try:
            message = orjson.loads(record.value)
            if "snapshot" in message:
                await wall_snapshot(int(message["source_id"]), offset, str(message["snapshot"]))
            else:
                await apply_delta(offset, message)
            return
        except (KafkaError, TimeoutError):
            raise  # the broker: Faust restarts the agent; the next message shows the gap
        except Exception:
            origin = f" (events {message.get('partition')}:{message.get('offset')})" if "partition" in message else ""
            log.exception("could not apply segment update at offset %d%s", offset, origin)
        await save_model(int(message.get("source_id", -1)), offset, None, [], [])

    @p.app.agent(p.segment_updates, name="segments")
    async def segments(stream: Any) -> None:
        async for event in stream.events():
            for message in await updates_positions.admit(event.message):
                await apply_segment_update(message)

    @p.app.timer(p.settings.snapshot_seconds)
    async def request_wall_snapshots() -> None:
        """On the model's owner: ask for a snapshot of every source updated since the last
        (and of every source once, when it becomes the owner: updates applied before a
        crash may not have been settled)."""
        nonlocal owned
        owner = TopicPartition(p.topology.segment_updates, 0) in p.app.assignor.assigned_actives()
        if owner and not owned:
            changed_sources.update(int(k.split(b":")[1]) for k, _ in p.segments.items_with_prefix(0, b"model:"))
        owned = owner
        if not owner:
            return
        for source_id in sorted(changed_sources):
            changed_sources.discard(source_id)
            await p.segment_updates.send(key=b"%d" % source_id, value=snapshot_request(source_id, "periodic"))

    async def count_rejection(message: Any) -> None:
        """Count one dead letter for its source, with the dead-letter position."""
        try:
            source_id = int(orjson.loads(message.value)["source_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            source_id = UNKNOWN_SOURCE
        key = rejected_key(source_id)
        (stored,) = p.journeys.get_many(message.partition, [key])
        count = int(stored) if stored is not None else 0
        position_key, position = dlq_positions.position(message.offset)
        batch = b"dlq:%d:%d" % (message.partition, message.offset)
        await p.journeys.write(message.partition, batch, [key, position_key], [b"%d" % (count + 1), position])

    dlq_positions = Positions(p.settings.broker_url, p.topology.dead_letters, p.journeys, b"~dlq-position")
    p.positions.append(dlq_positions)

    @p.app.agent(p.dead_letters, name="rejections")
    async def rejections(stream: Any) -> None:
        async for event in stream.events():
            for message in await dlq_positions.admit(event.message):
                await count_rejection(message)
