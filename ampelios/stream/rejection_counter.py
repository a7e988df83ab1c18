"""Dead letters -> counts: how many rows and messages of each source were rejected.

Every worker counts the dead letters of the ``events-dlq`` partitions it holds under
``~rejected:<source>`` of the co-partitioned ``journeys`` table, so that ``/stats`` sums
them like the events; the position of each partition goes in the same write
(:class:`~ampelios.stream.exactly_once.ExactlyOnce`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ampelios.core.events import UNKNOWN_SOURCE
from ampelios.stream.batch_table import BatchTable
from ampelios.stream.exactly_once import Step
from ampelios.stream.pipeline import rejected_key


class RejectionCounter:
    """Counts dead letters per source in ``table`` (see the module docstring)."""

    def __init__(self, table: BatchTable) -> None:
        self.table = table

    async def steps(self, partition: int, messages: list[Any]) -> AsyncIterator[Step]:
        """One step: the counts of ``partition`` plus those of ``messages`` (in order,
        none counted yet); a record that names no source counts for UNKNOWN_SOURCE."""
        counts: dict[int, int] = {}
        for message in messages:
            try:
                source_id = int(orjson.loads(message.value)["source_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                source_id = UNKNOWN_SOURCE
            counts[source_id] = counts.get(source_id, 0) + 1
        keys = [rejected_key(s) for s in counts]
        stored = self.table.get_many(partition, keys)
        values = [b"%d" % (int(old or 0) + n) for old, n in zip(stored, counts.values())]
        yield Step(messages[-1].offset, dict(zip(keys, values)))
