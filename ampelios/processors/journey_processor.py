"""Events -> journeys: what a run of ``events`` messages of one partition changes.

:meth:`JourneyProcessor.steps` is given the messages of one partition to apply, in order
(by :class:`~ampelios.engine.exactly_once.ExactlyOnce`, which stores and sends what it
yields). It dead-letters what cannot be used, then yields one :class:`Step` per group of
at most RUN_EVENTS events (a message whose events pass into a later event-time snapshot
period starts a new group, so that a replay's daily snapshots see the model as it was at
the end of each day, to within a message). A step holds:

- the events of visitors another partition owns, to forward (``core/partitioning.py``),
  and those that links moved to visitors of other partitions (``core/identities.py``);
- the other events merged into their visitors' journeys (``core/journeys.py``), the
  activity index and the partition's counts, as table writes;
- its outputs: one :class:`PopulationDelta` (which journey shapes lost and gained
  visitors) with its :class:`~ampelios.core.periods.PeriodDelta` (the same for each
  event-time period) for the model's owner on ``segment-updates``, one record of the changed
  visitors' shapes for ``visitor-updates`` (SQL), and one ``segment-changes`` record per
  visitor whose own events moved it to another segment under the current model.

Dead letters are sent and acknowledged *before* the step is stored; a crash in between
applies the messages again. A delta names the last events message of its step
(partition, offset), so that the owner can skip one sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import numpy as np
import orjson

from ampelios.core.events import EventBatch, Rejection, decode_run
from ampelios.core.identities import MOVED_KEY, follow_links, has_links, link_targets
from ampelios.core.journeys import (
    JourneyBatch,
    JourneyState,
    features_from_shapes,
    merge_journeys,
    merged_value,
    summarized,
)
from ampelios.core.partitioning import route, visitor_key
from ampelios.core.periods import batch_delta
from ampelios.core.population import PopulationDelta
from ampelios.engine.exactly_once import Step
from ampelios.engine.outbox import Outbox
from ampelios.ingest.replay import rejection_record
from ampelios.processors.journey_store import drop_chunks, read_journeys, store
from ampelios.runtime.pipeline import Pipeline, counts_key, ignored_key, late_key

log = logging.getLogger(__name__)

RUN_EVENTS = 50_000  # events applied as one step at most (bounds a changelog record)

Writes = dict[bytes, bytes | None]


def activity_key(source_id: int, last_event: int, visitor: int) -> bytes:
    """journeys key indexing active journeys by latest event, to find those that expire."""
    return b"~active:%d:%013d:%d" % (source_id, last_event, visitor)


def inactivity_key(source_id: int, last_event: int, visitor: int) -> bytes:
    """journeys key indexing inactive journeys by latest event, to find those to forget."""
    return b"~inactive:%d:%013d:%d" % (source_id, last_event, visitor)


class JourneyProcessor:
    """The journeys of the partitions of ``events`` this worker holds (see the module
    docstring); reads the ``journeys`` table, writes nothing itself."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.gap_ms = p.settings.session_gap_ms
        self.window_ms = p.settings.active_window_ms
        self.lateness_ms = p.settings.lateness_ms
        self.period_ms = round(p.settings.snapshot_event_hours * 3_600_000)

    async def steps(self, partition: int, messages: list[Any]) -> AsyncIterator[Step]:
        """The steps of ``messages`` of ``partition`` (in order, none applied yet)."""
        p = self.p
        wheres = [f"{m.topic}:{partition}:{m.offset}" for m in messages]
        run = decode_run([m.value for m in messages], wheres, p.event_codes)
        by_source: dict[int, list[Rejection]] = {}
        for source, rejection in run.rejections:
            by_source.setdefault(source, []).append(rejection)
        for source, rejections in by_source.items():
            await self.dead_letter(source, rejections)
        moved = [i for i, m in enumerate(messages) if m.key == MOVED_KEY]
        for start, end in run.groups(len(messages), RUN_EVENTS, self.period_ms):
            started = time.perf_counter()
            rows = slice(*np.searchsorted(run.message, [start, end]))
            events = run.events.take(rows)
            moved_to = events.take(np.isin(run.message[rows], moved)) if moved else None
            step = await self.step(partition, messages[start:end], events, moved_to)
            if len(run.ignored_message):
                step.writes.update(self.ignored(partition, run.ignored_in(start, end)))
            yield step
            p.metrics.batch_seconds.labels("journeys").observe(time.perf_counter() - started)

    def ignored(self, partition: int, counts: dict[int, int]) -> Writes:
        """The partition's counts of ignored events (AMPELIOS_EVENT_MAP) plus ``counts``."""
        keys = [ignored_key(source) for source in counts]
        stored = self.p.journeys.get_many(partition, keys)
        return {key: b"%d" % (int(old or 0) + n) for key, old, n in zip(keys, stored, counts.values(), strict=True)}

    async def dead_letter(self, source_id: int, rejections: list[Rejection]) -> None:
        """Dead-letter rejections, acknowledged (before the position that says so is stored)."""
        p = self.p
        sent = [
            await p.dead_letters.send(key=b"%d" % source_id, value=rejection_record(source_id, r, "worker"))
            for r in rejections
        ]
        await asyncio.gather(*sent)
        p.metrics.rejected.labels(str(source_id)).inc(len(rejections))

    async def step(
        self, partition: int, messages: list[Any], events: EventBatch, moved: EventBatch | None = None
    ) -> Step:
        """The step of consecutive ``messages`` of a partition with their decoded
        ``events`` (``moved``: those of them that links moved here): those of visitors
        this partition owns merged per source, the others to forward."""
        topology = self.p.topology
        step = Step(messages[-1].offset)
        routed = route(events, partition, topology.partitions, self.p.settings.replay_batch_events)
        if routed.forwarded:
            step.forward = routed.forwarded
            events = routed.own
        sources = np.unique(events.source_id).tolist()
        for source in sources:
            of_source = events if len(sources) == 1 else events.take(events.source_id == source)
            moved_to = () if moved is None else set(moved.visitorid[moved.source_id == source].tolist())
            try:
                step.writes.update(self.merge(source, partition, of_source, step, moved_to))
            except Exception as exc:  # a message that breaks the code must not stop the stream
                where = f"{topology.events}:{partition}:{messages[0].offset}..{step.last}"
                log.exception("could not apply %s (source %d)", where, source)
                await self.dead_letter(source, [Rejection(where, f"internal error: {exc!r}")])
        return step

    def merge(
        self,
        source_id: int,
        partition: int,
        events: EventBatch,
        step: Step,
        moved_to: Collection[int] = (),
    ) -> Writes:
        """Merge ``events`` (one source, visitors of this partition) into their journeys;
        return what to store, add the outputs to the step's outbox and the events that now
        belong to visitors of other partitions (links, :mod:`ampelios.core.identities`;
        ``moved_to``: the visitors that moved events arrived for) to its ``moved``."""
        p, window_ms, outbox = self.p, self.window_ms, step.outbox
        writes: Writes = {}
        visitors, owner = np.unique(events.visitorid, return_inverse=True)
        ids = visitors.tolist()
        keys = [visitor_key(source_id, v) for v in ids]
        old = read_journeys(p.journeys, partition, keys)
        leaving = None
        merged = np.empty(0, dtype=np.int64)  # visitors linked to others: their rows are deleted
        stored = {v: value for v, value in zip(ids, old) if value is not None}
        if has_links(events, stored):
            targets = list(link_targets(events, stored))
            found = read_journeys(p.journeys, partition, [visitor_key(source_id, v) for v in targets])
            stored.update((v, value) for v, value in zip(targets, found) if value is not None)
            followed = follow_links(events, stored, source_id, moved_to)
            routed = route(followed.moved, partition, p.topology.partitions, p.settings.replay_batch_events)
            step.moved.extend(routed.forwarded)  # to the partitions of the visitors linked to
            self.refuse(source_id, partition, step.last, followed.refused, outbox)
            events = EventBatch.concat([followed.kept, routed.own])
            visitors, owner = np.unique(np.concatenate([events.visitorid, followed.gone]), return_inverse=True)
            owner = owner[: len(events)]
            ids = visitors.tolist()
            keys = [visitor_key(source_id, v) for v in ids]
            old = read_journeys(p.journeys, partition, keys)
            leaving = np.isin(visitors, followed.gone)  # their journeys' events went with them
            for i in np.flatnonzero(leaving).tolist():
                drop_chunks(writes, keys[i], old[i])
            writes.update({visitor_key(source_id, a): merged_value(u) for a, u in followed.links.items()})
            # Whether its journey was stored before the link or came with it, a linked
            # visitor has no row of its own: its events are its person's.
            merged = np.array(sorted({*followed.gone.tolist(), *followed.links}), dtype=np.int64)
        watermark = int(events.timestamp.max()) if len(events) else 0  # none left: all moved by links
        cutoff = None
        if self.lateness_ms is not None:
            events, owner, watermark = self.on_time(source_id, partition, events, owner, writes)
        if window_ms is not None:
            cutoff = watermark - window_ms
        batch = merge_journeys(old, events, owner, self.gap_ms, window_ms, cutoff, leaving)
        changed = np.flatnonzero(batch.changed)
        # Under a window a journey keeps the events of 2D up to its latest: all that an
        # event not too late (on_time) can still count with. Without one, with a
        # lateness, it keeps its sessions from the last period boundary that far back as
        # events and the older ones as summaries (no event before it is applied any more).
        first, summaries = batch.first_kept(2 * window_ms if window_ms is not None else None), None
        if window_ms is None and self.lateness_ms is not None:
            cut = watermark - self.lateness_ms
            if self.period_ms:  # on a period boundary: no period is split between summaries and events
                cut -= cut % self.period_ms
            first, summaries = batch.summarize(cut, self.gap_ms)
        rows = changed if leaving is None else changed[~leaving[changed]]  # linked ones: deleted, not stored
        store(writes, keys, old, batch, rows, first, summaries)
        left = [batch.old_shapes[changed[batch.was_active[changed]]]]
        updated = [visitors[rows], batch.new_shapes[rows], batch.last_event[rows], batch.active[rows]]
        expiry, forgotten = None, (0, 0)
        if cutoff is not None and window_ms is not None:
            self.index(source_id, ids, batch, changed, leaving, writes)
            expiry = self.expire(source_id, partition, cutoff, set(ids), writes)
            if expiry is not None:
                expired_ids, expired = expiry
                left.append(expired.old_shapes)
                extra = [np.array(expired_ids, dtype=np.int64), expired.old_shapes, expired.last_event, expired.active]
                updated = [np.concatenate([a, b]) for a, b in zip(updated, extra)]
            forgotten = self.forget(source_id, partition, watermark - 2 * window_ms, set(ids), writes)
        (stored,) = p.journeys.get_many(partition, [counts_key(source_id)])
        events_seen, visitors_seen = (int(x) for x in stored.split(b",")) if stored is not None else (0, 0)
        after = batch.summarized[0] if summaries is None else summarized(summaries)[0]
        kept = batch.starts[1:] - first + after[:, :3].sum(axis=1)  # events held by each journey
        before = np.diff(batch.starts) - batch.added + batch.old_summarized[0][:, :3].sum(axis=1)
        events_seen += int((kept - before)[changed].sum()) - forgotten[1]
        if leaving is not None and (lost := int(batch.old_summarized[0][leaving, :3].sum())):
            self.add_late(source_id, partition, lost, writes)  # summaries are too old to move with a link
        p.metrics.events.labels(str(source_id)).inc(int(batch.added[batch.added > 0].sum()))  # not those moved
        visitors_seen += int((~batch.existed & batch.changed).sum()) - forgotten[0]
        if leaving is not None:
            visitors_seen -= int((batch.existed & leaving).sum())
        writes[counts_key(source_id)] = b"%d,%d" % (events_seen, visitors_seen)

        topology = p.topology
        delta = PopulationDelta.of(np.concatenate(left), batch.new_shapes[changed[batch.active[changed]]])
        periods = batch_delta(batch, self.gap_ms, window_ms, self.period_ms) if self.period_ms else None
        if len(delta) or periods:
            value = {"source_id": source_id, "partition": partition, "offset": step.last, "watermark": watermark}
            value.update(delta.to_json())
            if periods:
                value.update(periods.to_json())
            outbox.add(topology.segment_updates, b"%d" % source_id, orjson.dumps(value), 0)
        moved = changed[batch.was_active[changed] & batch.active[changed]]
        exits = changed[batch.was_active[changed] & ~batch.active[changed]]  # linked, or out of the window
        self.segment_moves(source_id, ids, batch, moved, exits, outbox)
        if expiry is not None:  # nothing in the window: they leave their segments
            self.segment_moves(source_id, expiry[0], expiry[1], changed[:0], np.arange(len(expiry[0])), outbox)
        visitor_ids, shapes, last_event, active = updated
        if len(visitor_ids) or len(merged):
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
                "merged": merged,
            }
            value = orjson.dumps(update, option=orjson.OPT_SERIALIZE_NUMPY)
            outbox.add(topology.visitor_updates, None, value, partition)
        return writes

    def refuse(self, source_id: int, partition: int, offset: int, refused: EventBatch, outbox: Outbox) -> None:
        """Dead-letter (in ``outbox``) each event moved here by a link, for a visitor that
        is itself linked: links are one level deep."""
        if not len(refused):
            return
        where = f"{self.p.topology.events}:{partition}:{offset}"
        for visitor in refused.visitorid.tolist():
            reason = f"moved by a link to visitor {visitor}, itself linked to another: links are one level deep"
            rejection = rejection_record(source_id, Rejection(where, reason), "worker")
            outbox.add(self.p.topology.dead_letters, b"%d" % source_id, rejection)
        self.p.metrics.rejected.labels(str(source_id)).inc(len(refused))

    def on_time(
        self, source_id: int, partition: int, events: EventBatch, owner: np.ndarray, writes: Writes
    ) -> tuple[EventBatch, np.ndarray, int]:
        """With a lateness (a window, or ``AMPELIOS_LATENESS_DAYS``): the events (and
        their ``owner`` indices) that are not too late, and the partition's event time
        after them (stored in ``writes``). An event ``lateness_ms`` or more older than the
        partition's event time before the step is too late: counted (:func:`late_key`),
        not applied, since what it would change is no longer all held as events."""
        assert self.lateness_ms is not None
        clock = b"~watermark:%d" % source_id
        (stored,) = self.p.journeys.get_many(partition, [clock])
        before = int(stored or 0)
        late = events.timestamp <= before - self.lateness_ms
        if late.any():
            self.add_late(source_id, partition, int(late.sum()), writes)
            events, owner = events.take(~late), owner[~late]
        watermark = max(before, int(events.timestamp.max()) if len(events) else 0)
        writes[clock] = b"%d" % watermark
        return events, owner, watermark

    def add_late(self, source_id: int, partition: int, n: int, writes: Writes) -> None:
        """Count ``n`` more late events (:func:`late_key`) in ``writes``."""
        key = late_key(source_id)
        counted = writes[key] if key in writes else self.p.journeys.get_many(partition, [key])[0]
        writes[key] = b"%d" % (int(counted or 0) + n)

    def index(
        self,
        source_id: int,
        ids: list[int],
        batch: JourneyBatch,
        changed: np.ndarray,
        leaving: np.ndarray | None,
        writes: Writes,
    ) -> None:
        """Keep the indexes of the changed journeys by latest event: ``~active:`` (those
        that expire) and ``~inactive:`` (those kept until :meth:`forget`)."""
        for i in changed.tolist():
            if batch.existed[i]:
                was = activity_key if batch.was_active[i] else inactivity_key
                writes[was(source_id, int(batch.old_last_event[i]), ids[i])] = None
            if batch.active[i]:
                writes[activity_key(source_id, int(batch.last_event[i]), ids[i])] = b""
            elif leaving is None or not leaving[i]:
                writes[inactivity_key(source_id, int(batch.last_event[i]), ids[i])] = b""

    def forget(
        self, source_id: int, partition: int, horizon: int, in_batch: set[int], writes: Writes
    ) -> tuple[int, int]:
        """Delete (in ``writes``) the inactive journeys whose latest event is at or before
        ``horizon`` (twice the window behind the partition's event time: no event that is
        not too late can reach their window any more); return how many, and their events."""
        prefix = b"~inactive:%d:" % source_id
        keys: list[bytes] = []
        for key, _ in self.p.journeys.items_between(partition, prefix, prefix + b"%013d:" % (horizon + 1)):
            visitor = int(key.rsplit(b":", 1)[1])
            if visitor not in in_batch:  # those follow their new events
                writes[key] = None
                keys.append(visitor_key(source_id, visitor))
        journeys = events = 0
        for key, value in zip(keys, read_journeys(self.p.journeys, partition, keys)):
            if value is not None:
                writes[key] = None
                drop_chunks(writes, key, value)
                journeys, events = journeys + 1, events + len(JourneyState.from_bytes(value).events)
        return journeys, events

    def expire(
        self, source_id: int, partition: int, cutoff: int, in_batch: set[int], writes: Writes
    ) -> tuple[list[int], JourneyBatch] | None:
        """Journeys of the partition whose latest event is at or before ``cutoff`` leave
        the population: their stored flag and the indexes are updated in ``writes``;
        return their visitors and their (inactive) journeys."""
        journeys = self.p.journeys
        prefix = b"~active:%d:" % source_id
        visitors: list[int] = []
        for key, _ in journeys.items_between(partition, prefix, prefix + b"%013d:" % (cutoff + 1)):
            visitor = int(key.rsplit(b":", 1)[1])
            if visitor not in in_batch:  # those follow their new events
                writes[key] = None
                visitors.append(visitor)
        keys = [visitor_key(source_id, v) for v in visitors]
        old = read_journeys(journeys, partition, keys)
        known = [i for i, value in enumerate(old) if value is not None]
        if not known:
            return None
        none = np.empty(0, dtype=np.int64)
        batch = merge_journeys([old[i] for i in known], EventBatch.empty(), none, self.gap_ms, self.window_ms, cutoff)
        store(writes, [keys[i] for i in known], [old[i] for i in known], batch, np.arange(len(known)))
        for i, last in zip(known, batch.last_event.tolist()):
            writes[inactivity_key(source_id, last, visitors[i])] = b""
        return [visitors[i] for i in known], batch

    def segment_moves(
        self, source_id: int, ids: list[int], batch: JourneyBatch, moved: np.ndarray, exits: np.ndarray, outbox: Outbox
    ) -> None:
        """Add to ``outbox`` a segment-changes record per visitor (``moved``: active
        before and after) whose own events moved it to another segment under the current
        model, and one per visitor of ``exits`` (active before, its events gone to the
        person it was linked to) with no segment after (``to`` null)."""
        model = self.p.published_model(source_id)
        if model is None or not (len(moved) or len(exits)):
            return
        before = model.assign(features_from_shapes(batch.old_shapes[np.concatenate([moved, exits])])).tolist()
        after: list[int | None] = [*model.assign(features_from_shapes(batch.new_shapes[moved])).tolist()]
        after += [None] * len(exits)
        last_event = np.maximum(batch.last_event, batch.old_last_event)  # an exit's: its last event
        for i, old, new in zip([*moved.tolist(), *exits.tolist()], before, after, strict=True):
            if old != new:
                record = {
                    "source_id": source_id,
                    "visitorid": ids[i],
                    "from": old,
                    "to": new,
                    "from_label": model.labels[old],
                    "to_label": model.labels[new] if new is not None else None,
                    "at": int(last_event[i]),
                    "model_version": model.version,
                    "lineage": model.lineage,
                }
                outbox.add(self.p.topology.segment_changes, visitor_key(source_id, ids[i]), orjson.dumps(record))
