"""A changelog of one record per batch that Kafka's compaction keeps near the live state.

A :class:`~ampelios.engine.batch_table.BatchTable` sends one changelog record per batch.
Keyed by its batch, no record would ever be superseded and the changelog would keep every
batch for ever. Here each record is keyed by a **slot** (``ring:<n>``), and besides the
batch's own pairs it rewrites, whole, the next range of the partition's keys in key order
(two ranges when it goes past the last key and on from the first) -- a *cursor* that sweeps
the keys again and again (each sweep a *lap*), about :data:`REFRESH_RATIO` times the
batch's bytes per record, never more than a lap. A slot is used again only
once the cursor has gone a whole lap since that slot's last record: by then every key that
record set or deleted has been rewritten by a later record, so the record may go.

**The contract.** Recovery applies records in offset order; a record deletes its range,
then sets its pairs in order (:func:`apply_record`). Let a changelog lose any records that
a later record of the same key supersedes, which is all Kafka's compaction ever removes:
the table recovered from what is left, from empty or from local files at any offset, equals
the table written. (For every key, the last record to touch it is never superseded: a
later record of its slot comes only after a whole lap, which touched the key again.)
Once compaction has run, the changelog holds about one lap of records: the live state
once, plus the batches of one lap (``1 / REFRESH_RATIO`` of it), plus Kafka's overhead.

The ring's own bookkeeping (the cursor, and when each slot was last written) is kept in
the table under keys that start with ``\\x00``, so it is recovered with the rest; table
keys must therefore start with a byte above ``\\x00`` and below ``\\xff``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import rocksdict

REFRESH_RATIO = 2.0  # bytes of the table rewritten per byte a batch writes
REFRESH_FLOOR = 1024  # bytes rewritten per record at least
RECORD_PREFIX = b"ring:"  # changelog record keys: RECORD_PREFIX + slot number
CURSOR_KEY = b"\x00ring"  # -> lap, next slot, next sequence number, cursor key
SLOTS_PREFIX = b"\x00ring:"  # + sequence number (big-endian u64) -> slot, lap, cursor key then
END = b"\xff"  # above every table key

_COUNT = np.dtype("<u4")
_DELETED = 0xFFFFFFFF  # value length that marks a deletion
_CURSOR = struct.Struct(">QQQ")
_SLOT = struct.Struct(">QQ")

Pairs = Sequence[tuple[bytes, bytes | None]]


def pack_pairs(keys: Sequence[bytes], values: Sequence[bytes | None]) -> bytes:
    """``count, key lengths, value lengths, keys, values`` (little-endian u32 lengths; a
    value of ``None``, a deletion, has length 0xFFFFFFFF and no bytes)."""
    header = np.empty(1 + 2 * len(keys), dtype=_COUNT)
    header[0] = len(keys)
    header[1 : 1 + len(keys)] = [len(k) for k in keys]
    header[1 + len(keys) :] = [_DELETED if v is None else len(v) for v in values]
    return header.tobytes() + b"".join(keys) + b"".join(v for v in values if v is not None)


def unpack_pairs(blob: bytes) -> list[tuple[bytes, bytes | None]]:
    """The (key, value) pairs :func:`pack_pairs` packed, in order."""
    (n,) = np.frombuffer(blob, dtype=_COUNT, count=1)
    n = int(n)
    lengths = np.frombuffer(blob, dtype=_COUNT, count=2 * n, offset=_COUNT.itemsize).astype(np.int64)
    deleted = lengths == _DELETED
    lengths[deleted] = 0
    ends = (np.cumsum(lengths) + _COUNT.itemsize * (1 + 2 * n)).tolist()
    starts = [_COUNT.itemsize * (1 + 2 * n), *ends[:-1]]
    pieces: list[bytes | None] = [None if gone else blob[a:b] for a, b, gone in zip(starts, ends, deleted.tolist())]
    return list(zip(pieces[:n], pieces[n:]))  # type: ignore[arg-type]


def add_pairs(write: rocksdict.WriteBatch, pairs: Iterable[tuple[bytes, bytes | None]]) -> None:
    """Put each (key, value) into ``write``; a value of ``None`` deletes its key."""
    for key, value in pairs:
        if value is None:
            write.delete(key)
        else:
            write.put(key, value)


class Store(Protocol):
    """What the ring reads of a partition's RocksDB database (a ``rocksdict.Rdict``)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self, from_key: bytes) -> Iterable[tuple[bytes, bytes]]: ...


@dataclass
class Record:
    """The next changelog record of a partition: send ``tombstones`` (record keys whose
    slots are retired) and then ``value`` under ``key``; once acknowledged, apply
    ``writes`` (the batch's pairs and the ring's bookkeeping) to the local store."""

    key: bytes
    value: bytes
    writes: list[tuple[bytes, bytes | None]]
    tombstones: list[bytes] = field(default_factory=list)


def next_record(store: Store, pairs: Pairs, skip: bytes = b"") -> Record:
    """The record that writes ``pairs`` (key order free; ``None`` deletes) to ``store``,
    rewriting the next range of its other keys (but ``skip``, such as the persisted offset):
    about :data:`REFRESH_RATIO` times the bytes of ``pairs``, at most one lap."""
    keys = [k for k, _ in pairs]
    if keys and not (min(keys) >= b"\x01" and max(keys) < END):
        raise ValueError("table keys must start with a byte above \\x00 and below \\xff")
    stored = store.get(CURSOR_KEY)
    lap, next_slot, next_seq = _CURSOR.unpack_from(stored) if stored else (0, 0, 0)
    low = stored[_CURSOR.size :] if stored else b""

    budget = max(REFRESH_FLOOR, REFRESH_RATIO * sum(len(k) + len(v or b"") for k, v in pairs))
    written = {*keys, skip}  # what the record sets anyway, and what it must not
    refresh: tuple[list[bytes], list[bytes]] = ([], [])
    budget, high = _take(store, low, None, budget, written, refresh)
    if high is not None:
        ranges, position = [(low, high), (low, low)], (lap, high)
    else:  # the end of the keys: on from the start, up to where this record began at most
        _, wrapped = _take(store, b"", low, budget, written, refresh)
        ranges = [(low, None), (b"", low if wrapped is None else wrapped)]
        position = (lap + 1, ranges[1][1])

    writes: list[tuple[bytes, bytes | None]] = list(pairs)
    reusable = _slots_written_a_lap_before(store, position)
    tombstones = [RECORD_PREFIX + b"%d" % slot for _, slot in reusable[:-1]]  # more than a lap needs
    writes += [(seq_key, None) for seq_key, _ in reusable]
    if reusable:
        slot = reusable[-1][1]
    else:
        slot, next_slot = next_slot, next_slot + 1
    writes.append((SLOTS_PREFIX + next_seq.to_bytes(8, "big"), _SLOT.pack(slot, position[0]) + position[1]))
    writes.append((CURSOR_KEY, _CURSOR.pack(position[0], next_slot, next_seq + 1) + position[1]))
    value = pack_pairs(
        [*(k for k, _ in ranges), *refresh[0], *(k for k, _ in writes)],
        [*(v for _, v in ranges), *refresh[1], *(v for _, v in writes)],
    )
    return Record(RECORD_PREFIX + b"%d" % slot, value, writes, tombstones)


def _take(
    store: Store,
    low: bytes,
    stop: bytes | None,
    budget: float,
    written: set[bytes],
    into: tuple[list[bytes], list[bytes]],
) -> tuple[float, bytes | None]:
    """Append to ``into`` (keys, values) the pairs of ``store`` from ``low`` on, below
    ``stop`` (``None``: to the end) and not ``written``, until they hold ``budget`` bytes.
    Returns the budget left and the first key not taken (``None``: none left below ``stop``)."""
    keys, values = into
    pairs = iter(store.items(from_key=low))
    for key, value in pairs:  # the hot loop of a large batch: as little as possible per key
        if stop is not None and key >= stop:
            return budget, None
        if key in written:
            continue
        keys.append(key)
        values.append(value)
        budget -= len(key) + len(value)
        if budget <= 0:
            break
    else:
        return budget, None
    for key, _ in pairs:
        return budget, None if stop is not None and key >= stop else key
    return budget, None


def _slots_written_a_lap_before(store: Store, position: tuple[int, bytes]) -> list[tuple[bytes, int]]:
    """(bookkeeping key, slot) of the slots whose last record was written a whole lap or
    more before the cursor reached ``position``, oldest first."""
    found = []
    for key, value in store.items(from_key=SLOTS_PREFIX):
        if not key.startswith(SLOTS_PREFIX):
            break
        slot, lap = _SLOT.unpack_from(value)
        if position < (lap + 1, value[_SLOT.size :]):
            break  # the slots are in the order they were written, the cursor's order
        found.append((key, slot))
    return found


def apply_record(write: rocksdict.WriteBatch, key: bytes | None, value: bytes | None) -> bool:
    """Recovery: add one changelog record to ``write``; whether it held any change. A ring
    record deletes its two ranges (its first two pairs, ``[key, value)``; ``None``: to the
    end) and sets its other pairs in order; a tombstone holds nothing; a record of
    older versions (keyed by its batch) sets its pairs."""
    if value is None:
        return False
    pairs = unpack_pairs(value)
    if key is not None and key.startswith(RECORD_PREFIX):
        for low, high in pairs[:2]:
            write.delete_range(low, END if high is None else high)
        pairs = pairs[2:]
    add_pairs(write, pairs)
    return True
