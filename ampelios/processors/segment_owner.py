"""Population deltas -> the segment model, on the model's one owner.

``segment-updates`` has one partition, so one worker at a time applies its messages: the
population deltas of the journeys processors and snapshot requests. :class:`SegmentOwner`
applies a run of them in order to the population of their source, updates each changed
source's segment model once per run (:func:`ampelios.core.model.update`), and hands the
whole run to its :class:`~ampelios.engine.exactly_once.ExactlyOnce` as one step (model,
population, applied offsets and position in one write of ``segment-state``); once that is
stored it publishes the models in the global table every worker reads.

It also takes the snapshots: on event time, when a delta's events pass a period boundary
(``AMPELIOS_SNAPSHOT_EVENT_HOURS``), and on wall time when asked (every
``AMPELIOS_SNAPSHOT_SECONDS`` by :meth:`SegmentOwner.request_snapshots`, and at the end of
each replay job), settling the model first. Snapshots are sent and acknowledged *before*
the step is stored; a crash in between applies the messages again.

A delta names the last events message of its step (partition, offset); the owner keeps
the newest offset applied per source and partition in the same write, and skips a delta
sent again (after a crash or a rebalance of the journeys processors).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from ampelios.core.drift import HISTORY_PERIODS, WARMUP_PERIODS, source_alerts
from ampelios.core.journeys import features_from_shapes
from ampelios.core.k_choice import choose_k, evaluate
from ampelios.core.model import SegmentModel, update
from ampelios.core.periods import PeriodChanges, PeriodDelta, PeriodPopulations, PeriodTables
from ampelios.core.population import Population, PopulationDelta, Shape
from ampelios.engine.batch_table import BatchTable
from ampelios.engine.exactly_once import ExactlyOnce, Step
from ampelios.engine.outbox import Outbox
from ampelios.runtime.pipeline import Pipeline, snapshot_request

log = logging.getLogger(__name__)

MAX_SNAPSHOTS_PER_BATCH = 1000  # event-time snapshots one run may take (a jump in time)
PERIODIC = "periodic"  # the reason of the owner's timed snapshot requests


def model_key(source_id: int) -> bytes:
    return b"model:%d" % source_id


def shape_key(source_id: int, shape: Shape) -> bytes:
    return b"shape:%d:%d,%d,%d,%d" % (source_id, *shape)


def clock_key(source_id: int) -> bytes:
    """segment-state key of the next event-time snapshot of a source (ms)."""
    return b"clock:%d" % source_id


def period_key(source_id: int, period: int, shape: Shape) -> bytes:
    """segment-state key of the net change of a shape's visitors in an event-time period."""
    return b"period:%d:%d:%d,%d,%d,%d" % (source_id, period, *shape)


def period_visitors_key(source_id: int, period: int, shape: Shape) -> bytes:
    """segment-state key of the visitors with events in a period that end it in a shape."""
    return b"visits:%d:%d:%d,%d,%d,%d" % (source_id, period, *shape)


def period_activity_key(source_id: int, period: int) -> bytes:
    """segment-state key of an event-time period's activity (ACTIVITY_NAMES, comma-separated)."""
    return b"activity:%d:%d" % (source_id, period)


def fold_key(source_id: int) -> bytes:
    """segment-state key of where a source's period tables were folded (``origin,base``,
    see :meth:`~ampelios.core.periods.PeriodPopulations.fold`)."""
    return b"fold:%d" % source_id


def alerts_key(source_id: int) -> bytes:
    """segment-state key of the alerts of a source last sent (JSON: id -> record); the
    same key in the published table gives them to every worker (for /metrics)."""
    return b"alerts:%d" % source_id


def changes_key(source_id: int) -> bytes:
    """segment-state key of a source's settled segment names and the settlings that
    changed them (JSON)."""
    return b"changes:%d" % source_id


def applied_key(source_id: int, partition: int) -> bytes:
    """segment-state key of the newest events offset of a partition the model has applied."""
    return b"applied:%d:%d" % (source_id, partition)


def model_lineage(app_id: str, broker_epoch: bytes, source_id: int) -> str:
    """The lineage of a source's model seeded in this deployment (app id) and life of the
    broker (its epoch record): the same every time the seeding is applied again (after a
    crash), another in a new deployment or after the broker came back empty, where the
    model starts over and its segment ids mean other groups."""
    return hashlib.sha256(b"%s:%s:%d" % (app_id.encode(), broker_epoch, source_id)).hexdigest()[:12]


def stored_population(table: BatchTable, source_id: int) -> Population:
    """A source's population as the ``shape:`` keys of segment-state hold it."""
    prefix = b"shape:%d:" % source_id
    counts: dict[Shape, int] = {}
    for key, value in table.items_with_prefix(0, prefix):
        views, carts, buys, sessions = (int(x) for x in key[len(prefix) :].split(b","))
        if int(value):
            counts[(views, carts, buys, sessions)] = int(value)
    return Population(counts)


def stored_periods(table: BatchTable, source_id: int) -> PeriodPopulations:
    """A source's period tables as the ``period:``, ``visits:``, ``activity:`` and
    ``fold:`` keys of segment-state hold them."""

    def by_shape(kind: bytes) -> dict[int, dict[Shape, int]]:
        found: dict[int, dict[Shape, int]] = {}
        prefix = b"%s:%d:" % (kind, source_id)
        for key, value in table.items_with_prefix(0, prefix):
            period, shape = key[len(prefix) :].split(b":")
            views, carts, buys, sessions = (int(x) for x in shape.split(b","))
            found.setdefault(int(period), {})[(views, carts, buys, sessions)] = int(value)
        return found

    activity: dict[int, np.ndarray] = {}
    prefix = b"activity:%d:" % source_id
    for key, value in table.items_with_prefix(0, prefix):
        activity[int(key[len(prefix) :])] = np.array([int(x) for x in value.split(b",")], dtype=np.int64)
    (fold,) = table.get_many(0, [fold_key(source_id)])
    origin, base = (int(x) for x in fold.split(b",")) if fold is not None else (None, None)
    return PeriodPopulations(by_shape(b"period"), by_shape(b"visits"), activity, base, origin)


def periods_record(
    source_id: int, model: SegmentModel, tables: PeriodTables, model_changes: list[dict[str, Any]]
) -> bytes:
    """A snapshots record of every event-time period's population under one model
    (``basis`` current), oldest first (see :class:`PeriodTables`), with the settlings that
    renamed segments (:meth:`SegmentOwner.model_changes`)."""
    return orjson.dumps(
        {
            "source_id": source_id,
            "clock": "event",
            "basis": "current",
            "model_version": model.version,
            "lineage": model.lineage,
            "segments": [{k: s[k] for k in ("id", "label", "centroid")} for s in model.segments()],
            "periods": tables.starts,
            "sizes": tables.sizes,
            "visitors": tables.visitors,
            "activity": tables.activity,
            "model_changes": model_changes,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def alert_records(source_id: int, model: SegmentModel, tables: PeriodTables) -> dict[str, dict[str, Any]]:
    """The alerts of a source's periods (:func:`ampelios.core.drift.source_alerts`) as
    segment-alerts records by id; times are event times (ms): ``started_at`` the start of
    the first period of the new level, ``detected_at`` the end of the period that showed
    it."""
    starts, period_ms = tables.starts, (tables.starts[1] - tables.starts[0]) if len(tables.starts) > 1 else 0
    records: dict[str, dict[str, Any]] = {}
    for alert in source_alerts(tables.activity, tables.visitors, tables.closed, tables.first):
        shift, recovered = alert.shift, alert.recovered
        key = f"{source_id}:{model.lineage}:{alert.key}"
        records[hashlib.sha256(key.encode()).hexdigest()[:16]] = {
            "source_id": source_id,
            "lineage": model.lineage,
            "signal": alert.signal,
            "segment": alert.segment,
            "label": model.labels[alert.segment] if alert.segment is not None else None,
            "direction": shift.direction,
            "before": shift.before,
            "after": shift.after,
            "started_at": starts[shift.started],
            "detected_at": starts[shift.detected] + period_ms,
            "recovered_at": starts[recovered.started] if recovered is not None else None,
            "recovery_detected_at": starts[recovered.detected] + period_ms if recovered is not None else None,
        }
    return records


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
            "lineage": model.lineage,
            "segments": model.segments(),
            "shapes": shapes,
        }
    )


class SegmentOwner:
    """Applies runs of ``segment-updates`` through ``processing`` (see the module docstring).

    It keeps a copy of each source's population and period tables (the ``shape:``,
    ``period:``, ``visits:`` and ``activity:`` keys of segment-state), trusted only while
    segment-state's position is the one its own last step stored: dropped when a run fails
    (its changes were not stored) and when another worker (after a takeover) or a
    recovery wrote segment-state since.
    """

    def __init__(self, p: Pipeline, processing: ExactlyOnce) -> None:
        self.p = p
        self.processing = processing
        self.period_ms = round(p.settings.snapshot_event_hours * 3_600_000)
        # The periods kept apart: the history's retention, and at least what alerts read.
        history_periods = math.ceil(p.settings.history_days * 24 / p.settings.snapshot_event_hours)
        self.keep_periods = max(history_periods, HISTORY_PERIODS)
        self._populations: dict[int, Population] = {}
        self._periods: dict[int, PeriodPopulations] = {}
        self._position: bytes | None = None  # segment-state's position when the copies were last right
        self._changed: set[int] = set()  # sources updated since their last wall snapshot
        self._snapshotted: dict[int, int] = {}  # model version of each source's last wall snapshot here
        self._owned = False  # this worker owned the model at the last request_snapshots

    async def apply(self, records: list[Any]) -> None:
        """Apply delivered ``records`` of segment-updates (offset order) exactly once."""
        try:
            await self.processing.process(records, self.steps)
        except BaseException:
            self.forget()
            raise

    def forget(self) -> None:
        """Drop the copies of populations: read them from segment-state again."""
        self._populations.clear()
        self._periods.clear()

    async def request_snapshots(self) -> None:
        """If this worker owns the model: ask for a wall snapshot of every source updated
        since the last (and of every source once, when it becomes the owner: updates
        applied before a crash may not have been settled)."""
        p = self.p
        owner = TopicPartition(p.topology.segment_updates, 0) in p.app.assignor.assigned_actives()
        if owner and not self._owned:
            self._changed.update(int(k.split(b":")[1]) for k, _ in p.segments.items_with_prefix(0, b"model:"))
        self._owned = owner
        if not owner:
            return
        for source_id in sorted(self._changed):
            self._changed.discard(source_id)
            await p.segment_updates.send(key=b"%d" % source_id, value=snapshot_request(source_id, PERIODIC))

    async def steps(self, partition: int, records: list[Any]) -> AsyncIterator[Step]:
        """Apply ``records`` (deltas and snapshot requests) in order; update each changed
        source's model once; all of it is one step. Once it is stored, publish the
        updated models."""
        started = time.perf_counter()
        (position,) = self.p.segments.get_many(0, [self.processing.positions.key])
        if position != self._position:  # another owner (or a crash) wrote segment-state since
            self.forget()
        run = SegmentRun(self)
        for record in records:
            message: dict[str, Any] = {}
            try:
                message = orjson.loads(record.value)
                if "snapshot" in message:
                    await self.wall_snapshot(run, int(message["source_id"]), str(message["snapshot"]))
                else:
                    await self.apply_delta(run, message)
            except (KafkaError, TimeoutError):
                raise  # the broker: Faust restarts the agent; the next message shows the gap
            except Exception:
                origin = f"events {message.get('partition')}:{message.get('offset')}" if "partition" in message else "-"
                log.exception("could not apply segment update at offset %d (%s)", record.offset, origin)
        for source_id in sorted(run.stale):
            run.model(source_id)
        yield Step(records[-1].offset, run.writes, run.outbox)
        self._position = self.processing.positions.position(records[-1].offset)[1]  # stored now
        for source_id, model in run.models.items():
            stored = run.writes.get(model_key(source_id))
            if model is not None and stored is not None:
                await self.p.published.publish(b"%d" % source_id, stored)
        for source_id in run.alerted:
            await self.p.published.publish(alerts_key(source_id), run.writes[alerts_key(source_id)])
        self.p.metrics.batch_seconds.labels("segments").observe(time.perf_counter() - started)

    def population_of(self, source_id: int) -> Population:
        if source_id not in self._populations:
            self._populations[source_id] = stored_population(self.p.segments, source_id)
        return self._populations[source_id]

    def periods_of(self, source_id: int) -> PeriodPopulations:
        if source_id not in self._periods:
            self._periods[source_id] = stored_periods(self.p.segments, source_id)
        return self._periods[source_id]

    def k_of(self, source_id: int, model: SegmentModel | None, population: Population, settle: bool) -> int:
        """The k to update a source's model with: the configured one; with AMPELIOS_K=auto,
        the rule's choice (:mod:`ampelios.core.k_choice`) at seeding and at each settle,
        and the model's own k between them (so ids stay while k does)."""
        k = self.p.settings.k_for(source_id)
        if k is not None:
            return k
        if model is not None and not settle:
            return model.k
        return choose_k(evaluate(population))

    async def apply_delta(self, run: SegmentRun, message: dict[str, Any]) -> None:
        source_id, partition = int(message["source_id"]), int(message["partition"])
        applied = run.get(applied_key(source_id, partition))
        if applied is not None and message["offset"] <= int(applied):
            return  # a delta sent again (after a crash or a rebalance)
        if self.period_ms:
            await self.event_time_snapshots(run, source_id, int(message["watermark"]))
        changed = self.population_of(source_id).apply(PopulationDelta.from_json(message))  # all or nothing
        run.writes.update((shape_key(source_id, shape), b"%d" % count) for shape, count in changed)
        if "periods" in message:
            periods = self.periods_of(source_id)
            stage_periods(run, source_id, periods, periods.apply(PeriodDelta.from_json(message)))
            folded = periods.fold(self.keep_periods)
            if folded is not None:
                stage_periods(run, source_id, periods, folded)
                run.writes[fold_key(source_id)] = b"%d,%d" % (periods.origin, periods.base)
        run.writes[applied_key(source_id, partition)] = b"%d" % message["offset"]
        run.stale.add(source_id)
        self._changed.add(source_id)

    async def event_time_snapshots(self, run: SegmentRun, source_id: int, watermark: int) -> None:
        """Snapshot the model at every period boundary the events passed; stage the next
        boundary."""
        period_ms = self.period_ms
        stored = run.get(clock_key(source_id))
        boundary = int(stored) if stored is not None else (watermark // period_ms + 1) * period_ms
        taken = 0
        while watermark >= boundary and (model := run.model(source_id)) is not None:
            if taken < MAX_SNAPSHOTS_PER_BATCH:
                record = snapshot_record(source_id, model, "event", boundary, "event time")
                await self.p.snapshots.send(key=b"%d" % source_id, value=record)
            taken += 1
            boundary += period_ms
        if taken > MAX_SNAPSHOTS_PER_BATCH:
            log.warning("event time of source %d jumped %d periods; kept %d", source_id, taken, MAX_SNAPSHOTS_PER_BATCH)
        run.writes[clock_key(source_id)] = b"%d" % boundary

    async def wall_snapshot(self, run: SegmentRun, source_id: int, reason: str) -> None:
        """Settle the model on the population, then snapshot it with the shape mapping. A
        periodic request is dropped when this worker's last snapshot of the source has the
        current model: another one (at the end of a replay, say) came in between."""
        model = run.model(source_id)
        if model is None or (reason == PERIODIC and self._snapshotted.get(source_id) == model.version):
            return
        population = self.population_of(source_id)
        model = update(model, population, self.k_of(source_id, model, population, settle=True), settle=True)
        shapes, _ = population.arrays()
        mapping = np.column_stack([shapes, model.assign(features_from_shapes(shapes))]).tolist()
        record = snapshot_record(source_id, model, "wall", round(time.time() * 1000), reason, mapping)
        sent = [await self.p.snapshots.send(key=b"%d" % source_id, value=record)]
        periods = self.periods_of(source_id)
        if self.period_ms and periods.span():
            tables = PeriodTables.of(periods, model, self.period_ms)
            changes = self.model_changes(run, source_id, model, tables)
            record = periods_record(source_id, model, tables, changes)
            sent.append(await self.p.snapshots.send(key=b"%d" % source_id, value=record))
            kept = tables.starts[0] if tables.first else 0
            self.alerts(run, source_id, alert_records(source_id, model, tables), kept)
        for acknowledged in sent:
            await acknowledged
        run.set_model(source_id, model)
        self._snapshotted[source_id] = model.version

    def model_changes(
        self, run: SegmentRun, source_id: int, model: SegmentModel, tables: PeriodTables
    ) -> list[dict[str, Any]]:
        """The settlings of a source's model that renamed or renumbered its segments, with
        this one if it did: when (the start of the newest day with events then), the
        version, the names before and after. The history is drawn under the newest
        segments, so such a change is never a shift of people; the chart marks it."""
        stored = run.get(changes_key(source_id))
        known: dict[str, Any] = orjson.loads(stored) if stored is not None else {"labels": None, "changes": []}
        if known["labels"] is not None and known["labels"] != model.labels:
            at = tables.starts[max(0, tables.closed)]
            change = {"at": at, "model_version": model.version, "before": known["labels"], "after": model.labels}
            known["changes"].append(change)
        if known["labels"] != model.labels:
            known["labels"] = model.labels
            run.writes[changes_key(source_id)] = orjson.dumps(known)
        return known["changes"]

    def alerts(self, run: SegmentRun, source_id: int, alerts: dict[str, dict[str, Any]], kept: int) -> None:
        """Stage the alerts that are new or changed (recovered, or judged again under a
        new model or with more events) since the last sent, to send once the step is
        stored; an alert previously sent that the history no longer shows is sent again
        as withdrawn.

        Once old periods are folded, the history starts at ``kept`` (ms; 0: never
        folded), and it is judged from a later day each day: an alert once sent then
        keeps what it was sent with (when its shift started, when it was detected, its
        levels and names), and only a recovery it lacked is added. Its first
        WARMUP_PERIODS are no longer judged as they were when they were new: an alert
        detected before their end is **settled**: never withdrawn, forgotten (no longer
        stored nor counted in /metrics) once detected before ``kept``, and a shift that
        started in them and was not sent then is not sent now."""
        settled = kept + WARMUP_PERIODS * self.period_ms if kept else 0
        stored = run.get(alerts_key(source_id))
        sent: dict[str, dict[str, Any]] = orjson.loads(stored) if stored is not None else {}
        topic = self.p.topology.segment_alerts
        for alert_id, alert in list(alerts.items()):
            before = sent.get(alert_id)
            if kept and before is not None and not before.get("withdrawn"):
                recovery = {k: alert[k] for k in ("recovered_at", "recovery_detected_at")}
                alert = alerts[alert_id] = before if before["recovered_at"] is not None else {**before, **recovery}
            elif alert["started_at"] < settled:
                del alerts[alert_id]
                continue
            if before != alert:
                run.outbox.add(topic, b"%d" % source_id, orjson.dumps({"id": alert_id, **alert}), 0)
        for alert_id in sent.keys() - alerts.keys():
            if sent[alert_id]["detected_at"] < kept:
                continue
            if sent[alert_id]["detected_at"] < settled:
                alerts[alert_id] = sent[alert_id]
            elif not sent[alert_id].get("withdrawn"):
                alerts[alert_id] = {**sent[alert_id], "withdrawn": True}
                run.outbox.add(topic, b"%d" % source_id, orjson.dumps({"id": alert_id, **alerts[alert_id]}), 0)
            else:
                alerts[alert_id] = sent[alert_id]
        run.writes[alerts_key(source_id)] = orjson.dumps(alerts)
        run.alerted.add(source_id)


def stage_periods(run: SegmentRun, source_id: int, periods: PeriodPopulations, changes: PeriodChanges) -> None:
    """Stage in ``run`` the segment-state writes of what ``changes`` set in ``periods``."""
    for key, rows in ((period_key, changes.population), (period_visitors_key, changes.visitors)):
        run.writes.update((key(source_id, p, shape), b"%d" % n if n else None) for p, shape, n in rows)
    for p in changes.activity:
        row = periods.activity.get(p)
        run.writes[period_activity_key(source_id, p)] = b",".join(b"%d" % x for x in row) if row is not None else None


class SegmentRun:
    """What a run of segment-updates messages changes, stored at its end at once: staged
    ``writes`` of segment-state, the current ``models`` (``None``: none yet) and the
    sources whose population changed since their model was updated (``stale``)."""

    def __init__(self, owner: SegmentOwner) -> None:
        self.owner = owner
        self.outbox = Outbox()  # records to send once the run is stored
        self.alerted: set[int] = set()  # sources whose alerts were judged (to publish)
        self.writes: dict[bytes, bytes | None] = {}
        self.models: dict[int, SegmentModel | None] = {}
        self.stale: set[int] = set()

    def get(self, key: bytes) -> bytes | None:
        return self.writes[key] if key in self.writes else self.owner.p.segments.get_many(0, [key])[0]

    def model(self, source_id: int) -> SegmentModel | None:
        """The model of a source, updated with every delta applied so far."""
        if source_id not in self.models:
            stored = self.get(model_key(source_id))
            self.models[source_id] = SegmentModel.from_bytes(stored) if stored is not None else None
        if source_id in self.stale:
            self.stale.discard(source_id)
            owner = self.owner
            try:
                model, population = self.models[source_id], owner.population_of(source_id)
                k = owner.k_of(source_id, model, population, settle=False)
                lineage = model_lineage(owner.p.settings.app_id, owner.p.broker_epoch, source_id)
                model = update(model, population, k, lineage=lineage)
            except Exception:  # the model stays as it was; the population is kept
                log.exception("could not update the model of source %d", source_id)
            else:
                self.set_model(source_id, model)
        return self.models[source_id]

    def set_model(self, source_id: int, model: SegmentModel) -> None:
        self.models[source_id] = model
        self.writes[model_key(source_id)] = model.to_bytes()
