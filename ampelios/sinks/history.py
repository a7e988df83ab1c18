"""What Ampelios keeps in Postgres for SQL users, through aiopg: schema, writes, reads.

=====================  ==============================================================
relation               one row per
=====================  ==============================================================
segment_snapshots      segment of a source at a point in time (``clock`` 'event': the
                       segments as of that event time, e.g. every simulated day of a
                       replay; 'wall': at that wall-clock time)
visitors               visitor of a source: its journey shape, six features, last event
                       time and whether it is active (``AMPELIOS_ACTIVE_DAYS``)
segment_shapes         journey shape of a source: the segment it belongs to in the
                       newest wall-clock snapshot
visitor_segments       (view) active visitor with its current segment and label
segment_transitions    time a visitor's own events moved it to another segment
segment_lineages       model lineage of a source: a model's life from its seeding, within
                       which segment ids keep their meaning (first and last seen)
current_segment_*      (views) the snapshots and transitions of each source's current
                       lineage, the one seen last
=====================  ==============================================================

Snapshots, transitions and the shape mapping carry the ``lineage`` of the model they
were computed under; a new deployment or a broker that came back empty seeds a new
lineage, and the older ones stay queryable beside it.

The schema is created and migrated by Ampelios at start: versioned, idempotent, and safe
with several workers (an advisory lock). Every write is idempotent, so the sink may
write a batch twice after a restart. Timestamps are UTC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiopg
import orjson
import psycopg2

from ampelios.core.periods import ACTIVITY_NAMES
from ampelios.internals import forget_failed_postgres_connections

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS: Sequence[tuple[int, str]] = (
    (
        1,
        """
        CREATE TABLE segment_snapshots (
            source_id     integer            NOT NULL,
            clock         text               NOT NULL CHECK (clock IN ('event', 'wall')),
            taken_at      timestamptz        NOT NULL,
            model_version bigint             NOT NULL,
            segment_id    integer            NOT NULL,
            label         text               NOT NULL,
            size          bigint             NOT NULL,
            share         double precision   NOT NULL,
            centroid      double precision[] NOT NULL,
            reason        text,
            PRIMARY KEY (source_id, clock, taken_at, segment_id)
        );
        COMMENT ON TABLE segment_snapshots IS
            'Ampelios: the segments of a source at a point in time. centroid = mean member: '
            'views, addtocarts, transactions, sessions, views per session, purchase ratio';

        CREATE TABLE visitors (
            source_id         integer          NOT NULL,
            visitorid         bigint           NOT NULL,
            views             integer          NOT NULL,
            addtocarts        integer          NOT NULL,
            transactions      integer          NOT NULL,
            sessions          integer          NOT NULL,
            views_per_session double precision NOT NULL,
            purchase_ratio    double precision NOT NULL,
            last_event_at     timestamptz      NOT NULL,
            active            boolean          NOT NULL,
            updated_at        timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (source_id, visitorid)
        );

        CREATE TABLE segment_shapes (
            source_id     integer NOT NULL,
            views         integer NOT NULL,
            addtocarts    integer NOT NULL,
            transactions  integer NOT NULL,
            sessions      integer NOT NULL,
            segment_id    integer NOT NULL,
            label         text    NOT NULL,
            model_version bigint  NOT NULL,
            PRIMARY KEY (source_id, views, addtocarts, transactions, sessions)
        );

        CREATE VIEW visitor_segments AS
            SELECT v.source_id, v.visitorid, s.segment_id, s.label, v.views, v.addtocarts,
                   v.transactions, v.sessions, v.views_per_session, v.purchase_ratio,
                   v.last_event_at, s.model_version
            FROM visitors v
            LEFT JOIN segment_shapes s USING (source_id, views, addtocarts, transactions, sessions)
            WHERE v.active;

        CREATE TABLE segment_transitions (
            source_id     integer     NOT NULL,
            visitorid     bigint      NOT NULL,
            at            timestamptz NOT NULL,
            from_segment  integer     NOT NULL,
            to_segment    integer     NOT NULL,
            from_label    text        NOT NULL,
            to_label      text        NOT NULL,
            model_version bigint      NOT NULL,
            PRIMARY KEY (source_id, visitorid, at)
        );
        """,
    ),
    (
        2,
        """
        -- Segment ids mean something only within one model lineage (a model's life from its
        -- seeding): rows of two lineages never share a key, and each is kept.
        ALTER TABLE segment_snapshots ADD COLUMN lineage text NOT NULL DEFAULT '';
        ALTER TABLE segment_snapshots DROP CONSTRAINT segment_snapshots_pkey;
        ALTER TABLE segment_snapshots ADD PRIMARY KEY (source_id, lineage, clock, taken_at, segment_id);
        ALTER TABLE segment_transitions ADD COLUMN lineage text NOT NULL DEFAULT '';
        ALTER TABLE segment_transitions DROP CONSTRAINT segment_transitions_pkey;
        ALTER TABLE segment_transitions ADD PRIMARY KEY (source_id, lineage, visitorid, at);
        ALTER TABLE segment_shapes ADD COLUMN lineage text NOT NULL DEFAULT '';

        CREATE TABLE segment_lineages (
            source_id     integer     NOT NULL,
            lineage       text        NOT NULL,
            first_seen_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_id, lineage)
        );
        INSERT INTO segment_lineages
            SELECT source_id, lineage, now(), now() FROM segment_snapshots GROUP BY source_id, lineage;

        CREATE VIEW current_lineages AS
            SELECT DISTINCT ON (source_id) source_id, lineage
            FROM segment_lineages ORDER BY source_id, last_seen_at DESC;
        CREATE VIEW current_segment_snapshots AS
            SELECT s.* FROM segment_snapshots s JOIN current_lineages USING (source_id, lineage);
        CREATE VIEW current_segment_transitions AS
            SELECT t.* FROM segment_transitions t JOIN current_lineages USING (source_id, lineage);
        CREATE OR REPLACE VIEW visitor_segments AS
            SELECT v.source_id, v.visitorid, s.segment_id, s.label, v.views, v.addtocarts,
                   v.transactions, v.sessions, v.views_per_session, v.purchase_ratio,
                   v.last_event_at, s.model_version, s.lineage
            FROM visitors v
            LEFT JOIN segment_shapes s USING (source_id, views, addtocarts, transactions, sessions)
            WHERE v.active;
        """,
    ),
    (
        3,
        """
        -- Every event-time period's population under one model (the newest of its lineage):
        -- rewritten whole at each settling, so that shares compare people, not models.
        CREATE TABLE period_segments (
            source_id     integer          NOT NULL,
            lineage       text             NOT NULL,
            period_start  timestamptz      NOT NULL,
            segment_id    integer          NOT NULL,
            label         text             NOT NULL,
            size          bigint           NOT NULL,
            share         double precision NOT NULL,
            visitors      bigint           NOT NULL,
            visitor_share double precision NOT NULL,
            model_version bigint           NOT NULL,
            PRIMARY KEY (source_id, lineage, period_start, segment_id)
        );
        COMMENT ON TABLE period_segments IS
            'Ampelios: per event-time period, the population per segment at its end (size, share) and '
            'the visitors with events in it per segment (visitors, visitor_share), all periods under '
            'the same (newest) model of the lineage';
        CREATE TABLE period_activity (
            source_id     integer     NOT NULL,
            lineage       text        NOT NULL,
            period_start  timestamptz NOT NULL,
            visitors      bigint      NOT NULL,
            buyers        bigint      NOT NULL,
            views         bigint      NOT NULL,
            addtocarts    bigint      NOT NULL,
            transactions  bigint      NOT NULL,
            PRIMARY KEY (source_id, lineage, period_start)
        );
        COMMENT ON TABLE period_activity IS
            'Ampelios: the visitors with events in each event-time period, those who bought, and the '
            'period''s events';
        CREATE TABLE segment_alerts (
            source_id            integer          NOT NULL,
            id                   text             NOT NULL,
            lineage              text             NOT NULL,
            signal               text             NOT NULL,
            segment_id           integer,
            label                text,
            direction            text             NOT NULL CHECK (direction IN ('up', 'down')),
            before               double precision NOT NULL,
            after                double precision NOT NULL,
            started_at           timestamptz      NOT NULL,
            detected_at          timestamptz      NOT NULL,
            recovered_at         timestamptz,
            recovery_detected_at timestamptz,
            withdrawn            boolean          NOT NULL DEFAULT false,
            updated_at           timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (source_id, id)
        );
        COMMENT ON TABLE segment_alerts IS
            'Ampelios: a per-period signal of a source that shifted (and when it recovered); times '
            'are event times; withdrawn: the history no longer shows it';
        CREATE TABLE segment_model_changes (
            source_id     integer     NOT NULL,
            lineage       text        NOT NULL,
            at            timestamptz NOT NULL,
            model_version bigint      NOT NULL,
            before        text[]      NOT NULL,
            after         text[]      NOT NULL,
            PRIMARY KEY (source_id, lineage, model_version)
        );
        COMMENT ON TABLE segment_model_changes IS
            'Ampelios: settlings of the model that renamed or renumbered segments (at: the newest '
            'event-time day then); the period tables are always under the newest names';
        CREATE VIEW current_period_segments AS
            SELECT s.* FROM period_segments s JOIN current_lineages USING (source_id, lineage);
        CREATE VIEW current_period_activity AS
            SELECT a.* FROM period_activity a JOIN current_lineages USING (source_id, lineage);
        """,
    ),
    (
        4,
        """
        -- Retention (History.prune) deletes by time within a source.
        CREATE INDEX segment_transitions_by_time ON segment_transitions (source_id, at);
        CREATE INDEX segment_snapshots_by_time ON segment_snapshots (source_id, clock, taken_at);
        CREATE INDEX visitors_by_last_event ON visitors (source_id, last_event_at) WHERE NOT active;
        """,
    ),
    (
        5,
        """
        CREATE TABLE sink_fences (
            fence      text        PRIMARY KEY,
            generation bigint      NOT NULL,
            written_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE sink_fences IS
            'Ampelios: the newest consumer-group generation that wrote, per sink group and broker '
            'life; a write of an older generation (records of partitions since handed over) is refused '
            'for a day after it (a group empty for a week is forgotten by Kafka and numbered anew)';
        """,
    ),
)


@dataclass(frozen=True)
class Retention:
    """How long Postgres keeps what grows with time, in days: transitions, event-time
    snapshots and visitors no longer active for ``event_days`` of event time before their
    source's newest (``AMPELIOS_HISTORY_DAYS``), wall-clock snapshots for ``wall_days``
    of wall time (``AMPELIOS_WALL_SNAPSHOT_DAYS``). Periods and alerts are kept whole:
    a row per day and segment, a few thousand a year."""

    event_days: float = 60.0
    wall_days: float = 30.0


class HistoryUnavailable(RuntimeError):
    """Postgres cannot be reached or refused the statement; the caller may retry."""


class Fenced(RuntimeError):
    """A sink write of a consumer-group generation older than one that wrote since: its
    records' partitions were handed over, and their new holder writes them."""


def _ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _array(values: Sequence[Any]) -> str:
    """A Postgres array literal of numbers or booleans. Passing one string per column
    costs a fraction of psycopg2 adapting every element of a list (JSON's ``1,2`` and
    ``true,false`` are Postgres's too)."""
    return "{" + orjson.dumps(values)[1:-1].decode() + "}"


def _text_array(values: Sequence[str]) -> str:
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


class History:
    """Ampelios's history in one Postgres database. Connects lazily and again after the
    server went away; every failure to reach it is :class:`HistoryUnavailable`."""

    def __init__(self, url: str) -> None:
        forget_failed_postgres_connections()
        self.url = url
        self._pool: aiopg.Pool | None = None
        self._connecting = asyncio.Lock()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()
            await pool.wait_closed()

    async def _run(self, work: Callable[[Any], Awaitable[T]], *, transaction: bool = False) -> T:
        try:
            pool = await self._connected()
            async with pool.acquire() as conn, conn.cursor() as cur:
                if not transaction:
                    return await work(cur)
                await cur.execute("BEGIN")
                try:
                    result = await work(cur)
                except BaseException:
                    await cur.execute("ROLLBACK")
                    raise
                await cur.execute("COMMIT")
                return result
        except (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError) as exc:
            await self.close()
            raise HistoryUnavailable(f"Postgres is unavailable: {str(exc).strip() or type(exc).__name__}") from exc

    async def _connected(self) -> aiopg.Pool:
        """The pool, once the schema is migrated: concurrent first calls wait for one
        connection and one migration, so no query ever meets a table not yet created."""
        async with self._connecting:
            if self._pool is None:
                pool = await aiopg.create_pool(self.url, minsize=0, maxsize=4, timeout=10)
                try:
                    await _migrate(pool)
                except BaseException:
                    pool.terminate()
                    await pool.wait_closed()
                    raise
                self._pool = pool
            return self._pool

    async def schema_version(self) -> int:
        async def work(cur: Any) -> int:
            await cur.execute("SELECT max(version) FROM ampelios_schema")
            return int((await cur.fetchone())[0])

        return await self._run(work)

    # ------------------------------------------------------------------ writes

    async def write(
        self,
        snapshots: Sequence[dict[str, Any]],
        visitor_updates: Sequence[dict[str, Any]],
        transitions: Sequence[dict[str, Any]],
        alerts: Sequence[dict[str, Any]] = (),
        fence: tuple[str, int] | None = None,
    ) -> None:
        """Write records of the sink's topics in one transaction (idempotent). With a
        ``fence`` (name, consumer-group generation the records were read in), raise
        :class:`Fenced` and write nothing when a newer generation of that name wrote in
        the last day (older: a group Kafka forgot, empty for a week, numbers anew)."""
        newest_alerts = {(a["source_id"], a["id"]): a for a in alerts}

        newest = {(r["source_id"], r["lineage"]): r for r in snapshots if r.get("basis") == "current"}

        async def work(cur: Any) -> None:
            if fence is not None:  # its row stays locked until the end: writes of a name are serialized
                await cur.execute(
                    "INSERT INTO sink_fences (fence, generation) VALUES (%s, %s) ON CONFLICT (fence) DO UPDATE "
                    "SET generation = EXCLUDED.generation, written_at = now() "
                    "WHERE sink_fences.generation <= EXCLUDED.generation "
                    "OR sink_fences.written_at < now() - interval '1 day' RETURNING generation",
                    fence,
                )
                if await cur.fetchone() is None:
                    raise Fenced(f"records read in generation {fence[1]} of {fence[0]}, a newer one wrote since")
            for snapshot in snapshots:
                if snapshot.get("basis") != "current":
                    await _write_snapshot(cur, snapshot)
            for periods in newest.values():  # each replaces the last, whole
                await _write_periods(cur, periods)
            for update in merge_visitor_updates(visitor_updates):
                await _write_visitors(cur, update)
            if transitions:
                await _write_transitions(cur, transitions)
            if newest_alerts:
                await _write_alerts(cur, list(newest_alerts.values()))

        await self._run(work, transaction=True)

    async def prune(self, retention: Retention, now: datetime | None = None) -> dict[str, int]:
        """Delete what ``retention`` no longer keeps (wall-clock snapshots: back from
        ``now``, the database's clock by default); return the rows deleted per table."""
        values = {"event_days": retention.event_days, "wall_days": retention.wall_days, "now": now}

        async def work(cur: Any) -> dict[str, int]:
            deleted = {}
            for table, sql in _PRUNE:
                await cur.execute(sql, values)
                deleted[table] = cur.rowcount
            return deleted

        return await self._run(work, transaction=True)

    # ------------------------------------------------------------------- reads

    async def lineages(self, source_id: int) -> list[dict]:
        """The model lineages of a source, oldest first: id, when first and last seen."""

        async def work(cur: Any) -> list[dict]:
            await cur.execute(
                "SELECT lineage, first_seen_at, last_seen_at FROM segment_lineages WHERE source_id = %s "
                "ORDER BY first_seen_at, last_seen_at",
                (source_id,),
            )
            return [
                {"lineage": lin, "first_seen": first, "last_seen": last} for lin, first, last in await cur.fetchall()
            ]

        return await self._run(work)

    async def snapshots(
        self, source_id: int, clock: str, since: datetime | None, until: datetime | None, lineage: str
    ) -> list[dict]:
        """Snapshots of a source's model ``lineage`` on a clock, oldest first, each with
        its segments."""

        async def work(cur: Any) -> list[dict]:
            await cur.execute(
                "SELECT taken_at, model_version, reason, segment_id, label, size, share, centroid "
                "FROM segment_snapshots WHERE source_id = %s AND lineage = %s AND clock = %s "
                "AND taken_at >= coalesce(%s::timestamptz, '-infinity') "
                "AND taken_at <= coalesce(%s::timestamptz, 'infinity') "
                "ORDER BY taken_at, segment_id",
                (source_id, lineage, clock, since, until),
            )
            found: list[dict] = []
            for at, version, reason, segment, label, size, share, centroid in await cur.fetchall():
                if not found or found[-1]["at"] != at:
                    found.append({"at": at, "model_version": version, "reason": reason, "segments": []})
                found[-1]["segments"].append(
                    {"id": segment, "label": label, "size": size, "share": share, "centroid": list(centroid)}
                )
            return found

        return await self._run(work)

    async def periods(
        self, source_id: int, since: datetime | None, until: datetime | None, lineage: str
    ) -> tuple[int | None, list[dict], list[dict]]:
        """The segments of each event-time period's population under the newest model of
        a lineage (its version, or ``None`` if none yet), oldest first, with the period's
        activity; and the settlings that renamed segments in that window."""

        async def work(cur: Any) -> tuple[int | None, list[dict], list[dict]]:
            window = (source_id, lineage, since, until)
            where = (
                "WHERE source_id = %s AND lineage = %s AND period_start >= coalesce(%s::timestamptz, '-infinity') "
                "AND period_start <= coalesce(%s::timestamptz, 'infinity') "
            )
            await cur.execute(
                "SELECT period_start, model_version, segment_id, label, size, share, visitors, visitor_share "
                f"FROM period_segments {where}"
                "ORDER BY period_start, segment_id",
                window,
            )
            rows = await cur.fetchall()
            found: list[dict] = []
            for at, _, segment, label, size, share, visitors, visitor_share in rows:
                if not found or found[-1]["at"] != at:
                    found.append({"at": at, "segments": []})
                found[-1]["segments"].append(
                    {
                        "id": segment,
                        "label": label,
                        "size": size,
                        "share": share,
                        "visitors": visitors,
                        "visitor_share": visitor_share,
                    }
                )
            await cur.execute(f"SELECT period_start, {', '.join(ACTIVITY_NAMES)} FROM period_activity {where}", window)
            activity = {at: dict(zip(ACTIVITY_NAMES, counts)) for at, *counts in await cur.fetchall()}
            for period in found:
                period["activity"] = activity.get(period["at"], dict.fromkeys(ACTIVITY_NAMES, 0))
            await cur.execute(
                "SELECT at, model_version, before, after FROM segment_model_changes WHERE source_id = %s "
                "AND lineage = %s AND at >= coalesce(%s::timestamptz, '-infinity') "
                "AND at <= coalesce(%s::timestamptz, 'infinity') ORDER BY model_version",
                window,
            )
            changes = [
                {"at": at, "model_version": version, "before": list(before), "after": list(after)}
                for at, version, before, after in await cur.fetchall()
            ]
            return (rows[0][1] if rows else None), found, changes

        return await self._run(work)

    async def alerts(self, source_id: int, since: datetime | None, until: datetime | None, lineage: str) -> list[dict]:
        """The alerts of a source's model ``lineage`` detected between ``since`` and
        ``until`` (event time), oldest first; withdrawn ones left out."""

        async def work(cur: Any) -> list[dict]:
            await cur.execute(
                "SELECT id, signal, segment_id, label, direction, before, after, started_at, detected_at, "
                "recovered_at, recovery_detected_at FROM segment_alerts WHERE source_id = %s AND lineage = %s "
                "AND NOT withdrawn AND detected_at >= coalesce(%s::timestamptz, '-infinity') "
                "AND detected_at <= coalesce(%s::timestamptz, 'infinity') ORDER BY detected_at, id",
                (source_id, lineage, since, until),
            )
            names = ("id", "signal", "segment", "label", "direction", "before", "after", *ALERT_TIMES)
            return [dict(zip(names, row)) for row in await cur.fetchall()]

        return await self._run(work)

    async def transitions(self, source_id: int, visitorid: int, lineage: str) -> list[dict]:
        """The segment changes of a visitor under a model ``lineage``, oldest first."""

        async def work(cur: Any) -> list[dict]:
            await cur.execute(
                "SELECT at, from_segment, to_segment, from_label, to_label FROM segment_transitions "
                "WHERE source_id = %s AND lineage = %s AND visitorid = %s ORDER BY at",
                (source_id, lineage, visitorid),
            )
            return [
                {"at": at, "from": f, "to": t, "from_label": fl, "to_label": tl}
                for at, f, t, fl, tl in await cur.fetchall()
            ]

        return await self._run(work)


_PRUNE: Sequence[tuple[str, str]] = (
    (
        "segment_transitions",
        """DELETE FROM segment_transitions t
           USING (SELECT source_id, max(at) AS newest FROM segment_transitions GROUP BY source_id) n
           WHERE t.source_id = n.source_id AND t.at < n.newest - %(event_days)s * interval '1 day'""",
    ),
    (
        "segment_snapshots",
        """DELETE FROM segment_snapshots s
           USING (SELECT source_id, max(taken_at) AS newest FROM segment_snapshots
                  WHERE clock = 'event' GROUP BY source_id) n
           WHERE s.source_id = n.source_id AND s.clock = 'event'
             AND s.taken_at < n.newest - %(event_days)s * interval '1 day'""",
    ),
    (
        "segment_snapshots (wall)",
        """DELETE FROM segment_snapshots
           WHERE clock = 'wall'
             AND taken_at < coalesce(%(now)s::timestamptz, now()) - %(wall_days)s * interval '1 day'""",
    ),
    (
        "visitors",
        """DELETE FROM visitors v
           USING (SELECT source_id, max(last_event_at) AS newest FROM visitors GROUP BY source_id) n
           WHERE v.source_id = n.source_id AND NOT v.active
             AND v.last_event_at < n.newest - %(event_days)s * interval '1 day'""",
    ),
)


async def _migrate(pool: aiopg.Pool) -> None:
    """Bring the schema to the last of MIGRATIONS, under an advisory lock (several
    workers may start at once)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("BEGIN")
        try:
            await cur.execute("SELECT pg_advisory_xact_lock(hashtext('ampelios-migrate'))")
            await cur.execute("CREATE TABLE IF NOT EXISTS ampelios_schema (version integer NOT NULL)")
            await cur.execute("SELECT coalesce(max(version), 0) FROM ampelios_schema")
            (current,) = await cur.fetchone()
            for version, sql in MIGRATIONS:
                if version > current:
                    await cur.execute(sql)
                    await cur.execute("INSERT INTO ampelios_schema VALUES (%s)", (version,))
                    log.info("Postgres schema migrated to version %d", version)
            await cur.execute("COMMIT")
        except BaseException:
            await cur.execute("ROLLBACK")
            raise


async def _seen_lineage(cur: Any, source_id: int, lineage: str) -> None:
    await cur.execute(
        "INSERT INTO segment_lineages (source_id, lineage) VALUES (%s, %s) "
        "ON CONFLICT (source_id, lineage) DO UPDATE SET last_seen_at = now()",
        (source_id, lineage),
    )


async def _write_snapshot(cur: Any, snapshot: dict[str, Any]) -> None:
    segments = snapshot["segments"]
    total = sum(s["size"] for s in segments) or 1
    rows = [
        (
            snapshot["source_id"],
            snapshot["clock"],
            _ms(snapshot["at"]),
            snapshot["model_version"],
            s["id"],
            s["label"],
            s["size"],
            s["size"] / total,
            s["centroid"],
            snapshot.get("reason"),
        )
        for s in segments
    ]
    lineage = snapshot.get("lineage", "")
    values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
    await cur.execute(
        "INSERT INTO segment_snapshots (source_id, clock, taken_at, model_version, segment_id, label, size, "
        f"share, centroid, reason, lineage) VALUES {values} ON CONFLICT DO NOTHING",
        [x for row in rows for x in (*row, lineage)],
    )
    await _seen_lineage(cur, snapshot["source_id"], lineage)
    shapes = snapshot.get("shapes")
    if shapes is not None:  # the shape -> segment mapping of a wall-clock snapshot
        source = snapshot["source_id"]
        await cur.execute("DELETE FROM segment_shapes WHERE source_id = %s", (source,))
        if shapes:
            columns = list(zip(*shapes))
            labels = [segments[s]["label"] for s in columns[4]]
            await cur.execute(
                "INSERT INTO segment_shapes SELECT %s, v, a, t, s, seg, label, %s, %s FROM unnest(%s::int[], "
                "%s::int[], %s::int[], %s::int[], %s::int[], %s::text[]) AS u(v, a, t, s, seg, label)",
                (source, snapshot["model_version"], lineage, *map(_array, columns), _text_array(labels)),
            )


async def _write_periods(cur: Any, record: dict[str, Any]) -> None:
    """Replace a source's and lineage's period tables with a periods record's."""
    source, lineage, version = record["source_id"], record["lineage"], record["model_version"]
    starts = [_ms(at) for at in record["periods"]]
    segments = record["segments"]
    await cur.execute("DELETE FROM period_segments WHERE source_id = %s AND lineage = %s", (source, lineage))
    await cur.execute("DELETE FROM period_activity WHERE source_id = %s AND lineage = %s", (source, lineage))
    await cur.execute("DELETE FROM segment_model_changes WHERE source_id = %s AND lineage = %s", (source, lineage))
    for change in record.get("model_changes", []):
        await cur.execute(
            "INSERT INTO segment_model_changes VALUES (%s, %s, %s, %s, %s, %s)",
            (source, lineage, _ms(change["at"]), change["model_version"], change["before"], change["after"]),
        )
    if not starts:
        return
    rows = [
        (start, s["id"], s["label"], size, size / (sum(sizes) or 1), seen, seen / (sum(visitors) or 1))
        for start, sizes, visitors in zip(starts, record["sizes"], record["visitors"])
        for s, size, seen in zip(segments, sizes, visitors)
    ]
    columns = list(zip(*rows))
    await cur.execute(
        "INSERT INTO period_segments SELECT %s, %s, u.*, %s FROM unnest(%s::timestamptz[], %s::int[], %s::text[], "
        "%s::bigint[], %s::float8[], %s::bigint[], %s::float8[]) AS u",
        (
            source,
            lineage,
            version,
            list(columns[0]),
            _array(columns[1]),
            _text_array(columns[2]),
            *map(_array, columns[3:]),
        ),
    )
    counts = list(zip(*record["activity"]))
    await cur.execute(
        "INSERT INTO period_activity SELECT %s, %s, u.* FROM unnest(%s::timestamptz[], %s::bigint[], %s::bigint[], "
        "%s::bigint[], %s::bigint[], %s::bigint[]) AS u",
        (source, lineage, starts, *map(_array, counts)),
    )
    await _seen_lineage(cur, source, lineage)


ALERT_COLUMNS = (
    "source_id",
    "id",
    "lineage",
    "signal",
    "segment",
    "label",
    "direction",
    "before",
    "after",
    "started_at",
    "detected_at",
    "recovered_at",
    "recovery_detected_at",
    "withdrawn",
)
ALERT_TIMES = ("started_at", "detected_at", "recovered_at", "recovery_detected_at")


async def _write_alerts(cur: Any, alerts: Sequence[dict[str, Any]]) -> None:
    """Insert or replace alerts by (source, id): the newest record of an alert says all."""
    rows = [
        tuple(
            (_ms(a[c]) if a[c] is not None else None)
            if c in ALERT_TIMES
            else a.get(c, False if c == "withdrawn" else None)
            for c in ALERT_COLUMNS
        )
        for a in alerts
    ]
    columns = ", ".join("segment_id" if c == "segment" else c for c in ALERT_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns.split(", ")[2:])
    values = ",".join(["(" + ",".join(["%s"] * len(ALERT_COLUMNS)) + ")"] * len(rows))
    await cur.execute(
        f"INSERT INTO segment_alerts ({columns}) VALUES {values} "
        f"ON CONFLICT (source_id, id) DO UPDATE SET {updates}, updated_at = now()",
        [x for row in rows for x in row],
    )


VISITOR_COLUMNS = ("visitorid", "views", "addtocarts", "transactions", "sessions", "last_event", "active")


def merge_visitor_updates(updates: Sequence[dict[str, Any]]) -> list[dict[str, str | int]]:
    """Visitor-updates records (one list per column, in topic order) as one record per
    source whose columns are Postgres array literals, the records' rows one after
    another: one statement per source instead of one per record (:func:`_write_visitors`
    keeps, of a visitor's rows, the one writing them one by one would leave).

    >>> merge_visitor_updates([
    ...     {"source_id": 1, "visitorid": [7, 8], "views": [1, 1], "addtocarts": [0, 0], "transactions": [0, 0],
    ...      "sessions": [1, 1], "last_event": [10, 10], "active": [True, True]},
    ...     {"source_id": 1, "visitorid": [7], "views": [2], "addtocarts": [0], "transactions": [0],
    ...      "sessions": [1], "last_event": [20], "active": [True]},
    ... ])[0]["visitorid"]
    '{7,8,7}'
    """
    by_source: dict[int, list[dict[str, Any]]] = {}
    for update in updates:
        if len(update["visitorid"]) or len(update.get("merged", ())):
            by_source.setdefault(int(update["source_id"]), []).append(update)
    return [
        {
            "source_id": source_id,
            **{c: "{" + ",".join(_array(r[c])[1:-1] for r in records if len(r[c])) + "}" for c in VISITOR_COLUMNS},
            "merged": "{" + ",".join(_array(r.get("merged", []))[1:-1] for r in records if r.get("merged")) + "}",
        }
        for source_id, records in by_source.items()
    ]


async def _write_visitors(cur: Any, update: dict[str, Any]) -> None:
    """Upsert the visitors of a merged visitor-updates record. A visitor's row is written
    unless Postgres holds a more recent one; of several rows of one visitor, the last with
    the latest ``last_event`` (what writing them one by one would leave). Then delete the
    rows of its ``merged`` visitors: linked to others, whose rows hold their events."""
    await cur.execute(
        "INSERT INTO visitors (source_id, visitorid, views, addtocarts, transactions, sessions, "
        "views_per_session, purchase_ratio, last_event_at, active) "
        "SELECT DISTINCT ON (vid) %s, vid, v, a, t, s, v::float8 / greatest(s, 1), "
        "CASE WHEN v > 0 THEN t::float8 / v ELSE t::float8 / greatest(s, 1) END, "
        "to_timestamp(last / 1000.0), act "
        "FROM unnest(%s::bigint[], %s::int[], %s::int[], %s::int[], %s::int[], %s::bigint[], %s::bool[]) "
        "WITH ORDINALITY AS u(vid, v, a, t, s, last, act, n) ORDER BY vid, last DESC, n DESC "
        "ON CONFLICT (source_id, visitorid) DO UPDATE SET views = EXCLUDED.views, "
        "addtocarts = EXCLUDED.addtocarts, transactions = EXCLUDED.transactions, sessions = EXCLUDED.sessions, "
        "views_per_session = EXCLUDED.views_per_session, purchase_ratio = EXCLUDED.purchase_ratio, "
        "last_event_at = EXCLUDED.last_event_at, active = EXCLUDED.active, updated_at = now() "
        "WHERE visitors.last_event_at <= EXCLUDED.last_event_at",
        (update["source_id"], *(update[column] for column in VISITOR_COLUMNS)),
    )
    await cur.execute(
        "DELETE FROM visitors WHERE source_id = %s AND visitorid = ANY(%s::bigint[])",
        (update["source_id"], update["merged"]),
    )


async def _write_transitions(cur: Any, transitions: Sequence[dict[str, Any]]) -> None:
    transitions = [t for t in transitions if t["to"] is not None]  # an exit to no segment: a linked visitor
    if not transitions:
        return
    columns = [_array([t[name] for t in transitions]) for name in ("source_id", "visitorid", "at", "from", "to")]
    labels = [_text_array([t[name] for t in transitions]) for name in ("from_label", "to_label")]
    versions = _array([t["model_version"] for t in transitions])
    lineages = _text_array([t.get("lineage", "") for t in transitions])
    await cur.execute(
        "INSERT INTO segment_transitions SELECT src, vid, to_timestamp(at / 1000.0), f, t, fl, tl, ver, lin FROM "
        "unnest(%s::int[], %s::bigint[], %s::bigint[], %s::int[], %s::int[], %s::text[], %s::text[], %s::bigint[], "
        "%s::text[]) AS u(src, vid, at, f, t, fl, tl, ver, lin) ON CONFLICT DO NOTHING",
        (*columns, *labels, versions, lineages),
    )
