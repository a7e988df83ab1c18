"""The ``collector`` phase: the steady phase's events as Segment ``track`` calls through ``POST /v1/batch``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ampelios.bench.harness import (
    SOURCE_ID,
    Bench,
    BenchOptions,
    Row,
    after_sending,
    base_url,
    distinct_events,
    fresh_stack,
    percentiles,
    stack_settings,
)
from ampelios.bench.probes import ProbeWatch, Schedule, SteadyRun
from ampelios.bench.report import _number
from ampelios.core.collect import visitor_id
from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch
from ampelios.core.partitioning import partition_for

COLLECTOR_TICK_SECONDS = 0.02  # a tracker's batch every 20 ms: 100 calls a request at 5,000 events/s


COLLECTOR_IN_FLIGHT = 8  # requests under way at once at most (a tracker's sending threads)


WRITE_KEY = "bench"


SEGMENT_NAMES = {VIEW: "Product Viewed", ADDTOCART: "Product Added", TRANSACTION: "Order Completed"}


def segment_calls(events: EventBatch) -> list[dict[str, Any]]:
    """Events as the Segment ``track`` calls a site's tracker sends for them (visitor ``v``
    is user ``"v"``; one product per order), which the collector turns back into them."""
    calls = []
    for i, (at, visitor, code, item, order) in enumerate(
        zip(
            *(
                c.tolist()
                for c in (events.timestamp, events.visitorid, events.event, events.itemid, events.transactionid)
            )
        )
    ):
        product = {"product_id": str(item)} if item >= 0 else {}
        properties = product if code != TRANSACTION else {"products": [product]}
        if code == TRANSACTION and order >= 0:
            properties["order_id"] = str(order)
        moment = datetime.fromtimestamp(at / 1000, tz=UTC).isoformat(timespec="milliseconds")
        calls.append(
            {
                "type": "track",
                "userId": str(visitor),
                "event": SEGMENT_NAMES[code],
                "timestamp": moment,
                "messageId": f"bench-{i}",
                "properties": properties,
            }
        )
    return calls


async def run_collector(base: str, schedule: Schedule, partitions: int, options: BenchOptions) -> SteadyRun:
    """Send ``schedule`` as Segment batches to ``base`` at ``options.rate`` events/s for
    ``options.steady_seconds``, while the probes are watched; then wait for them."""
    calls = segment_calls(schedule.events)
    watch = ProbeWatch(base)
    gate = asyncio.Semaphore(COLLECTOR_IN_FLIGHT)
    failures: list[str] = []

    async def post(session: aiohttp.ClientSession, batch: list[dict[str, Any]], probes: list[int]) -> None:
        async with gate:
            try:
                async with session.post(f"{base}/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY}) as answer:
                    body = await answer.json()
                    if answer.status != 200 or body["rejected"]:
                        failures.append(f"{answer.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(repr(exc))
                return
        for visitor in probes:
            watch.acked(visitor, time.monotonic())

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        watch.watching(session, options.probe_timeout),
    ):
        requests: list[asyncio.Task[None]] = []
        sent, started, last = 0, time.monotonic(), 0.0
        while sent < len(calls):
            elapsed = time.monotonic() - started
            if elapsed >= options.steady_seconds:
                break
            upto = min(len(calls), int(elapsed * options.rate) + 1)
            probes = []
            for i in range(sent, upto):
                if i in schedule.probes:
                    visitor = visitor_id("user", str(schedule.probes[i]))
                    watch.add(partition_for(SOURCE_ID, visitor, partitions), visitor, time.monotonic())
                    probes.append(visitor)
            if upto > sent:
                requests.append(asyncio.create_task(post(session, calls[sent:upto], probes)))
                sent, last = upto, time.monotonic() - started
            requests = [r for r in requests if not r.done()]
            await asyncio.sleep(COLLECTOR_TICK_SECONDS)
        await asyncio.gather(*requests)
    if failures:
        raise RuntimeError(f"{len(failures)} collector requests failed, the first: {failures[0]}")
    return SteadyRun(sent, last, watch)


def phase_collector(bench: Bench) -> list[Row]:
    """Ampelios fed through its collector at a fixed rate, with probes for the latency from
    a call's send to ``/visitors`` answering, and every event counted at the end."""
    options = bench.options
    schedule = Schedule.of(bench.workload, bench.settings.partitions, options.rate, options.steady_seconds)
    workdir = bench.workdir("collector")
    settings = stack_settings(bench, workdir).with_(write_keys={WRITE_KEY: SOURCE_ID})
    with fresh_stack(settings, workdir, bench.profile("collector")) as stack:
        base = base_url(stack)
        run = asyncio.run(run_collector(base, schedule, bench.settings.partitions, options))
        stats, figures = after_sending(stack, options.timeout)
    watch = run.watch
    p50, p99, top = percentiles(watch.latencies)
    ack_p50, ack_p99, _ = percentiles(watch.after_ack)
    distinct = distinct_events(schedule.events.take(slice(0, run.sent)))
    counted = stats["events"] if stats is not None else None
    figures.update(
        target_rate=options.rate,
        achieved_rate=run.sent / run.seconds if run.seconds else None,
        probes=watch.probes,
        probes_visible=len(watch.latencies),
        probes_not_visible=watch.not_visible,
        latency_ms={"p50": p50, "p99": p99, "max": top},
        after_answer_latency_ms={"p50": ack_p50, "p99": ack_p99},
        sent_distinct_events=distinct,
        reflected_events=counted,
        stats_at_end=stats,
    )
    latency = "-" if p50 is None or p99 is None else f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, max {top:,.0f} ms"
    row = Row(
        "collector",
        f"Ampelios: collector {options.rate:g} ev/s, Segment batches",
        run.sent,
        run.sent,
        run.seconds,
        notes=f"events/s as sent; {_number(counted)} of {distinct:,} counted at the end; "
        f"{watch.probes} probes send -> /visitors 200: {latency}",
        figures=figures,
    )
    if watch.not_visible or counted != distinct:
        row.error = f"{watch.not_visible} probes not visible; {_number(counted)} of {distinct:,} events counted"
    return [row]
