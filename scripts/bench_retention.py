"""What Postgres keeps over a year of one site, with the default retention and without.

Writes twelve months of history through :class:`~ampelios.sinks.history.History` (what the
sink writes) into an embedded Postgres, on a simulated clock. Every day: the visitors of
the day (a population of ``--visitors`` that comes back, one in ``--new`` of them new each
month) as visitor updates, and as no longer active the visitors last seen
``--active-days`` before; ``--transitions`` segment transitions; one event-time snapshot;
and a wall-clock snapshot every ``--snapshot-minutes``. After each month: the retention's
prune (:meth:`History.prune`, its wall clock the simulated one) and a ``VACUUM`` (what
autovacuum does), then the bytes of the history's tables and indexes and their rows.
Twice: with ``AMPELIOS_HISTORY_DAYS`` and ``AMPELIOS_WALL_SNAPSHOT_DAYS`` at their defaults,
and keeping everything. Run:

    .venv/bin/python scripts/bench_retention.py [--visitors 20000] [--transitions 1000] [--snapshot-minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2

from ampelios.config import Settings
from ampelios.services.database import EmbeddedPostgres
from ampelios.sinks.history import History, Retention

START = datetime(2026, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
TABLES = ("segment_transitions", "segment_snapshots", "visitors", "period_segments", "period_activity")
SEGMENTS = [{"id": i, "label": f"segment {i}", "size": 100, "centroid": [1.0] * 6} for i in range(5)]


def day_records(
    day: int, args: argparse.Namespace, rng: np.random.Generator, last_seen: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """What the sink receives on simulated day ``day`` (``last_seen``: each visitor's last
    day, far below 0 before its first; updated)."""
    at = round((START + timedelta(days=day)).timestamp() * 1000)
    first = (day // 30) * (args.visitors // args.new)  # each month, a share of the population is new
    seen = first + rng.choice(args.visitors, args.visitors // 30, replace=False)
    last_seen[seen] = day
    gone = np.flatnonzero(last_seen == day - args.active_days)  # nothing since: no longer active
    visitors = [
        {
            "source_id": 1,
            "visitorid": ids.tolist(),
            "views": [3] * len(ids),
            "addtocarts": [1] * len(ids),
            "transactions": [0] * len(ids),
            "sessions": [1] * len(ids),
            "last_event": [at - (0 if active else args.active_days * DAY_MS)] * len(ids),
            "active": [active] * len(ids),
        }
        for ids, active in ((seen, True), (gone, False))
    ]
    moved = rng.choice(seen, min(args.transitions, len(seen)), replace=False).tolist()
    transitions = [
        {"source_id": 1, "visitorid": v, "at": at + i, "from": 0, "to": 1, "model_version": 1}
        | {"from_label": "segment 0", "to_label": "segment 1", "lineage": "l"}
        for i, v in enumerate(moved)
    ]
    snapshots = [{"source_id": 1, "clock": "event", "at": at, "model_version": 1, "segments": SEGMENTS, "lineage": "l"}]
    snapshots += [
        {"source_id": 1, "clock": "wall", "at": at + m * 60_000, "model_version": 1, "segments": SEGMENTS}
        | {"lineage": "l"}
        for m in range(0, 1440, args.snapshot_minutes)
    ]
    return {"snapshots": snapshots, "visitors": visitors, "transitions": transitions}


def sizes(url: str) -> dict[str, Any]:
    conn = psycopg2.connect(url)
    conn.autocommit = True  # VACUUM runs outside a transaction
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("VACUUM")
        cur.execute("SELECT " + ", ".join(f"pg_total_relation_size('{t}'), (SELECT count(*) FROM {t})" for t in TABLES))
        row = cur.fetchone()
    by_table = {t: {"bytes": row[2 * i], "rows": row[2 * i + 1]} for i, t in enumerate(TABLES)}
    return {"bytes": sum(t["bytes"] for t in by_table.values()), "tables": by_table}


async def a_year(url: str, retention: Retention, args: argparse.Namespace) -> list[dict[str, Any]]:
    history, rng, months = History(url), np.random.default_rng(args.seed), []
    last_seen = np.full(args.visitors * (1 + 12 // args.new + 1), -(10**6))  # never seen
    try:
        for month in range(12):
            for day in range(30 * month, 30 * (month + 1)):
                records = day_records(day, args, rng, last_seen)
                await history.write(records["snapshots"], records["visitors"], records["transitions"])
            now = START + timedelta(days=30 * (month + 1))
            deleted = await history.prune(retention, now=now)
            months.append({"month": month + 1, "deleted": deleted, **sizes(url)})
            print(f"  month {month + 1:2}: {months[-1]['bytes'] / 2**20:7.1f} MiB", flush=True)
    finally:
        await history.close()
    return months


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=20_000, help="the population seen in a month")
    parser.add_argument("--new", type=int, default=4, help="one in NEW of the population is new each month")
    parser.add_argument("--transitions", type=int, default=1_000, help="segment transitions a day")
    parser.add_argument("--snapshot-minutes", type=int, default=10, help="minutes between wall-clock snapshots")
    parser.add_argument("--active-days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    defaults = Settings()
    runs = {
        f"retention {defaults.history_days:g} / {defaults.wall_snapshot_days:g} days": Retention(
            defaults.history_days, defaults.wall_snapshot_days
        ),
        "everything kept": Retention(36_500, 36_500),
    }
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="ampelios-bench-retention-") as root:
        for name, retention in runs.items():
            print(name, flush=True)
            data = Path(root) / name.replace(" ", "-").replace("/", "")
            postgres = EmbeddedPostgres(data, Path(root) / f"{data.name}.log").start()
            try:
                report["runs"][name] = asyncio.run(a_year(postgres.url, retention, args))
            finally:
                postgres.stop()
    print("\nPostgres bytes (tables and indexes, after VACUUM) at the end of each month, MiB:")
    print("| month | " + " | ".join(report["runs"]) + " |\n|---:|" + "---:|" * len(report["runs"]))
    for month in range(12):
        cells = [f"{runs_[month]['bytes'] / 2**20:.1f}" for runs_ in report["runs"].values()]
        print(f"| {month + 1} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
