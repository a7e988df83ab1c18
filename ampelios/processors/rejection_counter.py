"""Dead letters -> counts: how many rows and messages of each source were rejected, and why.

Every worker counts the dead letters of the ``events-dlq`` partitions it holds under
``~rejected:<source>`` of the co-partitioned ``journeys`` table, so that ``/stats`` sums
them like the events, and sums up their reasons with a few examples each under
``~rejections:<source>`` (a :class:`~ampelios.core.rejections.RejectionSummary`, which
``/rejections`` merges). A replay's count of rows it ignored (``AMPELIOS_EVENT_MAP``)
comes the same way and is added under ``~ignored:<source>``, beside the events the
worker itself ignored. The position of each partition goes in the same write
(:class:`~ampelios.engine.exactly_once.ExactlyOnce`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ampelios.core.events import UNKNOWN_SOURCE, Rejection
from ampelios.core.rejections import RejectionSummary
from ampelios.engine.batch_table import BatchTable
from ampelios.engine.exactly_once import Step
from ampelios.runtime.pipeline import ignored_key, rejected_key, rejections_key


class RejectionCounter:
    """Counts dead letters per source in ``table`` (see the module docstring)."""

    def __init__(self, table: BatchTable) -> None:
        self.table = table

    async def steps(self, partition: int, messages: list[Any]) -> AsyncIterator[Step]:
        """One step: the counts of ``partition`` plus those of ``messages`` (in order,
        none counted yet); a record that names no source counts for UNKNOWN_SOURCE."""
        by_source: dict[int, list[Rejection]] = {}
        ignored: dict[int, int] = {}
        for message in messages:
            source_id, rejection = _read(message, partition)
            if isinstance(rejection, int):
                ignored[source_id] = ignored.get(source_id, 0) + rejection
            else:
                by_source.setdefault(source_id, []).append(rejection)
        keys = [ignored_key(source_id) for source_id in ignored]
        counts = self.table.get_many(partition, keys)
        writes: dict[bytes, bytes | None] = {
            key: b"%d" % (int(old or 0) + n) for key, old, n in zip(keys, counts, ignored.values(), strict=True)
        }
        for source_id, rejections in by_source.items():
            keys = [rejected_key(source_id), rejections_key(source_id)]
            count, stored = self.table.get_many(partition, keys)
            summary = RejectionSummary.from_bytes(stored)
            summary.add(rejections)
            writes.update(zip(keys, [b"%d" % (int(count or 0) + len(rejections)), summary.to_bytes()]))
        yield Step(messages[-1].offset, writes)


def _read(message: Any, partition: int) -> tuple[int, Rejection | int]:
    """The source and rejection a dead letter holds (``replay.rejection_record``), or the
    number of rows a replay ignored (``replay.ignored_record``); a record that cannot be
    read is a rejection of UNKNOWN_SOURCE, with its raw bytes."""
    try:
        record = orjson.loads(message.value)
        if "ignored" in record:
            return int(record["source_id"]), int(record["ignored"])
        return int(record["source_id"]), Rejection(str(record["position"]), str(record["reason"]), str(record["raw"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raw = bytes(message.value or b"")[:200].decode("utf-8", "replace")
        where = f"{message.topic}:{partition}:{message.offset}"
        return UNKNOWN_SOURCE, Rejection(where, "unreadable dead letter", raw)
