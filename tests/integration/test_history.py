"""Behaviour over time: daily event-time snapshots, segment changes, several sources, a
Postgres that goes away and comes back."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import psycopg2
import pytest
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from ampelios.config import Settings
from ampelios.core.drift import HISTORY_PERIODS
from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch
from ampelios.core.generate import WINDOW_END_MS, WINDOW_START_MS, Drop, Scenario, generate_events
from ampelios.core.labels import BUYERS, kind_of
from ampelios.services.broker import end_offsets, read_range
from ampelios.services.stack import http_json, wait_for_job, wait_until_reflected
from ampelios.sinks.history import ALERT_TIMES, Fenced, History, Retention
from tests.integration.conftest import (
    Workers,
    _admin,
    postgres_server,
    replay,
    settle,
    settled_periods,
    write_events,
)
from tests.integration.producers import produce_anyhow

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
JULY, AUGUST = (round(datetime(2015, m, 1, tzinfo=UTC).timestamp() * 1000) for m in (7, 8))


def iso(ms: int | None) -> str | None:
    """Unix ms as the API writes times."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def at(snapshot: dict) -> date:
    return datetime.fromisoformat(snapshot["at"].replace("Z", "+00:00")).date()


def expected_days(events: EventBatch) -> list[date]:
    """The day boundaries a time-ordered replay passes after its first batch."""
    first = (int(events.timestamp.min()) // DAY_MS + 1) * DAY_MS
    last = int(events.timestamp.max())
    return [datetime.fromtimestamp(ms / 1000, tz=UTC).date() for ms in range(first, last + 1, DAY_MS)]


def daily_activity(events: EventBatch) -> dict[date, dict[str, int]]:
    """Visitors with events, buyers and events per UTC day, counted directly."""
    day = events.timestamp // DAY_MS
    activity = {}
    for d in np.unique(day).tolist():
        mine = events.take(day == d)
        bought = mine.event == TRANSACTION
        activity[datetime.fromtimestamp(d * 86_400, tz=UTC).date()] = {
            "visitors": len(np.unique(mine.visitorid)),
            "buyers": len(np.unique(mine.visitorid[bought])),
            "views": int((mine.event == VIEW).sum()),
            "addtocarts": int((mine.event == ADDTOCART).sum()),
            "transactions": int(bought.sum()),
        }
    return activity


def test_every_day_has_its_population_whatever_the_packing_and_a_drop_shows(settings: Settings, workers: Workers):
    """The same events replayed from a file (5,000 per message, time-ordered) into source 1
    and sent one per message in shuffled order by confluent-kafka into source 2 give the
    same history: one snapshot per day of the last HISTORY_PERIODS (AMPELIOS_HISTORY_DAYS
    is shorter; the older days are folded into the first of them), every day's
    population under the current model, and every day's activity as counted directly."""
    events = generate_events(30_000, seed=3, scenario=Scenario(drops=(Drop(JULY, AUGUST),)))
    write_events(settings.data_dir / "months.csv", events)
    worker = workers.start(settings.with_(snapshot_seconds=1.0, history_days=30.0))
    base = worker.base_url
    replay(base, "months.csv")
    produce_anyhow(settings, EventBatch(**{**vars(events), "source_id": np.full(len(events), 2)}), seed=5)
    one, two = settled_periods(base, 1), settled_periods(base, 2)

    assert one["basis"] == "current" and one["clock"] == "event"
    days = [at(s) for s in one["snapshots"]]
    first, last = (datetime.fromtimestamp(int(f(events.timestamp)) / 1000, tz=UTC).date() for f in (np.min, np.max))
    assert (last - first).days + 1 > HISTORY_PERIODS  # some days were folded
    assert days == [last - timedelta(days=i) for i in reversed(range(HISTORY_PERIODS))]
    assert [(at(a), a["segments"], a["activity"]) for a in one["snapshots"]] == [
        (at(b), b["segments"], b["activity"]) for b in two["snapshots"]
    ]
    counted = daily_activity(events)
    assert {at(s): s["activity"] for s in one["snapshots"]} == {day: counted[day] for day in days}
    assert all(sum(seg["visitors"] for seg in s["segments"]) == s["activity"]["visitors"] for s in one["snapshots"])
    sizes = [[seg["size"] for seg in s["segments"]] for s in one["snapshots"]]
    assert all(a != b for a, b in pairwise(sizes))  # new visitors every day
    assert sum(sizes[-1]) == len(np.unique(events.visitorid))  # all-time: everyone by the last day

    def purchase_rate(month: int) -> float:
        days = [s["activity"] for s in one["snapshots"] if at(s).month == month]
        return sum(d["buyers"] for d in days) / sum(d["visitors"] for d in days)

    assert purchase_rate(7) < 0.3 * purchase_rate(6) and purchase_rate(8) > 2 * purchase_rate(7)

    # the same in Postgres; since / until select a window; the model of the moment too
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT period_start), count(*) FROM current_period_segments WHERE source_id = 1")
        assert cur.fetchone() == (len(days), len(days) * settings.k)
    code, july = http_json("GET", f"{base}/history?source_id=1&since=2015-07-01&until=2015-07-31T00:00:00Z")
    assert code == 200 and [at(s) for s in july["snapshots"]] == [date(2015, 7, d) for d in range(1, 32)]
    code, model = http_json("GET", f"{base}/history?source_id=1&basis=model")
    assert code == 200 and model["snapshots"] and model["snapshots"][0]["reason"] == "event time"
    code, wall = http_json("GET", f"{base}/history?source_id=1&clock=wall")
    assert code == 200 and wall["snapshots"][-1]["reason"].startswith("replay months.csv")
    assert http_json("GET", f"{base}/history?source_id=1&since=july")[0] == 400
    assert http_json("GET", f"{base}/history?source_id=1&clock=wall&basis=current")[1]["basis"] == "model"
    assert http_json("GET", f"{base}/history?source_id=1&basis=today")[0] == 400
    assert http_json("GET", f"{base}/history?source_id=9")[0] == 404


def test_a_purchase_drop_raises_alerts_that_recover_once_and_never_again(settings: Settings, workers: Workers):
    """300,000 generated events (about 2,000 a day) in which purchases fall tenfold for
    three weeks: the purchase rate and the conversion are flagged down within 5 days of
    the start and recovered within 3 days of the end (each shift placed within a day of
    where it happened); the alerts go to segment-alerts,
    to Postgres and to /alerts once, and replaying the same file sends none again."""
    drop = (JULY, JULY + 21 * DAY_MS)
    events = generate_events(300_000, seed=3, scenario=Scenario(drops=(Drop(*drop),)))
    write_events(settings.data_dir / "drop.csv", events)
    worker = workers.start(settings.with_(history_days=30.0))  # the days before 20 June are folded
    base = worker.base_url
    replay(base, "drop.csv")
    settled_periods(base, 1)
    code, answer = http_json("GET", f"{base}/alerts?source_id=1")
    assert code == 200
    flagged = {a["signal"]: a for a in answer["alerts"] if a["direction"] == "down" and a["segment"] is None}
    assert set(flagged) == {"purchase_rate", "conversion"}, answer["alerts"]
    for alert in flagged.values():
        started, detected, recovered, seen = (
            datetime.fromisoformat(alert[k])
            for k in ("started_at", "detected_at", "recovered_at", "recovery_detected_at")
        )
        start, end = (datetime.fromtimestamp(ms / 1000, tz=UTC) for ms in drop)
        assert abs(started - start) <= timedelta(days=1) and detected <= start + timedelta(days=5)
        assert abs(recovered - end) <= timedelta(days=1) and seen <= end + timedelta(days=3)
        assert alert["after"] < 0.3 * alert["before"]
    sent = asyncio.run(read_topic(settings.broker_url, "segment-alerts", 1, {TopicPartition("segment-alerts", 0): 0}))
    last = {r["id"]: r for r in sent}  # an alert is sent again when it changes (recovered, say)
    assert {a["id"]: a for a in answer["alerts"]} == {
        i: {k: r[k] for k in answer["alerts"][0]} | {k: iso(r[k]) for k in ALERT_TIMES}
        for i, r in last.items()
        if not r.get("withdrawn")
    }
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT signal, direction FROM segment_alerts WHERE source_id = 1 AND NOT withdrawn")
        assert sorted(cur.fetchall()) == sorted((a["signal"], a["direction"]) for a in answer["alerts"])

    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    for signal in flagged:
        labels = f'direction="down",segment="",signal="{signal}",source_id="1",state="recovered"'
        assert f"ampelios_alerts{{{labels}}} 1.0" in metrics

    replay(base, "drop.csv")  # the same events again: nothing changes, nothing is sent again
    settle(base)
    assert http_json("GET", f"{base}/alerts?source_id=1")[1] == answer
    again = asyncio.run(read_topic(settings.broker_url, "segment-alerts", 1, {TopicPartition("segment-alerts", 0): 0}))
    assert len(again) == len(sent)
    assert http_json("GET", f"{base}/alerts?source_id=9")[0] == 404


def test_active_days_make_segments_reflect_recent_behaviour(settings: Settings, workers: Workers):
    """The months arrive one file at a time; after each, the settled segments (a function
    of the active population alone, whatever the order the runs were applied in) show
    the buyers' share of the visitors active in the last 14 days; the others leave the
    state (their Postgres row stays, inactive). Postgres keeps 30 days of event time of
    the visitors no longer active, and of transitions."""
    events = generate_events(60_000, seed=3, scenario=Scenario(drops=(Drop(JULY, AUGUST),)))
    worker = workers.start(settings.with_(active_days=14.0, history_days=30.0))
    base = worker.base_url
    shares, names = [], []
    for name, months in (
        ("to-june.csv", events.timestamp < JULY),
        ("july.csv", (events.timestamp >= JULY) & (events.timestamp < AUGUST)),
        ("from-august.csv", events.timestamp >= AUGUST),
    ):
        write_events(settings.data_dir / name, events.take(months))
        replay(base, name)
        settle(base)
        segments = http_json("GET", f"{base}/view?source_id=1")[1]
        shares.append(sum(s["share"] for s in segments if kind_of(s["label"]) in BUYERS))
        names.append([s["label"] for s in segments])
    before, during, after = shares
    # every settling that renamed segments is marked in the history, which is drawn under
    # the newest names; the names changed between the months
    changes = http_json("GET", f"{base}/history?source_id=1")[1]["model_changes"]
    renamed = sum(a != b for a, b in pairwise(names))
    assert renamed and len(changes) >= renamed and changes[-1]["after"] == names[-1]
    assert all(c["before"] != c["after"] for c in changes)
    assert during < 0.5 * before  # only recent behaviour counts: the drop shows in full
    assert after > 2 * during  # ... and so does the recovery

    # only visitors active in the last 14 days (of each partition's event time) are segmented
    last_day = int(events.timestamp.max()) - 14 * DAY_MS
    recent = np.unique(events.visitorid[events.timestamp > last_day])
    stats = http_json("GET", f"{base}/stats?source_id=1")[1]
    segments = http_json("GET", f"{base}/view?source_id=1")[1]
    in_segments = sum(s["users"] for s in segments)
    assert len(recent) <= in_segments < len(np.unique(events.visitorid)) // 2
    # the state holds the active visitors and those inactive for less than 14 days more
    assert in_segments < stats["visitors"] < len(np.unique(events.visitorid))
    newest, (ids, visitor) = int(events.timestamp.max()), np.unique(events.visitorid, return_inverse=True)
    last = np.zeros(len(ids), dtype=np.int64)
    np.maximum.at(last, visitor, events.timestamp)  # each visitor's last event
    stale = int(ids[(last > newest - 25 * DAY_MS) & (last < last_day - 5 * DAY_MS)][0])
    long_gone = int(ids[last < newest - 31 * DAY_MS][0])
    answer = http_json("GET", f"{base}/visitors/{stale}?source_id=1")[1]
    assert (answer["active"], answer["segment"]) == (False, None)
    assert http_json("GET", f"{base}/visitors/{long_gone}?source_id=1")[0] == 404  # forgotten
    start = {TopicPartition("segment-changes", p): 0 for p in range(settings.partitions)}
    changes = asyncio.run(read_topic(settings.broker_url, "segment-changes", settings.partitions, start))
    exits = {c["visitorid"] for c in changes if c["to"] is None}  # leaving is a segment change too
    assert stale in exits and len(exits) > len(recent)

    # events 14 days or more behind their partition's newest come too late: counted, not applied
    late = EventBatch.from_columns(
        np.ones(3), np.full(3, newest - 20 * DAY_MS), [10**9 + i for i in range(3)], [0] * 3, [1] * 3, [-1] * 3
    )
    write_events(settings.data_dir / "late.csv", late)
    replay(base, "late.csv")
    after = http_json("GET", f"{base}/stats?source_id=1")[1]
    assert (after["late"], after["visitors"], after["events"]) == (3, stats["visitors"], stats["events"])
    assert http_json("GET", f"{base}/visitors/{10**9}?source_id=1")[0] == 404
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM visitor_segments WHERE source_id = 1")
        assert cur.fetchone()[0] == in_segments
        cur.execute("SELECT active FROM visitors WHERE source_id = 1 AND visitorid = %s", (stale,))
        assert cur.fetchone() == (False,)
    # the sink's retention (every ten AMPELIOS_SNAPSHOT_SECONDS) deletes what is older
    deadline = time.monotonic() + 60
    while True:
        with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM visitors WHERE source_id = 1 AND visitorid = %s", (long_gone,))
            (left,) = cur.fetchone()
            cur.execute("SELECT max(at) - min(at) FROM segment_transitions WHERE source_id = 1")
            (span,) = cur.fetchone()
        if left == 0 and span <= timedelta(days=30):
            break
        assert time.monotonic() < deadline, f"not deleted: visitor {long_gone} ({left}), transitions over {span}"
        time.sleep(0.5)


async def topic_ends(url: str, topic: str, partitions: int) -> dict[TopicPartition, int]:
    return await end_offsets(url, [TopicPartition(topic, p) for p in range(partitions)])


async def read_topic(url: str, topic: str, partitions: int, since: dict[TopicPartition, int]) -> list[dict]:
    """Every record of a topic after the offsets ``since``, up to its current end."""
    records: list[dict] = []
    for tp, end in (await topic_ends(url, topic, partitions)).items():
        if end > since[tp]:
            records += [orjson.loads(r.value) for r in await read_range(url, tp, since[tp], end)]
    return records


def transition_counts(url: str) -> dict[int, int]:
    """Rows of segment_transitions per source."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT source_id, count(*) FROM segment_transitions GROUP BY 1")
        return dict(cur.fetchall())


def test_two_sources_replayed_at_once_stay_apart(settings: Settings, workers: Workers):
    one = generate_events(20_000, seed=1)
    two = generate_events(12_000, seed=2, source_id=2)  # the same visitor ids, other journeys
    write_events(settings.data_dir / "one.csv", one)
    write_events(settings.data_dir / "two.csv", two)
    worker = workers.start(settings.with_(k_by_source={2: 3}))
    base = worker.base_url
    jobs = [
        http_json("POST", f"{base}/trigger", {"source_id": s, "events_path": f})[1]["job"]
        for s, f in ((1, "one.csv"), (2, "two.csv"))
    ]
    assert [wait_for_job(base, j, timeout=600)["state"] for j in jobs] == ["done", "done"]
    wait_until_reflected(base, 1, timeout=600, stored=True)

    for source, events, k in ((1, one, settings.k), (2, two, 3)):
        visitors = len(np.unique(events.visitorid))
        stats = http_json("GET", f"{base}/stats?source_id={source}")[1]
        assert (stats["events"], stats["visitors"]) == (len(events), visitors)
        segments = http_json("GET", f"{base}/view?source_id={source}")[1]
        assert len(segments) == k and sum(s["users"] for s in segments) == visitors
        history = http_json("GET", f"{base}/history?source_id={source}")[1]["snapshots"]
        assert history and all(len(s["segments"]) == k for s in history)
        assert sum(s["size"] for s in history[-1]["segments"]) <= visitors
        with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM visitors WHERE source_id = %s", (source,))
            assert cur.fetchone() == (visitors,)
    visitor = int(np.intersect1d(one.visitorid, two.visitorid)[0])
    first, second = (http_json("GET", f"{base}/visitors/{visitor}?source_id={s}")[1] for s in (1, 2))
    assert first["sessions"] != second["sessions"] and first["source_id"] == 1 and second["source_id"] == 2

    # Returning visitors of source 1 buy: they move to buyers' segments, and each move is one
    # segment-changes record, shown by /visitors and kept in Postgres; source 2 is untouched.
    counts = np.bincount(np.searchsorted(np.unique(one.visitorid), one.visitorid))
    one_timers = np.unique(one.visitorid)[counts == 1][:30]
    later = int(one.timestamp.max()) + DAY_MS
    n = len(one_timers)
    returning = EventBatch.from_columns(
        np.ones(2 * n),
        np.concatenate([np.full(n, later), np.full(n, later + 60_000)]),
        np.concatenate([one_timers, one_timers]),
        np.repeat([1, 2], n),  # add to cart, then buy
        np.full(2 * n, 7),
        np.concatenate([np.full(n, -1), np.arange(n)]),
    )
    write_events(settings.data_dir / "returning.csv", returning)
    before = http_json("GET", f"{base}/view?source_id=2")[1]
    since = asyncio.run(topic_ends(settings.broker_url, "segment-changes", settings.partitions))
    transitions_before = transition_counts(settings.database_url)  # moves between earlier batches
    replay(base, "returning.csv")
    assert http_json("GET", f"{base}/view?source_id=2")[1] == before
    changes = asyncio.run(read_topic(settings.broker_url, "segment-changes", settings.partitions, since))
    assert {c["visitorid"] for c in changes} == set(one_timers.tolist())
    assert {c["source_id"] for c in changes} == {1} and all(kind_of(c["to_label"]) in BUYERS for c in changes)
    change = changes[0]
    answer = http_json("GET", f"{base}/visitors/{change['visitorid']}?source_id=1")[1]
    assert [(t["from"], t["to"]) for t in answer["transitions"]] == [(change["from"], change["to"])]
    assert answer["segment"] == change["to"]
    transitions = transition_counts(settings.database_url)
    assert transitions.get(1, 0) - transitions_before.get(1, 0) == n
    assert transitions.get(2, 0) == transitions_before.get(2, 0)


def test_a_postgres_outage_loses_nothing(settings: Settings, workers: Workers, tmp_path: Path):
    with postgres_server() as server:
        _admin(server.url, "CREATE DATABASE outage")
        url = server.url.rsplit("/", 1)[0] + "/outage"
        events = generate_events(40_000, seed=8)
        write_events(settings.data_dir / "months.csv", events)
        worker = workers.start(settings.with_(database_url=url, replay_batch_events=200))
        base = worker.base_url
        server.stop()  # the database goes away before the replay
        code, answer = http_json("POST", f"{base}/trigger", {"source_id": 1, "events_path": "months.csv"})
        assert code == 202
        assert wait_for_job(base, answer["job"], timeout=600)["state"] == "done"
        stats = wait_until_reflected(base, 1, timeout=600)
        assert stats["events"] == len(events) and stats["sink_lag"] > 0  # processed; Postgres writes wait
        assert http_json("GET", f"{base}/view?source_id=1")[0] == 200
        code, error = http_json("GET", f"{base}/history?source_id=1")
        assert code == 503 and "Postgres is unavailable" in error["error"]
        assert http_json("GET", f"{base}/visitors/{int(events.visitorid[0])}?source_id=1")[1]["transitions"] is None

        deadline = time.monotonic() + 120
        while http_json("GET", f"{base}/stats?source_id=1")[1]["sink_error"] is None:  # the sink has tried
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "Postgres is unavailable" in http_json("GET", f"{base}/stats?source_id=1")[1]["sink_error"]
        server.start()  # same port, same data
        wait_until_reflected(base, 1, timeout=600, stored=True)
        snapshots = http_json("GET", f"{base}/history?source_id=1&basis=model")[1]["snapshots"]
        days = [at(s) for s in snapshots]
        assert days == expected_days(events)[-len(days) :] and len(days) >= 120  # none missing
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM visitors")
            assert cur.fetchone() == (len(np.unique(events.visitorid)),)
        assert "Postgres is back" in workers.log_text()
    assert WINDOW_START_MS < WINDOW_END_MS  # the generated window the days come from
    assert timedelta(days=len(days)) <= timedelta(milliseconds=WINDOW_END_MS - WINDOW_START_MS)


VISITOR_ROW = st.tuples(
    st.integers(1, 2),  # source
    st.integers(0, 5),  # visitor
    st.integers(0, 9),  # views
    st.integers(0, 3),  # last_event (ms)
    st.booleans(),  # active
)


def visitor_record(source_id: int, rows: list[tuple[int, int, int, int, bool]]) -> dict:
    return {
        "source_id": source_id,
        "visitorid": [r[1] for r in rows],
        "views": [r[2] for r in rows],
        "addtocarts": [r[2] % 2 for r in rows],
        "transactions": [r[2] % 3 for r in rows],
        "sessions": [1 + r[2] for r in rows],
        "last_event": [r[3] for r in rows],
        "active": [r[4] for r in rows],
    }


@settings_(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(VISITOR_ROW, max_size=6), max_size=8),
    merges=st.lists(st.none() | st.integers(0, 5), max_size=8),
)
def test_visitor_updates_written_together_leave_the_rows_of_writing_them_one_by_one(database_url: str, batches, merges):
    """The sink writes a batch of visitor-updates records in one statement per source;
    a visitor may be in several of them (and twice in one, after a resend), and a record
    may delete visitors linked to others (``merged``), who have no rows after that."""
    records, gone = [], set()
    for rows, merged in zip(batches, [*merges, *[None] * len(batches)]):
        for s in (1, 2):
            record = visitor_record(s, [r for r in rows if r[0] == s and (s, r[1]) not in gone])
            if merged is not None:
                record["merged"] = [merged]
                gone.add((s, merged))
            records.append(record)
    expected: dict[tuple[int, int], tuple] = {}
    for r in records:  # one by one: a row is replaced unless Postgres holds a more recent one
        for i, visitor in enumerate(r["visitorid"]):
            key, row = (r["source_id"], visitor), (r["views"][i], r["sessions"][i], r["last_event"][i], r["active"][i])
            if key not in expected or expected[key][2] <= row[2]:
                expected[key] = row
        for visitor in r.get("merged", []):
            expected.pop((r["source_id"], visitor), None)

    async def write_and_read() -> list[tuple]:
        history = History(database_url)
        try:
            await history.write([], records, [])
        finally:
            await history.close()
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT source_id, visitorid, views, sessions, "
                "(extract(epoch FROM last_event_at) * 1000)::bigint, active FROM visitors"
            )
            rows = cur.fetchall()
            cur.execute("TRUNCATE visitors")
        return rows

    written = {
        (s, v): (views, sessions, last, active) for s, v, views, sessions, last, active in asyncio.run(write_and_read())
    }
    assert written == expected


def test_a_write_of_an_older_generation_is_refused_and_writes_nothing(database_url: str):
    """Sinks that lost their partitions while they waited write nothing over their new
    holder's rows: a write read in an older generation of the same fence is refused."""
    older = visitor_record(1, [(1, 7, 16, 5, True)])
    newer = visitor_record(1, [(1, 7, 20, 5, True)])

    async def write() -> None:
        history = History(database_url)
        try:
            await history.write([], [newer], [], fence=("sink:life-1", 4))
            with pytest.raises(Fenced):
                await history.write([], [older], [], fence=("sink:life-1", 3))
            await history.write([], [newer], [], fence=("sink:life-1", 4))  # the same generation again
            await history.write([], [newer], [], fence=("sink:life-2", 1))  # another life of the broker
        finally:
            await history.close()

    asyncio.run(write())
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT views FROM visitors WHERE source_id = 1 AND visitorid = 7")
        assert cur.fetchall() == [(20,)]
        cur.execute("SELECT fence, generation FROM sink_fences ORDER BY fence")
        assert cur.fetchall() == [("sink:life-1", 4), ("sink:life-2", 1)]
        # A group Kafka forgot (empty for a week) numbers its generations anew: a fence
        # not written for a day no longer refuses them.
        cur.execute("UPDATE sink_fences SET written_at = now() - interval '2 days' WHERE fence = 'sink:life-1'")

    async def anew() -> None:
        history = History(database_url)
        try:
            await history.write([], [newer], [], fence=("sink:life-1", 1))
        finally:
            await history.close()

    asyncio.run(anew())
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT generation FROM sink_fences WHERE fence = 'sink:life-1'")
        assert cur.fetchall() == [(1,)]


def test_retention_deletes_what_is_older_than_its_days_and_keeps_the_rest(database_url: str):
    """Sixty days of one source's history (event time in 2015), two of another's, and
    wall-clock snapshots of the last hours: a retention of 7 days of event time and 1
    day of wall time keeps each source's last 7 days, the active visitors whatever their
    age, and the wall snapshots of the last day."""
    start, now = 1_433_116_800_000, round(time.time() * 1000)

    def snapshot(source: int, clock: str, at: int) -> dict:
        segment = {"id": 0, "label": "browsers", "size": 3, "centroid": [1.0] * 6}
        return {"source_id": source, "clock": clock, "at": at, "model_version": 1, "segments": [segment]}

    def transition(source: int, visitor: int, at: int) -> dict:
        names = {"from_label": "browsers", "to_label": "buyers", "model_version": 1, "lineage": ""}
        return {"source_id": source, "visitorid": visitor, "at": at, "from": 0, "to": 1, **names}

    days = [(1, day) for day in range(60)] + [(2, day) for day in range(2)]
    snapshots = [snapshot(s, "event", start + d * DAY_MS) for s, d in days]
    snapshots += [snapshot(1, "wall", now - hours * 3_600_000) for hours in (1, 23, 25, 49)]
    transitions = [transition(s, d, start + d * DAY_MS) for s, d in days]
    visitors = [visitor_record(s, [(s, d, 1, start + d * DAY_MS, d % 2 == 0)]) for s, d in days]

    async def write_and_prune() -> tuple[dict, dict]:
        history = History(database_url)
        try:
            await history.write(snapshots, visitors, transitions)
            return await history.prune(Retention(event_days=7, wall_days=1)), await history.prune(Retention(7, 1))
        finally:
            await history.close()

    deleted, again = asyncio.run(write_and_prune())
    kept = [d for d in range(60) if d >= 52]  # within 7 days of day 59
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT source_id, visitorid FROM segment_transitions ORDER BY 1, 2")
        assert cur.fetchall() == [(1, d) for d in kept] + [(2, 0), (2, 1)]
        cur.execute(
            "SELECT source_id, (taken_at - %s) FROM segment_snapshots WHERE clock = 'event' ORDER BY 1, 2",
            (datetime.fromtimestamp(start / 1000, UTC),),
        )
        assert [(s, delta.days) for s, delta in cur.fetchall()] == [(1, d) for d in kept] + [(2, 0), (2, 1)]
        cur.execute("SELECT count(*) FROM segment_snapshots WHERE clock = 'wall'")
        assert cur.fetchone() == (2,)  # 1 and 23 hours old
        cur.execute("SELECT source_id, visitorid FROM visitors ORDER BY 1, 2")
        active_or_recent = [d for d in range(60) if d % 2 == 0 or d >= 52]
        assert cur.fetchall() == [(1, d) for d in active_or_recent] + [(2, 0), (2, 1)]
    assert deleted == {
        "segment_transitions": 52,
        "segment_snapshots": 52,
        "segment_snapshots (wall)": 2,
        "visitors": 26,
    }
    assert not any(again.values())


def test_reads_at_once_on_a_new_database_wait_for_its_schema(database_url: str):
    """The first requests of a new worker may come together (a look-up while the sink
    starts): each waits for the one migration instead of meeting a missing table."""

    async def read_at_once() -> list:
        history = History(database_url)
        try:
            reads = [history.transitions(1, visitor, "lineage") for visitor in range(4)]
            return await asyncio.gather(*reads, history.lineages(1), history.schema_version())
        finally:
            await history.close()

    *empty, version = asyncio.run(read_at_once())
    assert empty == [[]] * 5 and version >= 2


def test_the_embedded_postgres_lets_in_only_who_has_its_password(database_url: str):
    """No other user of the machine reads or changes the history: no password, or a
    wrong one, is refused; the stack's URL carries the right one."""
    url = urlsplit(database_url)
    assert url.password and (Path(url.path).name.startswith("t_"))
    for credentials in ("postgres", "postgres:wrong", "root"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(url._replace(netloc=f"{credentials}@{url.hostname}:{url.port}").geturl()).close()
    psycopg2.connect(database_url).close()


def test_a_new_deployment_starts_a_lineage_of_its_own_and_the_old_one_stays(settings: Settings, workers: Workers):
    """The same file replayed into a new deployment (another app id: new topics, new local
    state) that shares the database: its model is seeded anew, so its segment ids may mean
    other groups. /history and the current_* SQL views show its lineage alone; the first
    stays whole and queryable."""
    write_events(settings.data_dir / "days.csv", generate_events(20_000, seed=8))
    first = workers.start(settings)
    replay(first.base_url, "days.csv")
    before = settled_periods(first.base_url, 1)
    old = before["lineage"]
    assert old and [lin["lineage"] for lin in before["lineages"]] == [old] and before["snapshots"]
    first.stop()

    second = workers.start(settings.with_(app_id="ampelios-next", state_dir=settings.state_dir.with_name("next")))
    replay(second.base_url, "days.csv")
    now = settled_periods(second.base_url, 1)
    assert now["lineage"] not in ("", old)
    assert [lin["lineage"] for lin in now["lineages"]] == [old, now["lineage"]]
    # the same days of the same file under a model settled on the same population, kept apart
    assert now["snapshots"] == before["snapshots"]
    assert (
        http_json("GET", f"{second.base_url}/history?source_id=1&lineage={old}")[1]["snapshots"] == before["snapshots"]
    )
    code, answer = http_json("GET", f"{second.base_url}/history?source_id=1&lineage=nothing")
    assert code == 404 and "no lineage 'nothing'" in answer["error"]
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT lineage, count(*) FROM period_segments WHERE source_id = 1 GROUP BY 1")
        rows = len(now["snapshots"]) * settings.k
        assert dict(cur.fetchall()) == {old: rows, now["lineage"]: rows}
        cur.execute("SELECT lineage, count(*) > 0 FROM segment_snapshots WHERE source_id = 1 GROUP BY 1")
        assert dict(cur.fetchall()) == {old: True, now["lineage"]: True}
        for view in ("current_segment_snapshots", "current_period_segments"):
            cur.execute(f"SELECT DISTINCT lineage FROM {view} WHERE source_id = 1")
            assert cur.fetchall() == [(now["lineage"],)]
        cur.execute("SELECT DISTINCT lineage FROM visitor_segments WHERE source_id = 1")
        assert cur.fetchall() == [(now["lineage"],)]
