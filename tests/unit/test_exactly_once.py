"""The outbox protocol of ExactlyOnce: a partition's stored outbox is known to be sent only
for the position it was stored with.

Faust seeks (and so resends the stored outboxes) whenever its fetcher finds the flow
stopped, which can be while a taken-over partition's table is still being recovered: the
previous holder's last write -- position, state and an outbox it never sent -- arrives
after that resend. Its outbox must still be sent before the partition's next run and
before its position is committed (a population delta lost there made every later delta of
the partition fail at the model's owner).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import TopicPartition

from ampelios.engine.exactly_once import ExactlyOnce, Step
from ampelios.engine.outbox import Outbox
from ampelios.engine.positions import Positions

TOPIC = "events"
POSITION, OUTBOX = b"~position", b"~outbox"


class Table:
    """The two calls ExactlyOnce makes of its BatchTable, over dicts."""

    def __init__(self) -> None:
        self.partitions: dict[int, dict[bytes, bytes]] = {}
        self.should_stop = False  # a Faust service being stopped

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.partitions.get(partition, {}).get(k) for k in keys]

    async def write(self, partition: int, keys: list[bytes], values: list[bytes | None]) -> None:
        data = self.partitions.setdefault(partition, {})
        for key, value in zip(keys, values):
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value


class Producer:
    """Records what is sent, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None, *_: Any) -> Any:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class Message:
    partition: int
    offset: int
    topic: str = TOPIC
    value: bytes = b""


def recovered(table: Table, partition: int, position: int, *outputs: bytes) -> None:
    """The previous holder's last write, as table recovery applies it."""
    outbox = Outbox()
    for value in outputs:
        outbox.add("segment-updates", None, value, 0)
    table.partitions.setdefault(partition, {}).update({POSITION: b"%d" % position, OUTBOX: outbox.to_bytes()})


async def nothing_to_send(partition: int, messages: list[Any]):
    yield Step(messages[-1].offset)


def processing() -> tuple[ExactlyOnce, Table, Producer]:
    table, producer = Table(), Producer()
    return ExactlyOnce("unused", TOPIC, table, POSITION, lambda: producer, outbox_key=OUTBOX), table, producer  # type: ignore[arg-type]


def test_an_outbox_recovered_after_a_resend_is_sent_at_the_next_resend_and_only_then_committed():
    async def scenario() -> list[object]:
        exactly_once, table, producer = processing()
        assigned = {TopicPartition(TOPIC, 0)}
        await exactly_once.resend(assigned)  # a seek in the middle of recovery: nothing stored yet
        seen: list[object] = [list(producer.sent)]
        recovered(table, 0, 71, b"delta 0:71")  # recovery applies the previous holder's last write
        seen.append(exactly_once.positions.committable(assigned))  # not known to be sent: not committed
        await exactly_once.resend(assigned)  # Faust's seek once recovery ended
        seen += [list(producer.sent), exactly_once.positions.committable(assigned)]
        await exactly_once.resend(assigned)  # known to be sent now: not again
        seen.append(list(producer.sent))
        return seen

    assert asyncio.run(scenario()) == [
        [],
        {},
        [b"delta 0:71"],
        {TopicPartition(TOPIC, 0): 72},
        [b"delta 0:71"],
    ]


def test_the_first_run_after_recovery_sends_the_recovered_outbox_before_applying_anything():
    async def scenario() -> tuple[list[bytes], list[int]]:
        exactly_once, table, producer = processing()
        await exactly_once.resend({TopicPartition(TOPIC, 0)})
        recovered(table, 0, 71, b"delta 0:71")
        applied: list[int] = []

        async def steps(partition: int, messages: list[Any]):
            applied.extend(m.offset for m in messages)
            producer.sent.append(b"applied %d" % messages[-1].offset)
            yield Step(messages[-1].offset)

        await exactly_once.process([Message(0, 70), Message(0, 71), Message(0, 72)], steps)
        return producer.sent, applied

    sent, applied = asyncio.run(scenario())
    assert sent == [b"delta 0:71", b"applied 72"]
    assert applied == [72]


def test_a_revoked_partition_is_neither_applied_nor_committed_until_assigned_again():
    async def scenario() -> tuple[bytes | None, dict[TopicPartition, int], dict[TopicPartition, int]]:
        exactly_once, table, _ = processing()
        tp = TopicPartition(TOPIC, 0)
        await exactly_once.resend({tp})
        await exactly_once.process([Message(0, 0)], nothing_to_send)
        await exactly_once.forget({tp})
        await exactly_once.process([Message(0, 1)], nothing_to_send)  # taken before the rebalance
        (position,) = table.get_many(0, [POSITION])
        revoked = exactly_once.positions.committable({tp})
        await exactly_once.resend({tp})
        return position, revoked, exactly_once.positions.committable({tp})

    assert asyncio.run(scenario()) == (b"0", {}, {TopicPartition(TOPIC, 0): 1})


def test_a_stopping_table_s_positions_are_not_committed_nor_read():
    # A worker's last commit may come after its tables closed their stores: reading a
    # position then would open a store again, under the lock its closing one still holds.
    table = Table()
    table.partitions[1] = {POSITION: b"41"}
    positions = Positions("unused", TOPIC, table, POSITION)  # type: ignore[arg-type]
    assigned = {TopicPartition(TOPIC, 1)}
    assert positions.committable(assigned) == {TopicPartition(TOPIC, 1): 42}
    table.should_stop = True
    table.get_many = None  # type: ignore[assignment,method-assign]  # must not be called
    assert positions.committable(assigned) == {}
