"""The agents: events -> journeys -> population deltas -> the segment model -> outputs.

Every agent works on *runs*: the messages of one partition that arrived together (up to
RUN_MESSAGES within RUN_SECONDS). A run of hundreds of one-event messages costs about what
one message of hundreds of events costs: one read of the state, one batch of numpy work,
one write.

``journeys`` (one stream over the N partitions of ``events``): the events of a run (at
most RUN_EVENTS at a time) are merged into the journeys of their visitors, producing one
:class:`PopulationDelta` (which journey shapes lost and gained visitors) for
``segment-updates``, one record of the changed visitors' shapes for ``visitor-updates``
(SQL), and one ``segment-changes`` record per visitor whose own events moved it to
another segment under the current model.

``segments`` (the single partition of ``segment-updates``): the model's one owner applies
the deltas of a run in order to the population of their source, updates the segment
model once per run (:func:`ampelios.core.model.update`), stores both in one atomic write
of ``segment-state`` and publishes the model in the global table every worker reads. It
also takes the snapshots: on event time, when a delta's events pass a period boundary
(``AMPELIOS_SNAPSHOT_EVENT_HOURS``), and on wall time when asked (every
``AMPELIOS_SNAPSHOT_SECONDS`` by a timer on the owner, and at the end of each replay job),
settling the model first.

``rejections`` (``events-dlq``): counts dead-lettered rows and messages per source.

**Nothing lost, nothing counted twice** (at-least-once delivery, no transactions):

1. Every agent stores the offset of the last message it applied with the state it
   changed, in one changelog record and one RocksDB write (:class:`BatchTable`), and
   applies each message of a partition exactly once, in order, whatever Faust commits
   (:mod:`ampelios.stream.positions`).
2. The journeys agent stores a run's outputs (delta, visitor updates, segment changes)
   in that same write, then sends them (:mod:`ampelios.stream.outbox`): a crash before
   the write leaves nothing behind, a crash after it sends the stored outputs again.
   Dead letters and the snapshots of the owner are sent and acknowledged *before* the
   write; a crash before it applies the messages again.
3. A delta names the last events message of its run (partition, offset); the owner keeps
   the newest offset applied per source and partition, in the same atomic write as the
   model and population, and skips a delta sent again.

A message that cannot be used never stops an agent: it is dead-lettered with its position
and reason, and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from ampelios.core.events import UNKNOWN_SOURCE, EventBatch, Rejection, decode_run, encode_events
from ampelios.core.journeys import JourneyBatch, features_from_shapes, merge_journeys
from ampelios.core.model import SegmentModel, update
from ampelios.core.partitioning import route, visitor_key
from ampelios.core.population import Population, PopulationDelta, Shape
from ampelios.stream.journey_store import read_journeys, store
from ampelios.stream.outbox import OUTBOX_KEY, Outbox
from ampelios.stream.pipeline import Pipeline, counts_key, forwarded_key, rejected_key, snapshot_request
from ampelios.stream.positions import Positions
from ampelios.stream.replay import rejection_record

log = logging.getLogger(__name__)

MAX_SNAPSHOTS_PER_BATCH = 1000  # event-time snapshots one batch may take (a jump in time)
RUN_MESSAGES = 512  # messages an agent takes at most at once (over all its partitions)
RUN_SECONDS = 0.05  # longest wait for more messages before applying those taken
RUN_EVENTS = 50_000  # events applied as one batch at most (bounds a changelog record)
PERIODIC = "periodic"  # the reason of the owner's timed snapshot requests
CONFIRM_SECONDS = 1.0  # how often partitions whose outputs are not known to be sent are checked


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


async def runs(stream: Any) -> AsyncIterator[list[list[Any]]]:
    """What arrived within RUN_SECONDS (at most RUN_MESSAGES messages over all partitions),
    as one run per partition, in offset order: one message of thousands of events, or
    hundreds of one-event messages."""
    async for taken in stream.take_events(RUN_MESSAGES, RUN_SECONDS):
        by_partition: dict[int, list[Any]] = {}
        for event in taken:
            by_partition.setdefault(event.message.partition, []).append(event.message)
        yield [sorted(messages, key=lambda m: m.offset) for messages in by_partition.values()]


async def each_partition(runs: list[list[Any]], apply: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Apply the runs of different partitions concurrently (their state is apart), so
    that their waits for the broker's acknowledgements overlap; the first failure
    cancels the others."""
    async with asyncio.TaskGroup() as group:
        for run in runs:
            group.create_task(apply(run))


def register(p: Pipeline) -> None:
    gap_ms = p.settings.session_gap_ms
    window_ms = p.settings.active_window_ms
    topology = p.topology

    async def dead_letter(source_id: int, rejections: list[Rejection]) -> None:
        """Dead-letter rejections, acknowledged (before the position that says so is stored)."""
        sent = [
            await p.dead_letters.send(key=b"%d" % source_id, value=rejection_record(source_id, r, "worker"))
            for r in rejections
        ]
        await asyncio.gather(*sent)
        p.metrics.rejected.labels(str(source_id)).inc(len(rejections))

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

    def segment_moves(source_id: int, ids: list[int], batch: JourneyBatch, moved: np.ndarray, outbox: Outbox) -> None:
        """Add to ``outbox`` a segment-changes record per visitor (``moved``: active
        before and after) whose own events moved it to another segment under the current
        model."""
        model = p.published_model(source_id)
        if model is None or not len(moved):
            return
        before = model.assign(features_from_shapes(batch.old_shapes[moved]))
        after = model.assign(features_from_shapes(batch.new_shapes[moved]))
        last_event = batch.last_event
        for i, old, new in zip(moved.tolist(), before.tolist(), after.tolist()):
            if old != new:
                record = {
                    "source_id": source_id,
                    "visitorid": ids[i],
                    "from": old,
                    "to": new,
                    "from_label": model.labels[old],
                    "to_label": model.labels[new],
                    "at": int(last_event[i]),
                    "model_version": model.version,
                }
                outbox.add(topology.segment_changes, visitor_key(source_id, ids[i]), orjson.dumps(record))

    def apply_batch(
        source_id: int, partition: int, offset: int, events: EventBatch, outbox: Outbox
    ) -> dict[bytes, bytes | None]:
        """Merge ``events`` into journeys; return what to store and add the outputs to
        ``outbox``. Reads the table, writes nothing."""
        writes: dict[bytes, bytes | None] = {}
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
        updated = [visitors[changed], batch.new_shapes[changed], batch.last_event[changed], batch.active[changed]]
        if cutoff is not None:
            for i in changed.tolist():  # the activity index follows each changed journey
                if batch.was_active[i]:
                    writes[activity_key(source_id, int(batch.old_last_event[i]), ids[i])] = None
                if batch.active[i]:
                    writes[activity_key(source_id, int(batch.last_event[i]), ids[i])] = b""
            expiry = expire(source_id, partition, cutoff, set(ids), writes)
            if expiry is not None:
                expired_ids, expired = expiry
                left.append(expired.old_shapes)
                extra = [np.array(expired_ids, dtype=np.int64), expired.old_shapes, expired.last_event, expired.active]
                updated = [np.concatenate([a, b]) for a, b in zip(updated, extra)]
        (stored,) = p.journeys.get_many(partition, [counts_key(source_id)])
        events_seen, visitors_seen = (int(x) for x in stored.split(b",")) if stored is not None else (0, 0)
        added = int(batch.added.sum())
        events_seen += added
        p.metrics.events.labels(str(source_id)).inc(added)
        visitors_seen += int((~batch.existed & batch.changed).sum())
        writes[counts_key(source_id)] = b"%d,%d" % (events_seen, visitors_seen)

        delta = PopulationDelta.of(np.concatenate(left), batch.new_shapes[changed[batch.active[changed]]])
        if len(delta):
            value = {"source_id": source_id, "partition": partition, "offset": offset, "watermark": watermark}
            value.update(delta.to_json())
            outbox.add(topology.segment_updates, b"%d" % source_id, orjson.dumps(value), 0)
        segment_moves(source_id, ids, batch, changed[batch.was_active[changed] & batch.active[changed]], outbox)
        visitor_ids, shapes, last_event, active = updated
        if len(visitor_ids):
            views, carts, buys, sessions = np.ascontiguousarray(shapes.T)
            update = {
                "source_id": source_id,
                "visitorid": visitor_ids,
                "views": views,
                "addtocarts": carts,
                "transactions": buys,
                "sessions": sessions,
                "last_event": last_event,
                "active": active,
            }
            value = orjson.dumps(update, option=orjson.OPT_SERIALIZE_NUMPY)
            outbox.add(topology.visitor_updates, None, value, partition)
        return writes

    # Events partitions whose stored outbox this worker knows to be sent: the outbox of its
    # own last write, or the stored one it sent again after getting the partition (before
    # the partition's next run, or within CONFIRM_SECONDS when that send failed). A
    # partition leaves the set when it is revoked or its send fails, and a worker starts
    # with none, so the outbox stored by a crashed or previous holder is always sent
    # before the partition's next message is applied, and before its position is
    # committed. Each partition's lock keeps the resend and the agent's runs apart.
    confirmed: set[int] = set()
    locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def confirm(partition: int) -> None:
        """Send the outbox stored for ``partition`` unless it is known to be sent (hold
        the partition's lock)."""
        if partition in confirmed:
            return
        (stored,) = p.journeys.get_many(partition, [OUTBOX_KEY])
        if stored is not None:
            await Outbox.from_bytes(stored).send(p.app.producer)
        confirmed.add(partition)

    async def resend_outboxes(assigned: set[TopicPartition]) -> None:
        """After an assignment, before the worker serves again: confirm every events
        partition now, not only when its next message arrives (there may be none)."""
        for partition in sorted(tp.partition for tp in assigned if tp.topic == topology.events):
            async with locks[partition]:
                await confirm(partition)

    @p.app.timer(CONFIRM_SECONDS)
    async def confirm_held_partitions() -> None:
        """Confirm again what is held and not known to be sent (the send after the
        assignment or after a run failed) rather than wait for a next message that may
        never come. A failure is tried again at the next tick."""
        for partition in p.local_partitions():
            if partition in confirmed:
                continue
            async with locks[partition]:
                if not p.ready() or partition not in p.local_partitions():
                    return  # a rebalance: the next assignment decides
                try:
                    await confirm(partition)
                except Exception as exc:
                    log.warning("could not send the stored outputs of partition %d yet: %r", partition, exc)

    async def forget_outboxes(revoked: set[TopicPartition]) -> None:
        """Before a rebalance: revoked partitions may be written by another worker meanwhile."""
        for partition in sorted(tp.partition for tp in revoked if tp.topic == topology.events):
            async with locks[partition]:  # a run under way finishes first
                confirmed.discard(partition)

    p.on_assigned.append(resend_outboxes)
    p.on_revoked.append(forget_outboxes)

    async def apply_group(partition: int, messages: list[Any], events: EventBatch) -> None:
        """Apply the events of consecutive messages of a partition as one batch per
        source: state, position and outbox in one write, then the outbox sent."""
        started = time.perf_counter()
        offset = messages[-1].offset
        writes: dict[bytes, bytes | None] = dict([positions.position(offset)])
        outbox = Outbox()
        routed = route(events, partition, topology.partitions, p.settings.replay_batch_events)
        if routed.forwarded:
            forward(partition, routed.forwarded, writes, outbox)
            events = routed.own
        sources = np.unique(events.source_id).tolist()
        for source in sources:
            of_source = events if len(sources) == 1 else events.take(events.source_id == source)
            try:
                writes.update(apply_batch(source, partition, offset, of_source, outbox))
            except Exception as exc:  # a message that breaks the code must not stop the stream
                where = f"{topology.events}:{partition}:{messages[0].offset}..{offset}"
                log.exception("could not apply %s (source %d)", where, source)
                await dead_letter(source, [Rejection(where, f"internal error: {exc!r}")])
        writes[OUTBOX_KEY] = outbox.to_bytes()
        confirmed.discard(partition)
        await store_writes(partition, offset, writes)
        await outbox.send(p.app.producer)
        confirmed.add(partition)
        p.metrics.batch_seconds.labels("journeys").observe(time.perf_counter() - started)

    def forward(
        partition: int, messages: list[tuple[int, EventBatch]], writes: dict[bytes, bytes | None], outbox: Outbox
    ) -> None:
        """Add to ``outbox`` the events of visitors other partitions own, one message per
        owner and source, and count them per source in ``writes``."""
        counts: dict[int, int] = {}
        for owner, events in messages:
            outbox.add(topology.events, None, encode_events(events), owner)
            source = int(events.source_id[0])
            counts[source] = counts.get(source, 0) + len(events)
        stored = p.journeys.get_many(partition, [forwarded_key(s) for s in counts])
        for (source, n), old in zip(counts.items(), stored):
            writes[forwarded_key(source)] = b"%d" % (int(old or 0) + n)
            p.metrics.forwarded.labels(str(source)).inc(n)

    async def store_writes(partition: int, offset: int, writes: dict[bytes, bytes | None]) -> None:
        """One group's state, position included: one changelog record, one RocksDB write."""
        await p.journeys.write(partition, b"%d:%d" % (partition, offset), list(writes), list(writes.values()))

    period_ms = round(p.settings.snapshot_event_hours * 3_600_000)

    async def apply_events(partition: int, messages: list[Any]) -> None:
        """Apply messages of the events topic (one partition, in order): dead-letter what
        cannot be used, then apply the rest in groups of at most RUN_EVENTS events; a
        message whose events pass into a later event-time snapshot period starts a new
        group (so that a replay's daily snapshots see the model as it was at the end of
        each day, to within a message)."""
        wheres = [f"{m.topic}:{partition}:{m.offset}" for m in messages]
        run = decode_run([m.value for m in messages], wheres, p.event_codes)
        by_source: dict[int, list[Rejection]] = {}
        for source, rejection in run.rejections:
            by_source.setdefault(source, []).append(rejection)
        for source, rejections in by_source.items():
            await dead_letter(source, rejections)
        for start, end in run.groups(len(messages), RUN_EVENTS, period_ms):
            rows = slice(*np.searchsorted(run.message, [start, end]))
            await apply_group(partition, messages[start:end], run.events.take(rows))

    positions = Positions(p.settings.broker_url, topology.events, p.journeys, b"~position", confirmed.__contains__)
    p.positions.append(positions)

    @p.app.agent(p.events, name="journeys")
    async def journeys(stream: Any) -> None:
        async for taken in runs(stream):
            await each_partition(taken, apply_run)

    async def apply_run(messages: list[Any]) -> None:
        partition = messages[0].partition
        async with locks[partition]:
            await confirm(partition)
            await apply_events(partition, await positions.admit(messages))

    populations: dict[int, Population] = {}  # the owner's copy of segment-state's shapes
    assignments = 0  # assignments seen; the copy is read again after each (see segments)
    changed_sources: set[int] = set()  # sources updated since their last wall snapshot
    snapshotted: dict[int, int] = {}  # model version of each source's last wall snapshot here
    owned = False  # this worker owns the model (since its last check)

    async def count_assignment(assigned: set[TopicPartition]) -> None:
        nonlocal assignments
        assignments += 1

    p.on_assigned.append(count_assignment)

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

    updates_positions = Positions(p.settings.broker_url, topology.segment_updates, p.segments, b"position")
    p.positions.append(updates_positions)

    class SegmentRun:
        """What a run of segment-updates messages changes, written at its end at once:
        staged ``writes`` of segment-state, the current ``models`` (``None``: none yet)
        and the sources whose population changed since their model was updated."""

        def __init__(self) -> None:
            self.writes: dict[bytes, bytes] = {}
            self.models: dict[int, SegmentModel | None] = {}
            self.stale: set[int] = set()

        def get(self, key: bytes) -> bytes | None:
            return self.writes[key] if key in self.writes else p.segments.get_many(0, [key])[0]

        def model(self, source_id: int) -> SegmentModel | None:
            """The model of a source, updated with every delta applied so far."""
            if source_id not in self.models:
                stored = self.get(model_key(source_id))
                self.models[source_id] = SegmentModel.from_bytes(stored) if stored is not None else None
            if source_id in self.stale:
                self.stale.discard(source_id)
                try:
                    model = update(self.models[source_id], population_of(source_id), p.settings.k_for(source_id))
                except Exception:  # the model stays as it was; the population is kept
                    log.exception("could not update the model of source %d", source_id)
                else:
                    self.set_model(source_id, model)
            return self.models[source_id]

        def set_model(self, source_id: int, model: SegmentModel) -> None:
            self.models[source_id] = model
            self.writes[model_key(source_id)] = model.to_bytes()

    async def event_time_snapshots(run: SegmentRun, source_id: int, watermark: int) -> None:
        """Snapshot the model at every period boundary the events passed; stage the next
        boundary."""
        stored = run.get(clock_key(source_id))
        boundary = int(stored) if stored is not None else (watermark // period_ms + 1) * period_ms
        taken = 0
        while watermark >= boundary and (model := run.model(source_id)) is not None:
            if taken < MAX_SNAPSHOTS_PER_BATCH:
                record = snapshot_record(source_id, model, "event", boundary, "event time")
                await p.snapshots.send(key=b"%d" % source_id, value=record)
            taken += 1
            boundary += period_ms
        if taken > MAX_SNAPSHOTS_PER_BATCH:
            log.warning("event time of source %d jumped %d periods; kept %d", source_id, taken, MAX_SNAPSHOTS_PER_BATCH)
        run.writes[clock_key(source_id)] = b"%d" % boundary

    async def wall_snapshot(run: SegmentRun, source_id: int, reason: str) -> None:
        """Settle the model on the population, then snapshot it with the shape mapping. A
        periodic request is dropped when this worker's last snapshot of the source has the
        current model: another one (at the end of a replay, say) came in between."""
        model = run.model(source_id)
        if model is None or (reason == PERIODIC and snapshotted.get(source_id) == model.version):
            return
        population = population_of(source_id)
        model = update(model, population, p.settings.k_for(source_id), settle=True)
        shapes, _ = population.arrays()
        mapping = np.column_stack([shapes, model.assign(features_from_shapes(shapes))]).tolist()
        record = snapshot_record(source_id, model, "wall", round(time.time() * 1000), reason, mapping)
        await (await p.snapshots.send(key=b"%d" % source_id, value=record))
        run.set_model(source_id, model)
        snapshotted[source_id] = model.version

    async def apply_delta(run: SegmentRun, message: dict[str, Any]) -> None:
        source_id, partition = int(message["source_id"]), int(message["partition"])
        applied = run.get(applied_key(source_id, partition))
        if applied is not None and message["offset"] <= int(applied):
            return  # a delta sent again (after a crash or a rebalance)
        if period_ms:
            await event_time_snapshots(run, source_id, int(message["watermark"]))
        changed = population_of(source_id).apply(PopulationDelta.from_json(message))  # all or nothing
        run.writes.update((shape_key(source_id, shape), b"%d" % count) for shape, count in changed)
        run.writes[applied_key(source_id, partition)] = b"%d" % message["offset"]
        run.stale.add(source_id)
        changed_sources.add(source_id)

    async def apply_segment_updates(records: list[Any]) -> None:
        """Apply messages of the segment-updates topic (deltas and snapshot requests) in
        order; update each changed source's model once; store all of it in one write."""
        if not records:
            return
        started = time.perf_counter()
        run = SegmentRun()
        for record in records:
            message: dict[str, Any] = {}
            try:
                message = orjson.loads(record.value)
                if "snapshot" in message:
                    await wall_snapshot(run, int(message["source_id"]), str(message["snapshot"]))
                else:
                    await apply_delta(run, message)
            except (KafkaError, TimeoutError):
                raise  # the broker: Faust restarts the agent; the next message shows the gap
            except Exception:
                origin = f"events {message.get('partition')}:{message.get('offset')}" if "partition" in message else "-"
                log.exception("could not apply segment update at offset %d (%s)", record.offset, origin)
        for source_id in sorted(run.stale):
            run.model(source_id)
        offset = records[-1].offset
        run.writes.update([updates_positions.position(offset)])
        await p.segments.write(0, b"%d" % offset, list(run.writes), list(run.writes.values()))
        for source_id, model in run.models.items():
            if model is not None and model_key(source_id) in run.writes:
                await p.published.publish(b"%d" % source_id, run.writes[model_key(source_id)])
        p.metrics.batch_seconds.labels("segments").observe(time.perf_counter() - started)

    @p.app.agent(p.segment_updates, name="segments")
    async def segments(stream: Any) -> None:
        """The copy of the populations is dropped when a run fails (its changes were not
        stored) and after an assignment (another worker may have owned the model since)."""
        seen = assignments
        async for taken in runs(stream):
            if seen != assignments:
                seen = assignments
                populations.clear()
            for records in taken:  # one partition
                try:
                    await apply_segment_updates(await updates_positions.admit(records))
                except BaseException:
                    populations.clear()
                    raise

    @p.app.timer(p.settings.snapshot_seconds)
    async def request_wall_snapshots() -> None:
        """On the model's owner: ask for a snapshot of every source updated since the last
        (and of every source once, when it becomes the owner: updates applied before a
        crash may not have been settled)."""
        nonlocal owned
        owner = TopicPartition(topology.segment_updates, 0) in p.app.assignor.assigned_actives()
        if owner and not owned:
            changed_sources.update(int(k.split(b":")[1]) for k, _ in p.segments.items_with_prefix(0, b"model:"))
        owned = owner
        if not owner:
            return
        for source_id in sorted(changed_sources):
            changed_sources.discard(source_id)
            await p.segment_updates.send(key=b"%d" % source_id, value=snapshot_request(source_id, PERIODIC))

    async def count_rejections(partition: int, messages: list[Any]) -> None:
        """Count dead letters per source, with the dead-letter position: one write."""
        counts: dict[int, int] = {}
        for message in messages:
            try:
                source_id = int(orjson.loads(message.value)["source_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                source_id = UNKNOWN_SOURCE
            counts[source_id] = counts.get(source_id, 0) + 1
        keys = [rejected_key(s) for s in counts]
        stored = p.journeys.get_many(partition, keys)
        values = [b"%d" % (int(old or 0) + n) for old, n in zip(stored, counts.values())]
        offset = messages[-1].offset
        position_key, position = dlq_positions.position(offset)
        batch = b"dlq:%d:%d" % (partition, offset)
        await p.journeys.write(partition, batch, [*keys, position_key], [*values, position])

    dlq_positions = Positions(p.settings.broker_url, topology.dead_letters, p.journeys, b"~dlq-position")
    p.positions.append(dlq_positions)

    @p.app.agent(p.dead_letters, name="rejections")
    async def rejections(stream: Any) -> None:
        async for taken in runs(stream):
            await each_partition(taken, count_run)

    async def count_run(messages: list[Any]) -> None:
        admitted = await dlq_positions.admit(messages)
        if admitted:
            await count_rejections(admitted[0].partition, admitted)
