"""The ``webhooks`` phase: purchase -> webhook latency, and every segment change delivered."""

from __future__ import annotations

import asyncio
import operator
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from ampelios.bench.harness import (
    SOURCE_ID,
    Bench,
    Message,
    Row,
    Workload,
    after_sending,
    base_url,
    fresh_stack,
    one_event_messages,
    produce,
    stack_settings,
)
from ampelios.bench.probes import Schedule, send_at_rate
from ampelios.core.events import TRANSACTION, VIEW, EventBatch
from ampelios.core.webhooks import Subscription, membership_changes
from ampelios.services.broker import (
    bootstrap_servers,
    end_offsets,
    read_range,
)
from ampelios.services.stack import (
    http_json,
    wait_until_reflected,
)
from ampelios.services.webhook_receiver import WebhookReceiver
from ampelios.topology import Topology

WEBHOOK_WARM_SECONDS = 10.0  # of the rate's events sent before subscribing: a model, the probes' views


@dataclass
class WebhookSchedule:
    """The webhooks phase's messages, one event each: ``warm`` first (sent at once, before
    subscribing: a model, and every probe visitor's first view), then ``measured`` (sent
    at the rate), in which message ``i`` of ``probes`` is a purchase of visitor
    ``probes[i]``, which moves it out of the segment its one view put it in."""

    warm: list[Message]
    measured: list[Message]
    events: EventBatch  # of ``measured``
    probes: dict[int, int]

    @classmethod
    def of(cls, workload: Workload, partitions: int, rate: float, seconds: float) -> WebhookSchedule:
        """The steady phase's schedule for ``WARM_SECONDS + seconds``, split: the probes
        of the measured part buy (one product, an order of their own) where the steady
        phase has them view, and view a minute earlier in the warm part."""
        whole = Schedule.of(workload, partitions, rate, WEBHOOK_WARM_SECONDS + seconds)
        split = round(rate * WEBHOOK_WARM_SECONDS)
        probes = {i - split: v for i, v in whole.probes.items() if i >= split}
        measured = whole.events.take(slice(split, len(whole.events)))
        at = np.array(sorted(probes), dtype=np.int64)
        event, order = measured.event.copy(), measured.transactionid.copy()
        event[at], order[at] = TRANSACTION, measured.visitorid[at]
        measured = EventBatch(measured.source_id, measured.timestamp, measured.visitorid, event, measured.itemid, order)
        views = EventBatch(
            measured.source_id[at],
            measured.timestamp[at] - 60_000,
            measured.visitorid[at],
            np.full(len(at), VIEW, dtype=measured.event.dtype),
            measured.itemid[at],
            np.full(len(at), -1, dtype=measured.transactionid.dtype),
        )
        return cls(
            warm=whole.messages[:split] + one_event_messages(views, partitions),
            measured=one_event_messages(measured, partitions),
            events=measured,
            probes=probes,
        )


async def records_since(url: str, starts: dict[TopicPartition, int]) -> list[dict[str, Any]]:
    """The records (JSON) of each partition from its offset in ``starts`` to its end now."""
    ends = await end_offsets(url, list(starts))
    records = []
    for tp, start in starts.items():
        records += [orjson.loads(r.value) for r in await read_range(url, tp, start, ends[tp])]
    return records


async def members_delivered(
    url: str, group: str, tps: list[TopicPartition], timeout: float
) -> dict[TopicPartition, int]:
    """Wait until a subscription's group committed an offset on every partition (it does
    once the partition's members are delivered); those offsets, where its changes begin."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(url))
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            if all(tp in offsets and offsets[tp].offset >= 0 for tp in tps) or time.monotonic() > deadline:
                return {tp: max(0, offsets[tp].offset) if tp in offsets else 0 for tp in tps}
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


def phase_webhooks(bench: Bench) -> list[Row]:
    """Ampelios at a fixed rate, one event per message, with a webhook subscription to
    every segment of the source: latency from a probe's purchase to its move arriving at
    the receiver, and every change of ``segment-changes`` since the subscription
    delivered (nothing lost), with the receiver down for ``--receiver-down-seconds``
    from the start of sending."""
    options = bench.options
    partitions = bench.settings.partitions
    schedule = WebhookSchedule.of(bench.workload, partitions, options.rate, options.steady_seconds)
    workdir = bench.workdir("webhooks")
    settings = stack_settings(bench, workdir)
    topology = Topology.of(settings)
    with fresh_stack(settings, workdir, bench.profile("webhooks")) as stack, WebhookReceiver() as receiver:
        base, url = base_url(stack), stack.settings.broker_url
        asyncio.run(produce(url, bench.topic, partitions, schedule.warm))
        wait_until_reflected(base, SOURCE_ID, timeout=options.timeout)
        code, sub = http_json("POST", f"{base}/webhooks", {"url": receiver.url("/hook"), "source_id": SOURCE_ID})
        if code != 201:
            raise RuntimeError(f"POST /webhooks answered {code}: {sub}")
        changes = [TopicPartition(topology.segment_changes, p) for p in range(partitions)]
        starts = asyncio.run(members_delivered(url, topology.webhook_group(sub["id"]), changes, options.timeout))
        members = sum(len(orjson.loads(r.body).get("visitors", [])) for r in receiver.attempts("/hook"))
        sent_at: dict[int, float] = {}  # probe visitor -> when its purchase was handed to the producer

        def on_send(i: int, partition: int, ack: asyncio.Future[Any]) -> None:
            if i in schedule.probes:
                sent_at[schedule.probes[i]] = time.time()

        if options.receiver_down_seconds:
            receiver.status["/hook"] = 503
        down_from = time.monotonic()
        sent, seconds = asyncio.run(
            send_at_rate(url, bench.topic, schedule.measured, options.rate, options.steady_seconds, on_send)
        )
        stats, figures = after_sending(stack, options.timeout)
        time.sleep(max(0.0, options.receiver_down_seconds - (time.monotonic() - down_from)))
        receiver.status.pop("/hook", None)
        back_at = time.time()
        everything = Subscription.from_json(
            {"url": receiver.url("/hook"), "source_id": SOURCE_ID}, id="x", secret=sub["secret"]
        )
        expected = membership_changes(asyncio.run(records_since(url, starts)), everything)
        key = operator.itemgetter("visitorid", "at", "action", "segment")
        deadline = time.monotonic() + options.timeout
        while True:
            arrived: dict[tuple[Any, ...], float] = {}
            for r in receiver.attempts("/hook"):
                if r.status == 200:
                    body = orjson.loads(r.body)
                    for change in body.get("changes", []):
                        arrived.setdefault(key(change), r.at)
            missing = [c for c in expected if key(c) not in arrived]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    latencies = []
    for visitor, at in sent_at.items():
        moved = [t for (v, _, action, _), t in arrived.items() if v == visitor and action == "enter"]
        if moved:
            latencies.append(min(moved) - at)
    p50, p95, p99, top = (None,) * 4 if not latencies else np.percentile(np.array(latencies) * 1000, [50, 95, 99, 100])
    caught_up = max((arrived[key(c)] for c in expected if key(c) in arrived), default=back_at) - back_at
    figures.update(
        target_rate=options.rate,
        achieved_rate=sent / seconds if seconds else None,
        members_delivered=members,
        changes_expected=len(expected),
        changes_delivered=len(expected) - len(missing),
        changes_missing=len(missing),
        missing_sample=missing[:5],
        changes_from={tp.partition: offset for tp, offset in starts.items()},
        probes=len(sent_at),
        probes_moved=len(latencies),
        latency_ms={"p50": p50, "p95": p95, "p99": p99, "max": top},
        receiver_down_seconds=options.receiver_down_seconds,
        caught_up_seconds_after_back=caught_up if options.receiver_down_seconds else None,
        deliveries=sum(1 for r in receiver.attempts("/hook") if r.status == 200),
        failed_attempts=sum(1 for r in receiver.attempts("/hook") if r.status != 200),
        stats_at_end=stats,
    )
    latency = "-" if p50 is None else f"p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms"
    outage = (
        f"; receiver down {options.receiver_down_seconds:g} s, all delivered {caught_up:,.1f} s after it was back"
        if options.receiver_down_seconds
        else ""
    )
    row = Row(
        "webhooks",
        f"Ampelios: webhooks {options.rate:g} ev/s, 1 event/msg",
        sent,
        sent,
        seconds,
        notes=f"{len(expected) - len(missing):,} of {len(expected):,} changes delivered; "
        f"{len(latencies)} probes purchase -> webhook: {latency}{outage}",
        figures=figures,
    )
    if missing:
        row.error = f"{len(missing)} of {len(expected)} changes not delivered"
    return [row]
