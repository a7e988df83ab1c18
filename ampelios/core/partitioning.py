"""Which partition a visitor's events go to.

The message key of an event is ``b"{source_id}:{visitorid}"`` and its partition is the
one Kafka's default partitioner gives that key (murmur2, as in the Java client and
aiokafka). Any producer that keys its messages this way lands every event of one visitor
of one source in one partition, so Ampelios's own batched replay and a plain
one-event-per-message producer can feed the same topic.

>>> visitor_key(1, 257598)
b'1:257598'
>>> int(partitions_for([1], [257598], 8)[0]) == partition_for(1, 257598, 8)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from aiokafka.partitioner import murmur2

_M = np.uint32(0x5BD1E995)
_SEED = 0x9747B28C


def visitor_key(source_id: int, visitorid: int) -> bytes:
    """The Kafka message key (and table key) of one visitor of one source."""
    return b"%d:%d" % (source_id, visitorid)


def partition_for(source_id: int, visitorid: int, partitions: int) -> int:
    """Partition of one visitor, exactly as Kafka's default partitioner would choose it."""
    return (murmur2(visitor_key(source_id, visitorid)) & 0x7FFFFFFF) % partitions


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


def partitions_for(
    source_ids: Sequence[int] | np.ndarray, visitorids: Sequence[int] | np.ndarray, partitions: int
) -> np.ndarray:
    """Partition of every (source, visitor) pair; equal to :func:`partition_for` each."""
    keys = [b"%d:%d" % pair for pair in zip(np.asarray(source_ids).tolist(), np.asarray(visitorids).tolist())]
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    result = np.empty(len(keys), dtype=np.int64)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        blob = b"".join([keys[i] for i in rows])
        data = np.frombuffer(blob, dtype=np.uint8).reshape(len(rows), int(length))
        h = _murmur2_same_length(data)
        result[rows] = (h & np.uint32(0x7FFFFFFF)).astype(np.int64) % partitions
    return result
