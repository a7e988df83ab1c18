"""The ``limit`` phase: a plain aiokafka consumer reading every message (the broker's own speed)."""

from __future__ import annotations

import asyncio

from ampelios.bench.harness import SHAPES, Bench, Row, consume, fresh_broker, produce, shapes


def phase_limit(bench: Bench) -> list[Row]:
    """A plain aiokafka consumer: what the broker and the client library can deliver."""
    rows = []
    for shape, messages, n_events in shapes(bench):
        with fresh_broker(bench.workdir(f"limit-{shape}")) as url:
            partitions = bench.settings.partitions
            produced = asyncio.run(produce(url, bench.topic, partitions, messages))
            read, seconds, first_to_last = asyncio.run(
                consume(url, bench.topic, partitions, len(messages), bench.options.timeout)
            )
        error = (
            None
            if read >= len(messages)
            else f"read {read} of {len(messages)} messages within {bench.options.timeout:.0f}s"
        )
        rows.append(
            Row(
                f"limit.{shape}",
                f"limit: aiokafka, {SHAPES[shape]}",
                len(messages),
                n_events,
                seconds,
                notes=f"first fetch -> last record ({first_to_last:.2f}s from the first); produced in {produced:.1f}s",
                error=error,
                figures={"read": read, "first_to_last_seconds": first_to_last, "produce_seconds": produced},
            )
        )
    return rows
