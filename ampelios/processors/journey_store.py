"""Journeys in the ``journeys`` table, whole or in chunks (see :func:`store_journey`).

Readers get whole journey values; writers give whole values and get the pairs to store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ampelios.core.journeys import (
    CHUNK_EVENTS,
    CHUNKED,
    MERGED,
    JourneyBatch,
    chunk_count,
    chunk_key,
    join_journey,
    store_journey,
)
from ampelios.engine.batch_table import BatchTable


def read_journeys(table: BatchTable, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
    """The whole journeys stored under ``keys`` in ``partition`` (``None``: no journey)."""
    values = table.get_many(partition, keys)
    for i in [i for i, v in enumerate(values) if v is not None and v[1] & CHUNKED]:  # rare: long journeys
        head = values[i]
        assert head is not None
        chunks = table.get_many(partition, [chunk_key(keys[i], c) for c in range(chunk_count(head))])
        values[i] = join_journey(head, chunks)
    return values


def read_journey(table: BatchTable, key: bytes) -> bytes | None:
    """The whole journey stored under ``key``, whichever local partition holds it."""
    value = table.get(key)
    if value is None or not (n := chunk_count(value)):
        return value
    return join_journey(value, [table.get(chunk_key(key, c)) for c in range(n)])


def scan_journeys(table: BatchTable, partition: int, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, whole journey) of every journey of ``partition`` with ``start <= key < stop``,
    in key order, lazily (a long journey's chunks are read with its head; a visitor merged
    into another has none)."""
    for key, value in table.scan(partition, start, stop):
        if b"#" in key or value[1] & MERGED:
            continue  # a chunk, read with its head; a visitor merged into another, no journey
        if value[1] & CHUNKED:
            value = join_journey(
                value, table.get_many(partition, [chunk_key(key, c) for c in range(chunk_count(value))])
            )
        yield key, value


def store(
    writes: dict[bytes, bytes | None],
    keys: Sequence[bytes],
    old: Sequence[bytes | None],
    batch: JourneyBatch,
    indices: np.ndarray,
    first: np.ndarray | None = None,
    summaries: list[np.ndarray] | None = None,
) -> None:
    """Add to ``writes`` what to store for journeys ``indices`` of ``batch`` (whole
    values ``old`` before it), under ``keys``: each from its row ``first[i]``, with
    ``summaries`` (:meth:`JourneyBatch.first_kept` or :meth:`JourneyBatch.summarize`;
    all rows and the batch's summaries when ``None``)."""
    values = batch.encode(indices, first, summaries)
    positions = indices.tolist()
    counts = np.diff(batch.starts)
    kept = batch.starts[1:] - (batch.starts[:-1] if first is None else first)
    long = (kept[indices] > CHUNK_EVENTS) | (counts[indices] - batch.added[indices] > CHUNK_EVENTS)  # now or before
    if not long.any():  # the usual case: every value whole, no per-journey work
        writes.update(zip((keys[i] for i in positions), values))
        return
    for i, value, chunked in zip(positions, values, long.tolist()):
        for c, stored in store_journey(old[i], value) if chunked else [(-1, value)]:
            writes[keys[i] if c < 0 else chunk_key(keys[i], c)] = stored


def drop_chunks(writes: dict[bytes, bytes | None], key: bytes, whole: bytes) -> None:
    """Add to ``writes`` the deletion of the chunks of the journey ``whole`` stored under
    ``key`` (none unless it is long), whose head gives way to something else."""
    writes.update((chunk_key(key, c), None) for c, _ in store_journey(None, whole) if c >= 0)
