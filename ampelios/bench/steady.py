"""The ``steady`` phase: one event per message at a steady rate, latency timed by probe visitors."""

from __future__ import annotations

import asyncio

from ampelios.bench.harness import (
    Bench,
    Row,
    after_sending,
    base_url,
    distinct_events,
    fresh_stack,
    percentiles,
    stack_settings,
)
from ampelios.bench.probes import Schedule, run_steady


def phase_steady(bench: Bench) -> list[Row]:
    """Ampelios at a fixed rate, one event per message, with probes for the latency from
    produce to ``/visitors`` answering."""
    options = bench.options
    schedule = Schedule.of(bench.workload, bench.settings.partitions, options.rate, options.steady_seconds)
    workdir = bench.workdir("steady")
    with fresh_stack(stack_settings(bench, workdir), workdir, bench.profile("steady")) as stack:
        base = base_url(stack)
        run = asyncio.run(run_steady(stack.settings.broker_url, bench.topic, base, schedule, options))
        stats, figures = after_sending(stack, options.timeout)
    watch = run.watch
    p50, p99, top = percentiles(watch.latencies)
    ack_p50, ack_p99, ack_top = percentiles(watch.after_ack)
    failures = watch.not_visible
    distinct = distinct_events(schedule.events.take(slice(0, run.sent)))
    figures.update(
        target_rate=options.rate,
        achieved_rate=run.sent / run.seconds if run.seconds else None,
        probes=watch.probes,
        probes_visible=len(watch.latencies),
        probes_not_visible=failures,
        latency_ms={"p50": p50, "p99": p99, "max": top},
        after_ack_latency_ms={"p50": ack_p50, "p99": ack_p99, "max": ack_top},
        polls=watch.polls,
        sent_distinct_events=distinct,
        stats_at_end=stats,
    )
    latency = "-" if p50 is None or p99 is None else f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {top:,.0f} ms"
    if ack_p50 is not None and ack_p99 is not None:
        latency += f" (from the broker's ack: p50 {ack_p50:,.0f} ms, p99 {ack_p99:,.0f} ms)"
    counted = f"{stats['events']:,}" if stats is not None else "?"
    row = Row(
        "steady",
        f"Ampelios: steady {options.rate:g} ev/s, 1 event/msg",
        run.sent,
        run.sent,
        run.seconds,
        notes=f"events/s as sent; {counted} of {distinct:,} reflected at the end; "
        f"{watch.probes} probes produce -> /visitors 200: {latency}",
        figures=figures,
    )
    if failures:
        row.error = f"{failures} of {watch.probes} probes not visible {options.probe_timeout:.0f}s after producing"
    return [row]
