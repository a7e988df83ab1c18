"""A Faust table written one batch at a time, with one changelog record per batch.

A Faust ``Table`` sends one changelog record per key it sets; at Retailrocket scale that
is 1.4 million records through a pure-Python producer, which costs more than all the
rest of the pipeline (docs/performance.md). :class:`BatchTable` keeps everything else of
a Faust table -- RocksDB files per partition, a changelog topic, persisted offsets,
recovery on start and rebalance, reads with ``get`` and ``items`` -- but writes with
:meth:`BatchTable.write`: one changelog record holding every (key, value) pair of the
batch, acknowledged, then one RocksDB write batch holding those pairs *and* the record's
offset. Recovery applies those records in order, so the table ends exactly as if every
pair had been set one by one; and as the local files never hold what the changelog lacks
nor lag behind their own persisted offset, a worker killed at any moment keeps them and
its successor reads only the changelog records after that offset.

Each record also rewrites a range of the partition's keys and is keyed by a slot that a
later record takes over once every key has been rewritten since
(:mod:`ampelios.engine.changelog`), so that Kafka's compaction keeps the changelog near the
live state, however long its history. Values are bytes; keys start with a byte above
``\x00`` (the ring's own keys) and below ``\xff``; the store must be RocksDB
(``store="rocksdb://"``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import faust
import rocksdict

from ampelios.engine.changelog import add_pairs, apply_record, next_record
from ampelios.internals import persisted_offset_key, store_db


class BatchTable(faust.Table):  # type: ignore[misc]
    """A bytes -> bytes table with batch reads and writes (see the module docstring).

    Set values only with :meth:`write`, from an agent processing ``partition``.
    """

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._writing: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.recovered = 0  # changelog records applied in recovery since the worker started

    def _db(self, partition: int) -> rocksdict.Rdict:
        return store_db(self.data, partition)

    def get_many(self, partition: int, keys: Iterable[bytes]) -> list[bytes | None]:
        """Current values of ``keys`` in ``partition`` (``None`` where absent)."""
        db = self._db(partition)
        return [db.get(k) for k in keys]

    def scan(self, partition: int, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of ``partition`` with ``start <= key < stop``, in key order, lazily."""
        for key, value in self._db(partition).items(from_key=start):
            if key >= stop:
                return
            yield key, value

    def items_between(self, partition: int, start: bytes, stop: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of ``partition`` with ``start <= key < stop``, in key order."""
        return list(self.scan(partition, start, stop))

    def items_with_prefix(self, partition: int, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of ``partition`` whose key starts with ``prefix``, in key order."""
        return self.items_between(partition, prefix, prefix + b"\xff")

    async def write(self, partition: int, keys: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """Set every key to its value (``None``: delete it) in ``partition``: one changelog
        record (:func:`~ampelios.engine.changelog.next_record`), acknowledged by the
        broker, then one RocksDB write batch holding the values and that record's offset.
        Writes of one partition are serialized, so its persisted offset only grows.

        The local store therefore never holds what its changelog lacks, and its persisted
        offset (where recovery resumes reading the changelog) always names the last record
        it reflects: a worker killed at any point restarts from its local files plus the
        changelog records after that offset. Faust's own table writes set the persisted
        offset apart from the value, when the broker acknowledges (killed in between, the
        value is lost), and go through a producer buffer that its commit does not always
        drain (``ProducerBuffer.flush_atmost`` gives up after 0.1 s).
        """
        if not keys:
            return
        async with self._writing[partition]:
            db = self._db(partition)
            offset_key = persisted_offset_key(self.data)
            record = next_record(db, list(zip(keys, values)), skip=offset_key)
            sent = [await self._send(partition, key, None) for key in record.tombstones]
            sent.append(await self._send(partition, record.key, record.value))
            offset = max([(await future).offset for future in sent])  # refused: the local state stays
            write = rocksdict.WriteBatch(raw_mode=True)
            add_pairs(write, record.writes)
            write.put(offset_key, b"%d" % offset)
            db.write(write)

    async def _send(self, partition: int, key: bytes, value: bytes | None) -> Any:
        return await self.changelog_topic.send(
            key=key, value=value, partition=partition, key_serializer="raw", value_serializer="raw"
        )

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        """Recovery: apply the records in order (:func:`apply_records`)."""
        self.recovered += apply_records(self.data, batch)


def apply_records(store: Any, batch: Iterable[Any]) -> int:
    """Apply changelog records in order to a RocksDB ``store``
    (:func:`~ampelios.engine.changelog.apply_record`): each partition's changes and its
    newest offset in one write batch. Returns the records that held changes."""
    writes: defaultdict[int, rocksdict.WriteBatch] = defaultdict(lambda: rocksdict.WriteBatch(raw_mode=True))
    offsets: dict[int, int] = {}
    applied = 0
    for event in batch:
        message = event.message
        offsets[message.partition] = max(message.offset, offsets.get(message.partition, -1))
        applied += apply_record(writes[message.partition], message.key, message.value)
    for partition, offset in offsets.items():
        writes[partition].put(persisted_offset_key(store), b"%d" % offset)
        store_db(store, partition).write(writes[partition])
    return applied


class PublishedTable(faust.GlobalTable):  # type: ignore[misc]
    """A one-partition global bytes -> bytes table (every worker holds all of it), set
    with :meth:`publish` or :meth:`publish_many` from anywhere, not only while a stream
    event is being handled (Faust's ``table[key] = value`` needs one)."""

    def __init__(self, app: Any, **kwargs: Any) -> None:  # what app.GlobalTable passes
        # Every worker holds the global table's partition as an *active* one, whose
        # changelog records Faust applies only in buffers of recovery_buffer_size (1000 by
        # default) once recovery is over: a worker that does not publish would see a model
        # only after 1000 publications. One record at a time, as Faust's docs advise.
        super().__init__(
            app, is_global=True, recovery_buffer_size=1, standby_buffer_size=1, beacon=app.tables.beacon, **kwargs
        )

    async def publish(self, key: bytes, value: bytes | None) -> None:
        """Set ``key`` (``None``: delete it) for every worker: a changelog record,
        acknowledged, then the change and that record's offset in one local write (as
        :meth:`BatchTable.write`)."""
        sent = await self.changelog_topic.send(
            key=key, value=value, partition=0, key_serializer="raw", value_serializer="raw"
        )
        self._write_local([(key, value)], (await sent).offset)

    async def publish_many(self, pairs: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Set each key (``None``: delete it) for every worker: a changelog record each,
        sent together and acknowledged together, then the changes and the last record's
        offset in one local write."""
        if not pairs:
            return
        sent = [
            await self.changelog_topic.send(
                key=key, value=value, partition=0, key_serializer="raw", value_serializer="raw"
            )
            for key, value in pairs
        ]
        offsets = [(await future).offset for future in sent]
        self._write_local(pairs, max(offsets))

    def _write_local(self, pairs: Sequence[tuple[bytes, bytes | None]], offset: int) -> None:
        """Write ``pairs`` and the changelog offset they came with, in one write batch."""
        write = rocksdict.WriteBatch(raw_mode=True)
        add_pairs(write, pairs)
        write.put(persisted_offset_key(self.data), b"%d" % offset)
        store_db(self.data, 0).write(write)
