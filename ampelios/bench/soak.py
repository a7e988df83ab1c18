"""The ``soak`` phase: the local stack under a steady rate for an hour, its memory every minute."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from ampelios.bench.harness import (
    SOURCE_ID,
    Bench,
    Message,
    Row,
    Workload,
    base_url,
    fresh_stack,
    one_event_messages,
    stack_settings,
)
from ampelios.bench.probes import PRODUCER_TICK_SECONDS
from ampelios.core.events import EventBatch
from ampelios.ingest.replay import new_producer
from ampelios.services.stack import (
    Stack,
    http_json,
    wait_until_reflected,
)

SOAK_SAMPLE_SECONDS = 60.0


def soak_messages(workload: Workload, partitions: int, lap: int) -> list[Message]:
    """The workload's events as one-event messages in time order, for the ``lap``-th time:
    each lap's visitors are new ones, its events later than the previous lap's."""
    events = workload.events
    span = int(events.timestamp.max() - events.timestamp.min()) + 1
    shifted = EventBatch(
        source_id=events.source_id,
        timestamp=events.timestamp + lap * span,
        visitorid=events.visitorid + lap * (int(events.visitorid.max()) + 1),
        event=events.event,
        itemid=events.itemid,
        transactionid=events.transactionid,
    )
    return one_event_messages(shifted.take(shifted.time_order()), partitions)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def tree_memory_mib(pid: int | None) -> float | None:
    """The memory of process ``pid`` and its descendants (Postgres's backends), in MiB:
    their proportional set size (Linux ``Pss``: resident pages, each shared page counted
    once across the processes that share it)."""
    if pid is None:
        return None
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, StopIteration):
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text().splitlines()
            total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        pending += _children(current)
    return total / 1024


def stack_memory(stack: Stack) -> dict[str, float | None]:
    """The memory of the stack's broker, Postgres and worker (:func:`tree_memory_mib`)."""
    pids = {
        "broker": stack.broker.pid if stack.broker is not None else None,
        "postgres": stack.database.process.pid if stack.database and stack.database.process else None,
        "worker": stack.worker.process.pid if stack.worker and stack.worker.process else None,
    }
    return {role: tree_memory_mib(pid) for role, pid in pids.items()}


async def run_soak(url: str, topic: str, stack: Stack, bench: Bench) -> tuple[int, list[dict[str, Any]]]:
    """Send new one-event messages at ``rate`` for ``soak_seconds``, sampling the stack's
    memory at the start and every SOAK_SAMPLE_SECONDS; the messages sent and the samples."""
    options = bench.options
    producer = new_producer(url)
    await producer.start()
    samples = [{"seconds": 0.0, "sent": 0, **stack_memory(stack)}]
    try:
        sent, lap, messages = 0, 0, soak_messages(bench.workload, bench.settings.partitions, 0)
        started = time.monotonic()
        acks: list[asyncio.Future[Any]] = []
        while (elapsed := time.monotonic() - started) < options.soak_seconds:
            while sent < int(elapsed * options.rate) + 1:
                if sent - lap * len(messages) == len(messages):
                    lap += 1
                    messages = soak_messages(bench.workload, bench.settings.partitions, lap)
                partition, key, value = messages[sent - lap * len(messages)]
                acks.append(await producer.send(topic, value, key=key, partition=partition))
                sent += 1
            acks = [a for a in acks if not a.done() or a.exception() is not None]
            if elapsed >= len(samples) * SOAK_SAMPLE_SECONDS:
                samples.append({"seconds": round(elapsed, 1), "sent": sent, **stack_memory(stack)})
            await asyncio.sleep(PRODUCER_TICK_SECONDS)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return sent, samples


def phase_soak(bench: Bench) -> list[Row]:
    """The local stack (``AMPELIOS_LOCAL_BROKER``) under live events for a long time: does
    its memory stay bounded?"""
    options = bench.options
    workdir = bench.workdir("soak")
    settings = stack_settings(bench, workdir).with_(local_broker=bench.settings.local_broker)
    with fresh_stack(settings, workdir, bench.profile("soak")) as stack:
        base = base_url(stack)
        started = time.monotonic()
        sent, samples = asyncio.run(run_soak(stack.settings.broker_url, bench.topic, stack, bench))
        seconds = time.monotonic() - started
        with contextlib.suppress(TimeoutError):
            wait_until_reflected(base, SOURCE_ID, timeout=options.timeout)
        samples.append({"seconds": round(time.monotonic() - started, 1), "sent": sent, **stack_memory(stack)})
        code, stats = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
    totals = [sum(v for k, v in s.items() if k in ("broker", "postgres", "worker") and v) for s in samples]
    for sample, total in zip(samples, totals, strict=True):
        sample["total"] = total
    first, last = samples[0], samples[-1]
    memory = ", ".join(
        f"{role} {first[role] or 0:.0f} -> {last[role] or 0:.0f} (max {max(s[role] or 0 for s in samples):.0f})"
        for role in ("broker", "postgres", "worker")
    )
    reflected = f"{stats['events']:,}" if code == 200 else "?"
    row = Row(
        "soak",
        f"Ampelios: soak {options.rate:g} ev/s for {options.soak_seconds:g} s",
        sent,
        sent,
        seconds,
        notes=f"{settings.local_broker} broker; memory (PSS, MiB) start -> end: {memory}; whole stack "
        f"{totals[0]:.0f} -> {totals[-1]:.0f} (max {max(totals):.0f}); {reflected} events reflected",
        figures={
            "local_broker": settings.local_broker,
            "samples_pss_mib": samples,
            "stats_at_end": stats if code == 200 else None,
        },
    )
    return [row]
