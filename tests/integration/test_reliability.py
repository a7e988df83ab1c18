"""Nothing lost, nothing counted twice: crashes, duplicate replays, a flooding visitor."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from ampelios.config import Settings
from ampelios.core.events import EventBatch, read_csv
from ampelios.core.generate import generate_events
from ampelios.services.stack import WorkerProcess, changelog_records_recovered, http_json, wait_until_reflected
from tests.integration.conftest import (
    Workers,
    batch_definition,
    outcome,
    replay,
    replay_with_cli,
    settle,
    write_events,
)
from tests.integration.producers import produce_anyhow

pytestmark = pytest.mark.integration

T0 = 1_433_221_332_117  # 2015-06-02, in the generated data's months


def run(settings: Settings, workers: Workers, path: Path, kills: int, sample: list[int], anyhow: bool = False) -> dict:
    """Start a worker, send the file's events -- with ``ampelios replay`` or, ``anyhow``,
    with confluent-kafka on any partition (:func:`produce_anyhow`) -- and SIGKILL the
    worker ``kills`` times meanwhile; the outcome once all is reflected."""
    worker = workers.start(settings)
    if anyhow:
        producer = ThreadPoolExecutor(1)
        produced = producer.submit(produce_anyhow, settings, read_csv(path, 1).events)
    else:
        replay = replay_with_cli(settings, path)
    rng = random.Random(kills)
    for _ in range(kills):  # SIGKILL at random points while the backlog is processed
        time.sleep(rng.uniform(0.5, 2.0))
        worker.kill()
        worker = workers.start(settings)
    if anyhow:
        produced.result(300)  # raises what the producer raised
        producer.shutdown()
    else:
        assert replay.wait(300) == 0, replay.stderr.read() if replay.stderr else ""
    settle(worker.base_url)
    return {**outcome(settings, worker.base_url, sample), "recovered": changelog_records_recovered(worker.base_url)}


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, dict]:
    """The outcome of the uninterrupted run, kept by the first test that needs it."""
    return {}


@pytest.mark.parametrize("producer", ["replay", pytest.param("any partition", marks=pytest.mark.apache)])
def test_sigkill_three_times_during_a_replay_changes_nothing(
    settings: Settings, workers: Workers, tmp_path: Path, reference, uninterrupted: dict, producer: str
):
    """The crashed run's events come from ``ampelios replay`` (100 events per message) or
    from confluent-kafka, one event per message on any partition (forwarded to their
    owners while the worker is killed). Both compare with one uninterrupted replay."""
    events = generate_events(40_000, seed=21)
    path = write_events(tmp_path / "events.csv", events)
    counts = np.bincount(np.searchsorted(np.unique(events.visitorid), events.visitorid))
    visitors = np.unique(events.visitorid)
    sample = sorted({*visitors[np.argsort(-counts)[:10]].tolist(), *random.Random(1).sample(visitors.tolist(), 60)})
    settings = settings.with_(replay_batch_events=100)

    if "outcome" not in uninterrupted:
        with reference() as alone:  # the same kind of broker as the crashed run's
            uninterrupted["outcome"] = run(alone.with_(replay_batch_events=100), workers, path, kills=0, sample=sample)
            workers.stop_all()
    expected = uninterrupted["outcome"]

    crashed = run(settings, workers, path, kills=3, sample=sample, anyhow=producer == "any partition")
    # the last worker kept the local tables of the one killed before it: it read back at
    # most the one record per partition that the killed worker sent but did not store
    recovered = crashed["recovered"]
    assert recovered["journeys"] <= settings.partitions and recovered["segment-state"] <= 1
    assert crashed["stats"] == expected["stats"] == {"events": 40_000, "visitors": len(visitors), "rejected": 0}
    assert crashed["visitors"] == expected["visitors"] and len(crashed["visitors"]) == len(visitors)
    assert crashed["journeys"] == expected["journeys"]
    assert crashed["segments"] == expected["segments"]


def test_the_same_events_twice_count_once(settings: Settings, worker: WorkerProcess):
    events = generate_events(5_000, seed=4)
    write_events(settings.data_dir / "events.csv", events)
    # one file holding every row twice, shuffled
    twice = EventBatch.concat([events, events])
    write_events(settings.data_dir / "twice.csv", twice.take(np.random.default_rng(0).permutation(len(twice))))
    base = worker.base_url

    first = replay(base, "events.csv")
    stats = http_json("GET", f"{base}/stats?source_id=1")[1]
    view = http_json("GET", f"{base}/view?source_id=1")[1]
    again = replay(base, "events.csv")  # the same file again
    doubled = replay(base, "twice.csv")  # every row twice
    assert (first["rows_sent"], again["rows_sent"], doubled["rows_sent"]) == (5_000, 5_000, 10_000)
    assert http_json("GET", f"{base}/stats?source_id=1")[1] == stats
    assert [s["users"] for s in http_json("GET", f"{base}/view?source_id=1")[1]] == [s["users"] for s in view]
    visitor = int(events.visitorid[np.argmax(np.bincount(events.visitorid))])
    answer = http_json("GET", f"{base}/visitors/{visitor}?source_id=1")[1]
    np.testing.assert_allclose(answer["features"], batch_definition(events, visitor, 20 * 60_000)[1])


def test_a_visitor_with_a_million_events_is_counted_exactly(settings: Settings, workers: Workers):
    """A bot among ordinary visitors: its journey outgrows one table value (chunks), and
    every count still equals the plain definition."""
    rng = np.random.default_rng(9)
    n, bot = 1_000_000, 10**12  # an id no generated visitor has
    gaps = rng.choice([1_000, 30_000, 45 * 60_000], size=n, p=[0.7, 0.2999, 0.0001])
    kind = rng.choice([0, 1, 2], size=n, p=[0.9, 0.07, 0.03])  # view, add to cart, buy
    flood = EventBatch.from_columns(
        np.ones(n),
        T0 + np.cumsum(gaps),
        np.full(n, bot),
        kind,
        rng.integers(0, 50_000, n),
        np.where(kind == 2, np.arange(n), -1),
    )
    others = generate_events(20_000, seed=12)
    write_events(settings.data_dir / "flood.csv", EventBatch.concat([flood, others]))
    worker = workers.start(settings.with_(replay_batch_events=100_000))
    job = replay(worker.base_url, "flood.csv")
    assert job["rows_sent"] == n + len(others)

    sessions, features = batch_definition(flood, bot, settings.session_gap_ms)
    stats = http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]
    assert stats["events"] == n + len(others) and stats["visitors"] == len(np.unique(others.visitorid)) + 1
    answer = http_json("GET", f"{worker.base_url}/visitors/{bot}?source_id=1")[1]
    assert answer["features"][:4] == features[:4].tolist()  # counts: exact
    np.testing.assert_allclose(answer["features"][4:], features[4:], rtol=1e-12)  # means: to rounding
    assert answer["state"] == [int(np.sum(kind == k)) for k in (0, 1, 2)]
    assert len(answer["sessions"]) == len(sessions) > 1
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT views, addtocarts, transactions, sessions FROM visitors WHERE visitorid = %s", (bot,))
        assert cur.fetchone() == (*answer["state"], len(sessions))
    replay(worker.base_url, "flood.csv")  # all of it again: nothing changes
    assert http_json("GET", f"{worker.base_url}/visitors/{bot}?source_id=1")[1]["features"] == answer["features"]
    assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["events"] == n + len(others)


@pytest.mark.apache
def test_the_broker_stopped_and_started_again_midway_loses_nothing(
    apache_only, settings: Settings, workers: Workers, broker, tmp_path: Path
):
    events = generate_events(40_000, seed=23)
    path = write_events(tmp_path / "events.csv", events)
    settings = settings.with_(replay_batch_events=100)
    producer = replay_with_cli(settings, path)  # the whole file is on the topic before the outage
    assert producer.wait(300) == 0, producer.stderr.read() if producer.stderr else ""
    worker = workers.start(settings)
    time.sleep(2.0)  # let it get into the backlog (not an assertion: any moment will do)
    broker.stop()
    time.sleep(5.0)  # an outage longer than a heartbeat
    broker.start()  # same port, same data
    stats = wait_until_reflected(worker.base_url, 1, timeout=600, stored=True)
    visitors = len(np.unique(events.visitorid))
    assert (stats["events"], stats["visitors"], stats["rejected"]) == (len(events), visitors, 0)
    assert worker.process is not None and worker.process.poll() is None  # it rode the outage out
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM visitors WHERE source_id = 1")
        assert cur.fetchone() == (visitors,)
