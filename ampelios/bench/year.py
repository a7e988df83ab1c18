"""The ``year`` phase: twelve months of one site on the local Apache Kafka, what is kept after each.

A site's regulars come back month after month, some leave and new ones join; each month's events
(one per message, in time order) fall on its 30 days, weekends half as busy as weekdays.
After each month the phase waits until everything is reflected, then measures what the
stack keeps -- the worker's RocksDB (its live keys and values, and its files), the bytes the
broker keeps for the changelogs, the Postgres database, the worker's resident memory --
and how long a new worker with an empty state directory takes to serve again (``/health``
ok and lag 0). It runs three times (:data:`RUNS`, ``--year-runs``): with
``AMPELIOS_ACTIVE_DAYS=30``, without a window but with ``AMPELIOS_LATENESS_DAYS=7``, and with
neither.

A year is compressed into minutes, so the time-based part of Kafka's log settings is
compressed too: the changelogs close a segment after a second instead of an hour
(``CHANGELOG_CONFIG``), the phase waits for the log cleaner after each month instead of
for a fifth of the log to be dirty (what it reports is the changelog once compaction has
run), and it runs Postgres's ``VACUUM`` before taking the database's size, as autovacuum
would have in a month.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import psycopg2
import rocksdict

from ampelios.bench.harness import (
    SOURCE_ID,
    Bench,
    Row,
    fresh_stack,
    one_event_messages,
    produce,
    stack_settings,
    tree_bytes,
)
from ampelios.config import Settings
from ampelios.core.events import EventBatch
from ampelios.core.generate import generate_events
from ampelios.services.kafka import (
    changelog_bytes_by_topic,
    cleaned_up_to_active_segments,
    compact_changelogs_at_once,
)
from ampelios.services.stack import Stack, WorkerProcess, wait_until_reflected
from ampelios.sinks.history import History, Retention

DAY_MS = 86_400_000
MONTH_DAYS = 30
YEAR_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a Monday
RETURNING_SHARE = 0.9  # of a month's visitors, those who came the month before (the rest are new)
NEW_IDS_PER_MONTH = 10_000_000  # month m's new visitors have ids from (m + 1) times this
CLEANER_WAIT_SECONDS = 120.0


def month_events(month: int, events: int, seed: int, previous: np.ndarray) -> EventBatch:
    """About ``events`` events of month ``month`` (0-based), in time order. Generated
    journeys, each moved to start on a day of the month drawn with weekends at half weight,
    its own rhythm kept (a journey that would run past the month ends with it). Their
    visitors: :data:`RETURNING_SHARE` of them come back from ``previous`` (last month's
    visitors), the others are new (ids above every earlier one), so that the visitors of
    any two months in a row are about as many as the site's regulars."""
    rng = np.random.default_rng((seed, month))
    made = generate_events(events, seed=seed * 1_000 + month)
    generated, journey = np.unique(made.visitorid, return_inverse=True)
    returning = rng.choice(previous, min(len(previous), round(len(generated) * RETURNING_SHARE)), replace=False)
    first_new = (month + 1) * NEW_IDS_PER_MONTH
    ids = np.concatenate([returning, np.arange(first_new, first_new + len(generated) - len(returning))])

    days = np.arange(MONTH_DAYS)
    weekday = (month * MONTH_DAYS + days) % 7  # 0 = Monday: the year starts on one
    weight = np.where(weekday >= 5, 0.5, 1.0)
    start = rng.choice(days, len(generated), p=weight / weight.sum()) * DAY_MS + rng.integers(0, DAY_MS, len(generated))
    first = np.full(len(generated), np.iinfo(np.int64).max)
    np.minimum.at(first, journey, made.timestamp)
    month_start = YEAR_START_MS + month * MONTH_DAYS * DAY_MS
    at = np.minimum(
        month_start + start[journey] + made.timestamp - first[journey], month_start + MONTH_DAYS * DAY_MS - 1
    )
    batch = EventBatch.from_columns(made.source_id, at, ids[journey], made.event, made.itemid, made.transactionid)
    return batch.take(batch.time_order())


@dataclass
class Month:
    """What the stack keeps after a month."""

    month: int
    events_sent: int
    events_held: int
    visitors_held: int
    rocksdb_live_bytes: int
    rocksdb_live_bytes_by_table: dict[str, int]
    rocksdb_file_bytes: int
    changelog_bytes: int
    changelog_compacted_bytes: int  # changelog_bytes but the active segments (never compacted)
    changelog_bytes_by_topic: dict[str, tuple[int, int]]  # topic -> (all, active segments)
    postgres_bytes: int
    postgres_bytes_by_table: dict[str, int]
    worker_rss_mib: float
    recovery_seconds: float

    def line(self) -> str:
        mib = 1 << 20
        return (
            f"month {self.month:2d}: held {self.events_held:,} events of {self.visitors_held:,} visitors; "
            f"RocksDB live {self.rocksdb_live_bytes / mib:.1f} MiB (files {self.rocksdb_file_bytes / mib:.1f}), "
            f"changelogs {self.changelog_bytes / mib:.1f} MiB "
            f"({self.changelog_compacted_bytes / mib:.1f} compacted), Postgres {self.postgres_bytes / mib:.1f} MiB, "
            f"worker RSS {self.worker_rss_mib:.0f} MiB, new worker serving in {self.recovery_seconds:.1f} s"
        )


def live_table_bytes(worker_dir: Path) -> dict[str, int]:
    """Bytes of every key and value in the worker's RocksDB tables, per table (its
    partitions summed; opened read-only, so the worker may be running)."""
    tables: dict[str, int] = {}
    for current in worker_dir.rglob("CURRENT"):
        table = current.parent.name.rsplit("-", 1)[0]  # journeys-3.db -> journeys
        db = rocksdict.Rdict(str(current.parent), access_type=rocksdict.AccessType.read_only())
        try:
            tables[table] = tables.get(table, 0) + sum(len(k) + len(v) for k, v in db.items())
        finally:
            db.close()
    return tables


async def prune_history(settings: Settings) -> None:
    """Delete what the history's retention no longer keeps, as every worker's sink does
    every ten ``AMPELIOS_SNAPSHOT_SECONDS`` of wall time (a compressed month lasts less)."""
    assert settings.database_url is not None
    history = History(settings.database_url)
    try:
        await history.prune(Retention(settings.history_days, settings.wall_snapshot_days))
    finally:
        await history.close()


def database_bytes(url: str) -> tuple[int, dict[str, int]]:
    """The database's size after a ``VACUUM`` (which autovacuum runs over a month of wall
    time: the space of deleted rows made reusable), and each table's with its indexes."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")
            cursor.execute("SELECT pg_database_size(current_database())")
            (size,) = cursor.fetchone()
            cursor.execute(
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            )
            tables = {name: int(n) for name, n in cursor.fetchall()}
    finally:
        connection.close()
    return int(size), tables


def resident_mib(pid: int) -> float:
    """The resident memory of process ``pid`` now (Linux ``VmRSS``), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def measure(stack: Stack, month: int, sent: int, timeout: float) -> Month:
    """After ``month``: wait for everything to be reflected and compacted, take the
    figures, then replace the worker by one with an empty state directory."""
    assert stack.worker is not None and stack.worker.process is not None and stack.settings.database_url
    base = stack.worker.base_url
    stats = wait_until_reflected(base, SOURCE_ID, timeout=timeout, stored=True)
    logs = stack.settings.state_dir / "kafka" / "logs"
    deadline = time.monotonic() + CLEANER_WAIT_SECONDS
    while not cleaned_up_to_active_segments(logs) and time.monotonic() < deadline:
        time.sleep(0.5)
    tables = live_table_bytes(stack.settings.worker_dir)
    asyncio.run(prune_history(stack.settings))
    postgres, postgres_tables = database_bytes(stack.settings.database_url)
    by_topic = changelog_bytes_by_topic(logs)
    figures = dict(
        rocksdb_live_bytes=sum(tables.values()),
        rocksdb_live_bytes_by_table=tables,
        rocksdb_file_bytes=tree_bytes(stack.settings.worker_dir),
        changelog_bytes=sum(total for total, _ in by_topic.values()),
        changelog_compacted_bytes=sum(total - active for total, active in by_topic.values()),
        changelog_bytes_by_topic=by_topic,
        postgres_bytes=postgres,
        postgres_bytes_by_table=postgres_tables,
        worker_rss_mib=resident_mib(stack.worker.process.pid),
    )
    stack.worker.stop()
    shutil.rmtree(stack.settings.worker_dir)
    started = time.monotonic()
    stack.worker = WorkerProcess(stack.settings, stack.worker_output).start(timeout)
    wait_until_reflected(stack.worker.base_url, SOURCE_ID, timeout=timeout)
    recovery = time.monotonic() - started
    return Month(month, sent, stats["events"], stats["visitors"], **figures, recovery_seconds=recovery)


# The runs of the phase (``--year-runs``): what it keeps, and the settings that keep it.
RUNS: dict[str, tuple[str, dict[str, float]]] = {
    "window": ("30-day window", {"active_days": 30.0}),
    "lateness": ("no window, 7-day lateness", {"lateness_days": 7.0}),
    "no-window": ("no window", {}),
}


def run_year(bench: Bench, row_id: str, name: str, overrides: dict[str, float]) -> list[Month]:
    options = bench.options
    workdir = bench.workdir(row_id)
    settings = stack_settings(bench, workdir).with_(local_broker="kafka", **overrides)
    months: list[Month] = []
    with fresh_stack(settings, workdir) as stack:
        asyncio.run(compact_changelogs_at_once(stack.settings.broker_url, stack.settings.app_id))
        sent, visitors = 0, np.array([], dtype=np.int64)
        for month in range(options.months):
            events = month_events(month, options.month_events, options.seed, visitors)
            visitors = np.unique(events.visitorid)
            messages = one_event_messages(events, settings.partitions)
            asyncio.run(produce(stack.settings.broker_url, bench.topic, settings.partitions, messages))
            sent += len(events)
            months.append(measure(stack, month + 1, sent, options.timeout))
            click.echo(f"  {name}, {months[-1].line()}", err=True)
    return months


def growth(months: list[Month], field: str) -> float | None:
    """The last month's figure over the second's."""
    if len(months) < 2 or not getattr(months[1], field):
        return None
    return getattr(months[-1], field) / getattr(months[1], field)


def phase_year(bench: Bench) -> list[Row]:
    """Twelve months (``--months``) of ``--month-events`` events each, once per run of
    :data:`RUNS` named by ``--year-runs``; a row each, its monthly figures in the JSON
    report."""
    rows = []
    for run in bench.options.year_runs or tuple(RUNS):
        row_id, (name, overrides) = f"year-{run}", RUNS[run]
        months = run_year(bench, row_id, name, overrides)
        last = months[-1]
        fields = (
            "rocksdb_live_bytes",
            "changelog_bytes",
            "changelog_compacted_bytes",
            "postgres_bytes",
            "worker_rss_mib",
            "recovery_seconds",
        )
        ratios = {f: growth(months, f) for f in fields}
        named = ", ".join(f"{f} {r:.2f}x" for f, r in ratios.items() if r is not None)
        figures: dict[str, Any] = {"months": [vars(m) for m in months], "last_over_second": ratios}
        notes = f"month {last.month} over month 2: {named}" if len(months) > 1 else last.line()
        rows.append(
            Row(row_id, f"Ampelios: year, {name}", last.events_sent, last.events_sent, None, notes, figures=figures)
        )
    return rows
