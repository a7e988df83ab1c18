"""The ``single`` phase: one event per message, produced as any producer would, until all are counted."""

from __future__ import annotations

import asyncio
import time

from ampelios.bench.harness import (
    Bench,
    Row,
    base_url,
    fresh_stack,
    produce,
    stack_settings,
    wait_for_reflection,
    worker_figures,
)
from ampelios.bench.report import _number


def phase_single(bench: Bench) -> list[Row]:
    """Ampelios, one event per message: produced straight to the events topic of a
    running worker until ``/stats`` counts them all and has nothing left to reflect."""
    w = bench.workload
    workdir = bench.workdir("single")
    with fresh_stack(stack_settings(bench, workdir), workdir, bench.profile("single")) as stack:
        base = base_url(stack)
        started = time.monotonic()
        produced = asyncio.run(produce(stack.settings.broker_url, bench.topic, bench.settings.partitions, w.singles))
        seen = wait_for_reflection(base, w.singles_distinct, started, bench.options.timeout)
        seconds = seen.reflected or time.monotonic() - started
        figures = {
            "reflected_events": seen.stats["events"],
            "expected_events": w.singles_distinct,
            "counted_seconds": seen.counted,
            "produce_seconds": produced,
            **worker_figures(stack),
            "stats_at_end": seen.stats,
        }
    notes = f"produce -> /stats lag 0 (all counted at {_number(seen.counted, 1)}s); produced in {produced:.1f}s"
    row = Row("single", "Ampelios: 1 event/msg", len(w.singles), seen.stats["events"], seconds, notes, figures=figures)
    row.error = seen.problem(w.singles_distinct, seconds)
    return [row]
