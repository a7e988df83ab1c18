"""Journeys and the model survive a restart of the worker alone; an emptied broker is noticed."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time

import confluent_kafka
import numpy as np
import pytest

from ampelios.bench.year import live_table_bytes
from ampelios.config import Settings
from ampelios.core.events import EventBatch
from ampelios.core.generate import generate_events
from ampelios.core.partitioning import partition_for
from ampelios.services.broker import TansuBroker
from ampelios.services.kafka import (
    ApacheKafka,
    changelog_bytes,
    cleaned_up_to_active_segments,
    compact_changelogs_at_once,
)
from ampelios.services.stack import changelog_records_recovered, http_json, wait_until_reflected
from tests.integration.conftest import Workers, batch_definition, replay, write_events

pytestmark = pytest.mark.integration


def snapshot(base: str, visitors: list[int]) -> dict:
    return {
        "stats": http_json("GET", f"{base}/stats?source_id=1")[1],
        "view": http_json("GET", f"{base}/view?source_id=1")[1],
        "visitors": [http_json("GET", f"{base}/visitors/{v}?source_id=1")[1] for v in visitors],
    }


ON_BOTH = pytest.mark.apache


@pytest.mark.parametrize(
    "stop", ["clean", pytest.param("sigkill", marks=ON_BOTH), pytest.param("new-machine", marks=ON_BOTH)]
)
def test_state_survives_a_worker_restart_and_keeps_learning(settings: Settings, workers: Workers, stop: str):
    """A worker stopped cleanly or killed keeps its local tables: its successor reads only
    the changelog records after them (at most the last one of each partition again). On a
    new machine everything comes back from the changelogs."""
    first = generate_events(12_000, seed=1)
    write_events(settings.data_dir / "first.csv", first)
    worker = workers.start(settings)
    replay(worker.base_url, "first.csv")
    sample = np.random.default_rng(1).choice(np.unique(first.visitorid), 150, replace=False).tolist()
    before = snapshot(worker.base_url, sample)
    if stop == "sigkill":
        worker.kill()
    else:
        assert worker.stop() == 0  # a clean shutdown
    if stop == "new-machine":  # everything comes back from the changelogs
        shutil.rmtree(settings.worker_dir)

    worker = workers.start(settings)
    wait_until_reflected(worker.base_url, 1, timeout=300, stored=True)  # e.g. its first snapshot
    assert snapshot(worker.base_url, sample) == before
    recovered = changelog_records_recovered(worker.base_url)
    if stop == "new-machine":
        assert recovered["journeys"] > 2 * settings.partitions
    else:
        assert recovered["journeys"] <= settings.partitions and recovered["segment-state"] <= 1

    # The restarted worker goes on from the recovered state: visitors of both files,
    # some in both, are each counted once and the model is updated, not re-seeded.
    second = generate_events(8_000, seed=2)
    second = EventBatch.from_columns(
        second.source_id, second.timestamp, second.visitorid + 3_000, second.event, second.itemid, second.transactionid
    )
    write_events(settings.data_dir / "second.csv", second)
    replay(worker.base_url, "second.csv")
    both = EventBatch.concat([first, second])
    distinct = len(np.unique(both.visitorid))
    stats = http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]
    assert (stats["events"], stats["visitors"]) == (20_000, distinct)
    assert sum(s["users"] for s in http_json("GET", f"{worker.base_url}/view?source_id=1")[1]) == distinct
    overlap = sorted(set(first.visitorid.tolist()) & set(second.visitorid.tolist()))[:50]
    assert overlap
    for visitor in overlap:
        answer = http_json("GET", f"{worker.base_url}/visitors/{visitor}?source_id=1")[1]
        np.testing.assert_allclose(answer["features"], batch_definition(both, visitor, settings.session_gap_ms)[1])


def test_a_worker_notices_an_emptied_broker_and_starts_clean(settings: Settings, workers: Workers, tmp_path):
    events = generate_events(3_000, seed=5)
    write_events(settings.data_dir / "events.csv", events)
    worker = workers.start(settings)
    replay(worker.base_url, "events.csv")
    assert worker.stop() == 0

    # The embedded broker keeps nothing across its own restarts.
    reborn = TansuBroker(tmp_path / "broker-2.log").start()
    try:
        worker = workers.start(settings.with_(broker=reborn.url))
        assert "Starting clean" in workers.log_text()
        code, answer = http_json("GET", f"{worker.base_url}/view?source_id=1")
        assert code == 404, answer
        assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["events"] == 0
        replay(worker.base_url, "events.csv")  # and it works again from there
        assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["events"] == len(events)
        assert worker.stop() == 0
    finally:
        reborn.stop()


def test_a_running_worker_stops_when_the_broker_comes_back_empty(settings: Settings, workers: Workers, tmp_path):
    events = generate_events(3_000, seed=6)
    write_events(settings.data_dir / "events.csv", events)
    broker = TansuBroker(tmp_path / "own-broker.log").start()
    try:
        settings = settings.with_(broker=broker.url)
        worker = workers.start(settings)
        replay(worker.base_url, "events.csv")
        broker.stop()  # the embedded broker restarts empty, on the same address
        broker = TansuBroker(tmp_path / "own-broker-2.log", port=broker.port).start()
        assert worker.process is not None
        assert worker.process.wait(timeout=300) == 75  # it says so and stops, rather than go on
        assert "came back without the data this worker's state was built on" in workers.log_text()

        worker = workers.start(settings)
        assert "Starting clean" in workers.log_text()
        assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["events"] == 0
        replay(worker.base_url, "events.csv")
        assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["events"] == len(events)
    finally:
        workers.stop_all()
        broker.stop()


def test_a_worker_asked_to_stop_stops_even_when_its_broker_is_gone(settings: Settings, workers: Workers, tmp_path):
    """Faust's consumer thread may wait a minute for a coordinator that is gone; the worker
    ends itself STOP_DEADLINE_SECONDS (8 s) after SIGTERM instead. Whether Faust's own stop
    or the deadline ends it depends on where the consumer was when the broker went, so
    the test asserts only the outcome: a clean exit well before Faust's minute."""
    events = generate_events(2_000, seed=7)
    write_events(settings.data_dir / "events.csv", events)
    broker = TansuBroker(tmp_path / "own-broker.log").start()
    try:
        worker = workers.start(settings.with_(broker=broker.url))
        replay(worker.base_url, "events.csv")
        broker.stop()
        assert worker.process is not None
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0  # not the minute Faust alone can take
    finally:
        workers.stop_all()
        broker.stop()


@pytest.mark.apache
def test_a_new_machine_recovers_from_changelogs_that_compaction_has_cleaned(
    apache_only, settings: Settings, workers: Workers, broker: ApacheKafka
):
    """Journeys rewritten by five replays of the same visitors, on a broker whose cleaner
    compacts at once: the changelogs keep under twice the live state, and a worker with an
    empty state directory recovers from them to the same answers."""
    events = generate_events(6_000, seed=11)
    worker = workers.start(settings)
    asyncio.run(compact_changelogs_at_once(broker.url, settings.app_id))  # segments of a second
    for day in range(5):
        shifted = EventBatch.from_columns(
            events.source_id,
            events.timestamp + day * 86_400_000,
            events.visitorid,
            events.event,
            events.itemid,
            events.transactionid,
        )
        write_events(settings.data_dir / f"day{day}.csv", shifted)
        replay(worker.base_url, f"day{day}.csv")
    time.sleep(1.5)  # past segment.ms: the next write to each partition closes its segment
    last = [int(v) for v in np.unique(events.visitorid)]
    owners = {partition_for(1, v, settings.partitions): v for v in last}
    assert len(owners) == settings.partitions
    tail = generate_events(10, seed=12)
    tail = EventBatch.from_columns(
        tail.source_id[:1].repeat(len(owners)),
        np.full(len(owners), int(events.timestamp.max()) + 6 * 86_400_000),
        np.array(sorted(owners.values())),
        tail.event[:1].repeat(len(owners)),
        tail.itemid[:1].repeat(len(owners)),
        tail.transactionid[:1].repeat(len(owners)),
    )
    write_events(settings.data_dir / "tail.csv", tail)
    replay(worker.base_url, "tail.csv")
    sample = np.random.default_rng(2).choice(last, 100, replace=False).tolist()
    before = snapshot(worker.base_url, sample)
    assert worker.stop() == 0

    logs = broker.data_dir / "logs"
    deadline = time.monotonic() + 120
    while not cleaned_up_to_active_segments(logs):
        assert time.monotonic() < deadline, "the log cleaner did not run"
        time.sleep(0.5)
    kept, live = changelog_bytes(logs), sum(live_table_bytes(settings.worker_dir).values())
    assert kept < 2 * live, (kept, live)

    shutil.rmtree(settings.worker_dir)  # a new machine
    worker = workers.start(settings)
    wait_until_reflected(worker.base_url, 1, timeout=300, stored=True)
    assert snapshot(worker.base_url, sample) == before
    written = end_offsets(broker.bootstrap, "journeys-changelog")
    assert changelog_records_recovered(worker.base_url)["journeys"] < written / 2


def end_offsets(bootstrap: str, topic_part: str) -> int:
    """The sum of the end offsets of the partitions of the topic whose name ends ``topic_part``."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    try:
        (topic,) = [t for t in consumer.list_topics(timeout=30).topics if t.endswith(topic_part)]
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p))[1] for p in partitions)
    finally:
        consumer.close()
