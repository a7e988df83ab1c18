"""Which partition owns a visitor's events, and routing events to it.

The message key of an event is ``b"{source_id}:{visitorid}"`` and the partition that owns
a visitor is the one Kafka's default partitioner gives that key (murmur2, as in the Java
client and aiokafka). Ampelios's own replay sends every event to its owner. Any other
producer may key and partition as it likes (librdkafka's CRC32 ``consistent_random``,
null keys, round robin): the worker applies a message's events of the visitors the
partition owns and forwards the others to their owners (:func:`route`), so a visitor's
journey is built in one place whatever the producer did. Keying by ``source:visitor``
with murmur2 saves that hop.

>>> visitor_key(1, 257598)
b'1:257598'
>>> int(partitions_for([1], [257598], 8)[0]) == partition_for(1, 257598, 8)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ampelios.core.events import EventBatch

_M = np.uint32(0x5BD1E995)
_SEED = 0x9747B28C


def visitor_key(source_id: int, visitorid: int) -> bytes:
    """The Kafka message key (and table key) of one visitor of one source."""
    return b"%d:%d" % (source_id, visitorid)


def partition_for(source_id: int, visitorid: int, partitions: int) -> int:
    """Partition of one visitor, exactly as Kafka's default partitioner would choose it."""
    return int(partitions_for([source_id], [visitorid], partitions)[0])


def _murmur2_same_length(data: np.ndarray) -> np.ndarray:
    """murmur2 of each row of a (n, length) uint8 matrix, vectorized (uint32 wraps)."""
    n, length = data.shape
    h = np.full(n, _SEED ^ length, dtype=np.uint32)
    with np.errstate(over="ignore"):
        words = length // 4
        if words:
            k = data[:, : words * 4].reshape(n, words, 4).astype(np.uint32)
            k = k[:, :, 0] | (k[:, :, 1] << 8) | (k[:, :, 2] << 16) | (k[:, :, 3] << 24)
            for i in range(words):
                w = k[:, i] * _M
                w ^= w >> 24
                w *= _M
                h *= _M
                h ^= w
        tail = data[:, words * 4 :].astype(np.uint32)
        extra = length % 4
        if extra >= 3:
            h ^= tail[:, 2] << 16
        if extra >= 2:
            h ^= tail[:, 1] << 8
        if extra >= 1:
            h ^= tail[:, 0]
            h *= _M
        h ^= h >> 13
        h *= _M
        h ^= h >> 15
    return h


def _decimal_lengths(x: np.ndarray) -> np.ndarray:
    """Digits of each non-negative int64 in decimal (1 for 0)."""
    lengths = np.ones(len(x), dtype=np.int64)
    for k in range(1, 19):  # 10**18 <= x < 2**63 has 19 digits
        lengths += x >= 10**k
    return lengths


def _decimal_columns(x: np.ndarray, length: int) -> list[np.ndarray]:
    """The ASCII digits of each of ``x`` (all ``length`` digits long), one column per place."""
    return [((x // 10 ** (length - 1 - j)) % 10 + 48).astype(np.uint8) for j in range(length)]


def partitions_for(
    source_ids: Sequence[int] | np.ndarray, visitorids: Sequence[int] | np.ndarray, partitions: int
) -> np.ndarray:
    """Partition of every (source, visitor) pair of non-negative ids; equal to
    :func:`partition_for` each. The keys are built as digit matrices, one per pair of
    id lengths: no Python work per pair."""
    sources = np.asarray(source_ids, dtype=np.int64)
    visitors = np.asarray(visitorids, dtype=np.int64)
    if (sources < 0).any() or (visitors < 0).any():
        raise ValueError("source and visitor ids must be non-negative")
    shape = _decimal_lengths(sources) * 32 + _decimal_lengths(visitors)  # (source digits, visitor digits)
    result = np.empty(len(sources), dtype=np.int64)
    for code in np.unique(shape).tolist():
        rows = np.flatnonzero(shape == code)
        s, v = sources[rows], visitors[rows]
        colon = np.full(len(rows), ord(":"), dtype=np.uint8)
        data = np.column_stack([*_decimal_columns(s, code // 32), colon, *_decimal_columns(v, code % 32)])
        h = _murmur2_same_length(data)
        result[rows] = (h & np.uint32(0x7FFFFFFF)).astype(np.int64) % partitions
    return result


@dataclass
class Routed:
    """The events of a run split by owner: ``own`` stay (input order kept), ``forwarded``
    are (partition, events of one source) messages for the partitions that own them."""

    own: EventBatch
    forwarded: list[tuple[int, EventBatch]]

    @property
    def forwarded_events(self) -> int:
        return sum(len(events) for _, events in self.forwarded)


def route(events: EventBatch, partition: int, partitions: int, max_events: int) -> Routed:
    """Split ``events`` that arrived on ``partition`` into those it owns and messages of at
    most ``max_events`` events for each other owner, per source, in input order.

    >>> events = EventBatch.from_columns([1, 1], [0, 0], [257598, 3], [0, 0], [-1, -1], [-1, -1])
    >>> owners = partitions_for([1, 1], [257598, 3], 8).tolist()
    >>> routed = route(events, owners[0], 8, 100)
    >>> routed.own.visitorid.tolist(), [(p, e.visitorid.tolist()) for p, e in routed.forwarded] == [(owners[1], [3])]
    ([257598], True)
    """
    owner = partitions_for(events.source_id, events.visitorid, partitions)
    here = owner == partition
    if here.all():
        return Routed(events, [])
    forwarded: list[tuple[int, EventBatch]] = []
    away = np.flatnonzero(~here)
    order = away[np.lexsort((events.source_id[away], owner[away]))]  # by owner, then source; stable
    keys = owner[order] * 2**32 + events.source_id[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(order)]):
        for i in range(start, end, max_events):
            rows = order[i : min(i + max_events, end)]
            forwarded.append((int(owner[rows[0]]), events.take(rows)))
    return Routed(events.take(here), forwarded)
