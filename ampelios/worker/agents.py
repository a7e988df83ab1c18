"""The agents and timers: events -> journeys -> population deltas -> the segment model.

Wiring only. Each agent takes *runs* -- the messages of one partition that arrived
together -- and hands them to the :class:`~ampelios.engine.exactly_once.ExactlyOnce` of
its input topic, with the processor that turns them into steps. A run of hundreds of
one-event messages costs about what one message of hundreds of events costs: one read of
the state, one batch of numpy work, one write. The journeys agent takes its runs from the
:class:`~ampelios.engine.intake.Intake` (what each fetch brought, bypassing Faust's
per-message path); the two others from their Faust streams (up to RUN_MESSAGES within
RUN_SECONDS).

==========  ======================  ==================  =================================
agent       input                   processor           state
==========  ======================  ==================  =================================
journeys    ``events`` (N)          JourneyProcessor    ``journeys`` (``~position``)
segments    ``segment-updates`` (1) SegmentOwner        ``segment-state`` (``position``)
rejections  ``events-dlq`` (N)      RejectionCounter    ``journeys`` (``~dlq-position``)
==========  ======================  ==================  =================================
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ampelios.engine.exactly_once import CONFIRM_SECONDS, ExactlyOnce
from ampelios.engine.outbox import OUTBOX_KEY
from ampelios.processors.journey_processor import JourneyProcessor
from ampelios.processors.rejection_counter import RejectionCounter
from ampelios.processors.segment_owner import SegmentOwner
from ampelios.runtime.pipeline import Pipeline

RUN_MESSAGES = 512  # messages an agent takes at most at once (over all its partitions)
RUN_SECONDS = 0.05  # longest wait for more messages before applying those taken


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
    """Add the agents and timers to ``p.app``, and their processing to ``p.processors``."""
    url, topology, producer = p.settings.broker_url, p.topology, lambda: p.app.producer

    journeys = ExactlyOnce(
        url,
        topology.events,
        p.journeys,
        b"~position",
        producer,
        outbox_key=OUTBOX_KEY,
        count_forwarded=lambda source, n: p.metrics.forwarded.labels(str(source)).inc(n),
    )
    journey_processor = JourneyProcessor(p)
    segments = ExactlyOnce(url, topology.segment_updates, p.segments, b"position", producer, outbox_key=b"outbox")
    owner = SegmentOwner(p, segments)
    rejections = ExactlyOnce(url, topology.dead_letters, p.journeys, b"~dlq-position", producer)
    rejection_counter = RejectionCounter(p.journeys)
    p.processors += [journeys, segments, rejections]

    @p.app.agent(p.events, name="journeys")
    async def journeys_agent(stream: Any) -> None:
        """Faust subscribes the topic and assigns its partitions; the messages come from
        the intake, not from ``stream`` (:mod:`ampelios.engine.intake`)."""
        async for taken in p.intake.runs():
            await each_partition(taken, lambda run: journeys.process(run, journey_processor.steps))

    @p.app.agent(p.segment_updates, name="segments")
    async def segments_agent(stream: Any) -> None:
        async for taken in runs(stream):
            for records in taken:  # one partition
                await owner.apply(records)

    @p.app.agent(p.dead_letters, name="rejections")
    async def rejections_agent(stream: Any) -> None:
        async for taken in runs(stream):
            await each_partition(taken, lambda run: rejections.process(run, rejection_counter.steps))

    @p.app.task
    async def import_drift_detectors() -> None:
        """river takes over a second to import: in a thread at start, so that the first
        settling (:mod:`ampelios.core.drift`) does not stop the event loop for it."""
        await asyncio.to_thread(importlib.import_module, "river.drift")

    @p.app.timer(CONFIRM_SECONDS)
    async def confirm_held_partitions() -> None:
        await journeys.confirm_held()

    @p.app.timer(p.settings.snapshot_seconds)
    async def request_wall_snapshots() -> None:
        await owner.request_snapshots()
