"""The outputs of a run of events messages, stored with the state that produced them.

A run of messages of one partition is applied as steps
(:mod:`ampelios.engine.exactly_once`): each step's journeys, its position and its outputs
-- the population delta for the model's owner, the changed visitors for SQL, the segment
changes, forwarded events -- go into one atomic write of the ``journeys`` table under
:data:`OUTBOX_KEY`, and only then are the outputs sent.
Which messages form a run depends on timing, so the outputs of a run cannot be produced
again after a crash; storing them makes them exact: a crash after the write sends the
stored outbox again (every receiver is idempotent: the owner skips a delta whose offset
it has applied, Postgres upserts), a crash before it leaves nothing behind.

The outbox of a partition is sent again whenever the partition is assigned (after table
recovery, before its next message is applied) and before the next run of a partition
whose last send failed. Until its outbox is sent, a partition's position is not
committed: a lag of 0 means that the outputs of everything applied are in their topics.

>>> box = Outbox()
>>> box.add("segment-changes", b"1:42", b"{}")
>>> Outbox.from_bytes(box.to_bytes()).records
[('segment-changes', b'1:42', b'{}', None)]
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson

from ampelios.engine.changelog import pack_pairs, unpack_pairs

OUTBOX_KEY = b"~outbox"

Record = tuple[str, bytes | None, bytes, int | None]  # topic, key, value, partition (None: by key)


class Outbox:
    """Records to send, in order."""

    def __init__(self, records: list[Record] | None = None) -> None:
        self.records: list[Record] = records or []

    def add(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self.records.append((topic, key, value, partition))

    def to_bytes(self) -> bytes:
        headers = [orjson.dumps([t, k.decode() if k is not None else None, p]) for t, k, _, p in self.records]
        return pack_pairs(headers, [v for _, _, v, _ in self.records])

    @classmethod
    def from_bytes(cls, blob: bytes) -> Outbox:
        records: list[Record] = []
        for header, value in unpack_pairs(blob):
            topic, key, partition = orjson.loads(header)
            assert value is not None
            records.append((topic, key.encode() if key is not None else None, value, partition))
        return cls(records)

    async def send(self, producer: Any) -> None:
        """Send every record with Faust's ``producer``; return once the broker acknowledged all."""
        sent: list[Awaitable[Any]] = [
            await producer.send(topic, key, value, partition, None, None)
            for topic, key, value, partition in self.records
        ]
        await asyncio.gather(*sent)
