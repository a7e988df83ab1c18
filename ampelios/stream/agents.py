"""The agents: events -> journeys -> segment deltas -> the segment model.

``journeys`` (one stream over the N partitions of ``events``): each message -- one event
or thousands -- is one batch. Its events are merged into the journeys of their visitors
(one RocksDB read per visitor, one write batch and one changelog record per batch), the changed journeys are
assigned to the nearest segment, and one :class:`SegmentDelta` for the whole batch goes
to ``segment-updates``.

``segments`` (the single partition of ``segment-updates``): the model's one owner applies
deltas in order, keeps the authoritative model in ``segment-models`` and publishes a
copy in the global table every worker reads.

``rejections`` (``events-dlq``): counts dead-lettered rows and messages per source.

A message that cannot be used never stops an agent: it is dead-lettered with its
position and reason, and counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import orjson

from ampelios.core.events import EventBatch, InvalidMessage, Rejection, decode_events
from ampelios.core.journeys import merge_journeys
from ampelios.core.model import SegmentDelta, SegmentModel
from ampelios.core.partitioning import visitor_key
from ampelios.stream.app import Pipeline, decode_counts, encode_counts
from ampelios.stream.replay import rejection_record

log = logging.getLogger(__name__)

UNKNOWN_SOURCE = -1
SEED_TIMEOUT_SECONDS = 60.0
_SEED_SAMPLE = 10_000


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

    async def model_for(source_id: int, features: np.ndarray) -> SegmentModel:
        """The published model of a source; the first batch of a source proposes seeds
        and waits for the model's owner to answer (the first proposal wins)."""
        model = p.published_model(source_id)
        if model is not None:
            return model
        sample = features[:_SEED_SAMPLE]
        await p.segment_updates.send(
            key=b"%d" % source_id, value=orjson.dumps({"source_id": source_id, "seed": sample.tolist()})
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEED_TIMEOUT_SECONDS
        while (model := p.published_model(source_id)) is None:
            if loop.time() > deadline:
                raise TimeoutError(f"no segment model for source {source_id} after {SEED_TIMEOUT_SECONDS}s")
            await asyncio.sleep(0.005)
        return model

    async def apply_batch(source_id: int, partition: int, offset: int, events: EventBatch) -> None:
        visitors, owner = np.unique(events.visitorid, return_inverse=True)
        keys = [visitor_key(source_id, v) for v in visitors.tolist()]
        batch = merge_journeys(p.journeys.get_many(partition, keys), events, owner, gap_ms)
        changed = np.flatnonzero(batch.changed)
        if len(changed):
            features = batch.new_features[changed]
            model = await model_for(source_id, features)
            segments = model.assign(features)
            old_segments = batch.old_segments[changed]
            delta = SegmentDelta.between(model, old_segments, batch.old_features[changed], segments, features)
            p.journeys.set_many(
                partition,
                b"%d:%d" % (partition, offset),
                [keys[i] for i in changed.tolist()],
                batch.encode(changed, segments),
            )
            await p.segment_updates.send(
                key=b"%d" % source_id,
                value=orjson.dumps({"source_id": source_id, "delta": delta.to_json()}),
            )
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

    @p.app.agent(p.segment_updates, name="segments")
    async def segments(stream: Any) -> None:
        async for event in stream.events():
            try:
                update = orjson.loads(event.value)
                key = b"%d" % update["source_id"]
                current = p.models.get(key)
                if "seed" in update:
                    if current is not None:
                        continue  # another partition's proposal was first
                    model = SegmentModel.seeded(np.asarray(update["seed"], dtype=np.float64), p.settings.k)
                else:
                    if current is None:
                        raise ValueError("a delta arrived before the model was seeded")
                    model = SegmentModel.from_bytes(current)
                    model.apply(SegmentDelta.from_json(update["delta"]))
            except Exception:
                log.exception("could not apply segment update at offset %d", event.message.offset)
                continue
            value = model.to_bytes()
            p.models[key] = value
            p.published[key] = value

    @p.app.agent(p.dead_letters, name="rejections")
    async def rejections(stream: Any) -> None:
        async for event in stream.events():
            try:
                source_id = int(orjson.loads(event.value)["source_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                source_id = UNKNOWN_SOURCE
            add_counts(source_id, event.message.partition, rejected=1)
