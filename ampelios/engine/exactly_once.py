"""Exactly-once processing of an input topic's partitions, as one named thing.

Kafka delivers at least once, Faust commits from its own bookkeeping (which can move past
messages never processed, :mod:`ampelios.engine.positions`), and the embedded broker has
no transactions. An :class:`ExactlyOnce` makes the processing of one input topic exact
anyway by keeping, per partition, the state, the position and the outputs together. An
agent hands it each run of delivered messages and a function that turns the messages to
apply into :class:`Step` s -- what to store, what to send, which events to forward -- and
for each step it

1. stores the step's writes, the offset of its last message (the partition's
   *position*) and its outbox in **one** changelog record, acknowledged, then one
   RocksDB write batch (:meth:`BatchTable.write`): a crash before leaves nothing behind,
   a crash after keeps all of it;
2. sends the outbox (:mod:`ampelios.engine.outbox`) and waits for the broker's
   acknowledgements; every receiver is idempotent, so sending it again is harmless.

A partition's stored outbox is sent again, before its next run, whenever this worker does
not know it to be sent: after every assignment, after a failed send and at the start of a
worker (and within :data:`CONFIRM_SECONDS` when no next run comes). Until then its
position is not committed, so a lag of 0 means that every output of what was applied is
in its topic.

**Forwarding**: events of visitors another partition owns (a step's ``forward``) are added
to the outbox as one message per owner and source, to the owner's partition of the same
topic, and counted (:func:`forwarded_key`). The owner applies them exactly once like any
other message; the partition they arrived on never applies them.

**The consumer** (:func:`steer`): after every rebalance, once tables are recovered, it is
moved to the stored positions (so that messages skipped at the end of a partition do not
wait for a later message to show the gap) and the stored outboxes are sent; it commits
those positions instead of Faust's acknowledgements; and a partition whose position stays
behind its end with no progress is sought back to it (:func:`seek_stalled`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import TopicPartition

from ampelios.core.events import EventBatch, encode_events
from ampelios.core.identities import MOVED_KEY
from ampelios.engine.batch_table import BatchTable
from ampelios.engine.outbox import Outbox
from ampelios.engine.positions import Positions
from ampelios.internals import Commit, steer_consumer

log = logging.getLogger(__name__)

CONFIRM_SECONDS = 1.0  # how often held partitions whose outputs are not known to be sent are checked
STALL_CHECK_SECONDS = 2.0  # how often positions are checked for progress (see seek_stalled)


def forwarded_key(source_id: int) -> bytes:
    """Table key (per partition) of the events of a source forwarded to their owners."""
    return b"~forwarded:%d" % source_id


@dataclass
class Step:
    """What applying consecutive messages of one partition, up to and including offset
    ``last``, changes: ``writes`` to the table (``None``: delete the key), records to send
    once they are stored (``outbox``), and events to forward to the partitions that own
    their visitors (``forward``: (owner partition, events of one source)); ``moved``, the
    same for events that links moved to another visitor, are sent under the key
    :data:`~ampelios.core.identities.MOVED_KEY`, by which their owner knows them."""

    last: int
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    outbox: Outbox = field(default_factory=Outbox)
    forward: list[tuple[int, EventBatch]] = field(default_factory=list)
    moved: list[tuple[int, EventBatch]] = field(default_factory=list)


Apply = Callable[[int, list[Any]], AsyncIterator[Step]]


class ExactlyOnce:
    """Exactly-once processing of ``topic``'s partitions into ``table``.

    ``table`` is co-partitioned with ``topic`` (a one-partition topic writes partition 0);
    the position of partition ``p`` is key ``position_key`` of partition ``p``, its
    outbox key ``outbox_key`` (``None``: the agent sends nothing after its writes, and a
    step's outbox must stay empty). ``producer()`` is the app's producer;
    ``count_forwarded(source_id, n)`` counts forwarded events (for metrics).
    """

    def __init__(
        self,
        url: str,
        topic: str,
        table: BatchTable,
        position_key: bytes,
        producer: Callable[[], Any],
        outbox_key: bytes | None = None,
        count_forwarded: Callable[[int, int], None] = lambda source_id, n: None,
    ) -> None:
        self.topic = topic
        self.table = table
        self.outbox_key = outbox_key
        self._producer = producer
        self._count_forwarded = count_forwarded
        # The stored position of each partition whose outbox this worker knows to be sent:
        # that of its own last write, or of the stored outbox it sent again. Known by the
        # position, not by the partition: the outbox of another position (a previous
        # holder's last write, recovered from the changelog after this worker last looked)
        # is not known to be sent. A partition is dropped when it is revoked or its send
        # fails, and a worker starts with none, so the outbox stored by a crashed or
        # previous holder is sent before the partition's next message is applied and before
        # its position is committed. Each partition's lock keeps the resends and the runs
        # apart.
        self._sent: dict[int, bytes | None] = {}
        # Partitions assigned to this worker since the last rebalance: a run of any other
        # (taken before a rebalance and waiting for its lock meanwhile) is dropped.
        self._held: set[int] = set()
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.positions = Positions(url, topic, table, position_key, self._known_sent)

    async def process(self, messages: list[Any], apply: Apply) -> None:
        """Apply delivered ``messages`` of one partition (offset order) exactly once:
        ``apply(partition, admitted)`` is given the messages not applied yet, in order
        (those skipped by the delivery included), and yields the steps to store and send;
        it resumes after each step is stored and its outbox sent. A run of a partition
        this worker does not hold (any more) is dropped: its next holder applies it."""
        partition = messages[0].partition
        async with self._locks[partition]:
            if partition not in self._held:
                return
            await self._confirm(partition)
            admitted = await self.positions.admit(messages)
            if admitted:
                async for step in apply(partition, admitted):
                    await self._store_and_send(partition, step)

    async def _store_and_send(self, partition: int, step: Step) -> None:
        writes = step.writes
        writes.update([self.positions.position(step.last)])
        if step.forward or step.moved:
            self._forward(partition, step, writes)
        if self.outbox_key is not None:
            writes[self.outbox_key] = step.outbox.to_bytes()
        elif step.outbox.records:
            raise ValueError(f"{self.topic} keeps no outbox: a step of it cannot send records")
        self._sent.pop(partition, None)
        await self.table.write(partition, list(writes), list(writes.values()))
        await step.outbox.send(self._producer())
        self._sent[partition] = writes[self.positions.key]

    def _forward(self, partition: int, step: Step, writes: dict[bytes, bytes | None]) -> None:
        """Add to the step's outbox one message per owner and source of its ``forward``
        and ``moved``, and count them in ``writes``."""
        counts: dict[int, int] = {}
        for key, forward in ((None, step.forward), (MOVED_KEY, step.moved)):
            for owner, events in forward:
                step.outbox.add(self.topic, key, encode_events(events), owner)
                source = int(events.source_id[0])
                counts[source] = counts.get(source, 0) + len(events)
        stored = self.table.get_many(partition, [forwarded_key(s) for s in counts])
        for (source, n), old in zip(counts.items(), stored):
            writes[forwarded_key(source)] = b"%d" % (int(old or 0) + n)
            self._count_forwarded(source, n)

    def _known_sent(self, partition: int) -> bool:
        """Whether the outbox stored with ``partition``'s current position is known to be sent."""
        if partition not in self._sent:
            return False
        (position,) = self.table.get_many(partition, [self.positions.key])
        return self._sent[partition] == position

    async def _confirm(self, partition: int) -> None:
        """Send the stored outbox of ``partition`` unless it is known to be sent (hold the
        partition's lock)."""
        if self._known_sent(partition):
            return
        keys = [self.positions.key] if self.outbox_key is None else [self.positions.key, self.outbox_key]
        position, *outbox = self.table.get_many(partition, keys)
        if outbox and outbox[0] is not None:
            await Outbox.from_bytes(outbox[0]).send(self._producer())
        self._sent[partition] = position

    async def resend(self, assigned: set[TopicPartition]) -> None:
        """After an assignment, before the worker serves again: hold the assigned
        partitions, and send the stored outbox of
        every assigned partition now, not only when its next message arrives (there may be
        none)."""
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topic)
        self._held.update(partitions)
        for partition in partitions:
            async with self._locks[partition]:
                await self._confirm(partition)

    async def confirm_held(self) -> None:
        """Send again the stored outboxes of held partitions not known to be sent (the
        send after an assignment or a run failed) rather than wait for a next message that
        may never come. Stops at a partition no longer held (a rebalance: the next
        assignment decides); a failed send is tried at the next call."""
        for partition in sorted(p for p in self._held if not self._known_sent(p)):
            async with self._locks[partition]:
                if partition not in self._held:
                    return
                try:
                    await self._confirm(partition)
                except Exception as exc:
                    log.warning("could not send the stored outputs of %s[%d] yet: %r", self.topic, partition, exc)

    async def forget(self, revoked: set[TopicPartition]) -> None:
        """Before a rebalance: revoked partitions may be written by another worker meanwhile."""
        for partition in sorted(tp.partition for tp in revoked if tp.topic == self.topic):
            async with self._locks[partition]:  # a run under way finishes first
                self._sent.pop(partition, None)
                self._held.discard(partition)


def stored_positions(processors: Sequence[ExactlyOnce], assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
    """The next offset to apply of every ``assigned`` partition of the processors' topics."""
    return {tp: n for p in processors for tp, n in p.positions.next_offsets(assigned).items()}


def steer(
    consumer: Any, processors: Sequence[ExactlyOnce], rebalancing: Callable[[], bool], recovering: Callable[[], bool]
) -> None:
    """Position and commit Faust's ``consumer`` by the stored positions of ``processors``:
    after each rebalance (tables recovered) seek to them and send the stored outboxes;
    commit the positions of partitions whose outbox is known to be sent, each only when it
    changed.

    Faust also seeks when its fetcher finds the flow stopped, which can be in the middle
    of table recovery (``recovering()``): the stored positions and outboxes are not all
    there yet, and that seek is left to Faust alone (it seeks again once recovery ends)."""
    committed: dict[TopicPartition, int] = {}

    async def after_seek() -> None:
        if recovering():
            return
        committed.clear()  # others may have committed while we did not own a partition
        assigned = consumer.assignment()
        await consumer.seek_wait(stored_positions(processors, assigned))
        for processor in processors:
            try:
                await processor.resend(assigned)
            except Exception:  # the agents send again before their next message
                log.exception("after the assignment of %s", sorted(assigned))

    async def commit(send: Commit) -> bool:
        if rebalancing():  # tables may be recovering: positions not known yet
            return False
        assigned = consumer.assignment()
        mine = {tp: n for p in processors for tp, n in p.positions.committable(assigned).items()}
        offsets = {tp: n for tp, n in mine.items() if committed.get(tp) != n}
        if not offsets or not await send(offsets):
            return False
        committed.update(offsets)
        return True

    steer_consumer(consumer, after_seek, commit)


async def seek_stalled(
    consumer: Callable[[], Any],
    processors: Sequence[ExactlyOnce],
    ready: Callable[[], bool],
    every: float = STALL_CHECK_SECONDS,
) -> None:
    """Forever: seek a partition back to its stored position when that position stays
    behind the partition's end for two checks ``every`` seconds apart (``consumer()``:
    Faust's consumer, asked for only once the worker is ``ready()``).

    Around a rebalance Faust can record messages as read without handing them to the agent
    (its fetch loop still holds records of the previous generation), and then drops them
    when they are fetched again after the seek to the stored positions. A later message
    would show the gap (:meth:`Positions.admit`), but at the end of a replay none comes:
    the events would wait, unapplied and uncommitted, forever. A seek while a slow run is
    still under way only makes Faust fetch messages again that ``admit`` then skips. The
    broker is asked only about partitions whose position did not move since the last
    check, so a busy worker adds no requests."""
    stored: dict[TopicPartition, int] = {}
    behind: dict[TopicPartition, int] = {}
    while True:
        await asyncio.sleep(every)
        if not ready():
            stored, behind = {}, {}
            continue
        try:
            previous, stored = stored, stored_positions(processors, consumer().assignment())
            idle = {tp: n for tp, n in stored.items() if previous.get(tp) == n}
            ends = await consumer().highwaters(*idle) if idle else {}
        except Exception:  # the broker is unreachable for now: Faust's clients retry
            continue
        was, behind = behind, {tp: n for tp, n in idle.items() if n < ends.get(tp, 0)}
        stalled = {tp: n for tp, n in behind.items() if was.get(tp) == n}
        if stalled:
            log.warning(
                "No progress for %.0f s while behind the end of %s: seeking back to the stored positions",
                2 * every,
                ", ".join(f"{tp.topic}[{tp.partition}] at {n}" for tp, n in sorted(stalled.items())),
            )
            await consumer().seek_wait(stalled)
