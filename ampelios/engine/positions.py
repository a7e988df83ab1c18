"""Where each input partition's processing stands, kept with the state it produced.

Faust commits consumer offsets from its own bookkeeping, and that bookkeeping can move
past messages that were never processed: around a rebalance it acknowledges messages of
the previous generation still in its buffers without handing them to the agent, and its
commit waits at most 0.1 s for table writes to leave the producer buffer. A crash after
such a commit loses those messages. Ampelios therefore does not trust
committed offsets for correctness. Every agent stores the offset of the last message it
applied in the same atomic write as the state it changed (a
:class:`~ampelios.engine.batch_table.BatchTable` key), and :meth:`Positions.admit` turns
each run of delivered messages into the messages to apply, so that each partition's
messages are applied exactly once, in order:

- an offset at or below the stored one was applied already: nothing;
- the next offset: that message;
- an offset beyond the next one: the skipped messages, read from the broker directly
  (:func:`~ampelios.services.broker.read_range`), then that message.

The offsets committed for the consumer group are these positions too (the app commits
:meth:`Positions.committable` instead of Faust's acknowledgements), so lag figures and
restarts start from the truth -- except for a partition whose last outputs are stored but
not known to be sent (``ready`` says which): its position is committed once they are, so
that a lag of 0 also means that every output is in its topic; and whenever Faust
positions the consumer (after every rebalance and table recovery) it is moved to those
offsets, so that messages skipped at the end of a partition do not wait for a later
message to show the gap; and so it is again when a held partition's position stays
behind the partition's end with nothing applied for a few seconds (Faust dropped messages
delivered around the rebalance after that seek:
:func:`~ampelios.engine.exactly_once.seek_stalled`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.structs import TopicPartition

from ampelios.engine.batch_table import BatchTable
from ampelios.services.broker import read_range

log = logging.getLogger(__name__)


class Positions:
    """The stored position of every partition of the input ``topic`` of one agent.

    The position of partition ``p`` is key ``key`` of partition ``p`` of ``table`` (the
    topic and the table are co-partitioned; a one-partition topic keeps it in partition 0).
    """

    def __init__(
        self, url: str, topic: str, table: BatchTable, key: bytes, ready: Callable[[int], bool] = lambda p: True
    ) -> None:
        self.url = url
        self.topic = topic
        self.table = table
        self.key = key
        self.ready = ready  # whether a partition's stored position may be committed now

    def expected(self, partition: int) -> int:
        """The offset of the next message to apply in ``partition``."""
        (stored,) = self.table.get_many(partition, [self.key])
        return int(stored) + 1 if stored is not None else 0

    def position(self, offset: int) -> tuple[bytes, bytes]:
        """The (key, value) to write with the effects of the message at ``offset``."""
        return self.key, b"%d" % offset

    def next_offsets(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to apply of every assigned partition of the topic."""
        return {tp: self.expected(tp.partition) for tp in assigned if tp.topic == self.topic}

    def committable(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """:meth:`next_offsets` of the partitions that are ``ready``; none once the table
        is stopping (a worker's commit may come after its stores closed: reading one then
        would open it again, and the next start resumes from the stored positions)."""
        if self.table.should_stop:
            return {}
        return {tp: n for tp, n in self.next_offsets(assigned).items() if self.ready(tp.partition)}

    async def admit(self, messages: Sequence[Any]) -> list[Any]:
        """The messages to apply now, in order, given delivered ``messages`` of one
        partition in offset order (each has ``topic``, ``partition``, ``offset`` and
        ``value``); store :meth:`position` of the last one with their effects."""
        if not messages:
            return []
        first = messages[0]
        expected = self.expected(first.partition)
        admitted: list[Any] = []
        for message in messages:
            if message.offset > expected:
                tp = TopicPartition(message.topic, message.partition)
                skipped = await read_range(self.url, tp, expected, message.offset)
                log.warning(
                    "%s[%d]: offset %d delivered, %d is next: applying the %d messages in between first",
                    message.topic,
                    message.partition,
                    message.offset,
                    expected,
                    len(skipped),
                )
                admitted += skipped
            if message.offset >= expected:
                admitted.append(message)
                expected = message.offset + 1
        return admitted
