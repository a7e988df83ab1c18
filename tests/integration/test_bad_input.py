"""Bad rows and messages are rejected, dead-lettered and counted; everything else goes on."""

from __future__ import annotations

import asyncio

import aiokafka
import orjson
import pytest

from ampelios.config import Settings
from ampelios.core.partitioning import partition_for
from ampelios.services.broker import bootstrap_servers
from ampelios.services.stack import WorkerProcess, http_json, wait_for_job, wait_until_reflected
from tests.integration.conftest import Workers, replay

pytestmark = pytest.mark.integration

T = 1433221332117


async def produce(url: str, values: list[bytes]) -> None:
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap_servers(url))
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait("events", value, key=b"1:42")
    finally:
        await producer.stop()


async def dead_letters(url: str, expected: int) -> list[dict]:
    consumer = aiokafka.AIOKafkaConsumer(
        "events-dlq", bootstrap_servers=bootstrap_servers(url), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[dict] = []
    try:
        while len(records) < expected:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout=60)
            records += [orjson.loads(r.value) for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return records


def test_bad_rows_and_messages_are_dead_lettered_counted_and_skipped(settings: Settings, worker: WorkerProcess):
    rows = [
        b"%d,1,view,5," % T,
        b"",  # empty line
        b"%d,2,view,5" % T,  # missing field
        b"%d,abc,view,5," % T,  # non-numeric id
        b"%d,3,click,5," % T,  # unknown event name
        b"%d,4,addtocart,5," % (T + 1),
        b"%d,\xff\xfe,view,5," % T,  # not UTF-8
    ]
    (settings.data_dir / "mixed.csv").write_bytes(
        b"timestamp,visitorid,event,itemid,transactionid\n" + b"\n".join(rows) + b"\n"
    )
    job = replay(worker.base_url, "mixed.csv")
    assert (job["rows"], job["rows_sent"], job["rows_rejected"]) == (7, 2, 5)

    # Messages straight onto the topic, as any producer could send them.
    good = orjson.dumps({"source_id": 1, "timestamp": T + 5, "visitorid": 42, "event": "view", "itemid": 1})
    poison = [
        b"\x00not json",
        b'{"source_id": 1, "timestamp": "soon", "visitorid": 42, "event": "view"}',
        b'{"source_id": 1, "timestamp": 5, "visitorid": 42, "event": "view"}',  # year 1970
    ]
    asyncio.run(produce(settings.broker_url, [*poison, good]))
    stats = wait_until_reflected(worker.base_url, 1, timeout=120)
    assert stats["events"] == 3  # two from the file, one good message after the poison
    assert http_json("GET", f"{worker.base_url}/visitors/42?source_id=1")[0] == 200

    records = asyncio.run(dead_letters(settings.broker_url, 8))
    by_position = {r["position"]: r for r in records}
    assert {"mixed.csv:3", "mixed.csv:4", "mixed.csv:5", "mixed.csv:6", "mixed.csv:8"} <= set(by_position)
    assert by_position["mixed.csv:6"]["reason"] == "unknown event 'click'"
    worker_rejections = [r for r in records if r["stage"] == "worker"]
    assert len(worker_rejections) == 3
    assert {r["source_id"] for r in worker_rejections} == {-1, 1}  # unreadable -> unknown source
    assert stats["rejected"] == 5 + 1  # five file rows and the message whose row had a 1970 timestamp
    assert http_json("GET", f"{worker.base_url}/stats?source_id=-1")[1]["rejected"] == 2  # source unreadable


def test_files_without_rows_fail_or_finish_empty_with_the_reason(settings: Settings, worker: WorkerProcess):
    (settings.data_dir / "empty.csv").write_bytes(b"")
    (settings.data_dir / "header-only.csv").write_bytes(b"\xef\xbb\xbftimestamp,visitorid,event\r\n")
    (settings.data_dir / "no-header.csv").write_bytes(b"%d,1,view,5,\n" % T)
    states = {}
    for name in ("empty.csv", "header-only.csv", "no-header.csv"):
        code, answer = http_json("POST", f"{worker.base_url}/trigger", {"source_id": 1, "events_path": name})
        assert code == 202
        status = wait_for_job(worker.base_url, answer["job"], timeout=120)
        states[name] = (status["state"], status["rows"], status["error"])
    assert states["empty.csv"] == ("failed", 0, "empty.csv is empty: expected a header line")
    assert states["header-only.csv"] == ("done", 0, None)
    assert states["no-header.csv"][0] == "failed" and "the header must name the columns" in states["no-header.csv"][2]
    assert http_json("GET", f"{worker.base_url}/health") == (200, {"status": "ok"})


def test_rejections_are_explained_and_ignored_event_names_are_counted_apart(workers: Workers, settings: Settings):
    """What a user sees without Kafka tools: each reason with its count and first rows, in
    the job and in /rejections; a site's names mapped to ``ignore`` counted as ignored."""
    worker = workers.start(settings.with_(event_map={"page_view": "ignore", "product_view": "view"}))
    rows = [
        b"%d,1,view,5," % T,
        b"%d,1,page_view,," % T,  # ignored, not rejected
        b"%d,2,click,5," % T,
        b"%d,2,product_view,5," % (T + 1),
        b"%d,3,click,6," % T,
        b"",
        b"%d,3,page_view,," % (T + 2),
    ]
    header = b"timestamp,visitorid,event,itemid,transactionid\n"
    (settings.data_dir / "site.csv").write_bytes(header + b"\n".join(rows) + b"\n")
    job = replay(worker.base_url, "site.csv")
    assert (job["rows"], job["rows_sent"], job["rows_rejected"], job["rows_ignored"]) == (7, 2, 3, 2)
    click = {
        "reason": "unknown event 'click'",
        "count": 2,
        "examples": [
            {"position": "site.csv:4", "raw": rows[2].decode()},
            {"position": "site.csv:6", "raw": rows[4].decode()},
        ],
    }
    assert job["rejections"] == [
        click,
        {"reason": "empty line", "count": 1, "examples": [{"position": "site.csv:7", "raw": ""}]},
    ]

    one = orjson.dumps({"source_id": 1, "timestamp": T + 9, "visitorid": 42, "event": "page_view"})
    several = orjson.dumps({"source_id": 1, "timestamp": [T, T], "visitorid": [42, 42], "event": ["view", "page_view"]})
    asyncio.run(produce(settings.broker_url, [one, several]))
    stats = wait_until_reflected(worker.base_url, 1, timeout=120)
    assert (stats["events"], stats["rejected"], stats["ignored"]) == (3, 3, 4)
    code, answer = http_json("GET", f"{worker.base_url}/rejections?source_id=1&limit=1")
    assert code == 200 and answer == {"source_id": 1, "rejected": 3, "reasons": [click]}

    (settings.data_dir / "wrong.csv").write_bytes(header + b"%d,1,click,5,\n%d,2,click,5,\n" % (T, T))
    code, answer = http_json("POST", f"{worker.base_url}/trigger", {"source_id": 1, "events_path": "wrong.csv"})
    status = wait_for_job(worker.base_url, answer["job"], timeout=120)
    assert (status["state"], status["error"]) == ("failed", "every row was rejected: unknown event 'click' (2)")


def test_links_that_go_round_are_refused_not_followed_for_ever(settings: Settings, worker: WorkerProcess):
    """Another producer's ``$merge`` rows link visitor a to b and b to a (on two
    partitions), and one visitor to itself: the self-link is rejected in the file, and
    the events the cycle would move again are refused once; the rest goes on."""
    a = 50
    b = next(
        v for v in range(51, 99) if partition_for(1, v, settings.partitions) != partition_for(1, a, settings.partitions)
    )
    rows = [
        b"%d,%d,view,1," % (T, a),
        b"%d,%d,view,2," % (T + 1, b),
        b"%d,%d,$merge,%d," % (T + 2, a, b),
        b"%d,%d,$merge,%d," % (T + 3, b, a),
        b"%d,9,$merge,9," % (T + 4),  # a visitor linked to itself
        b"%d,9,view,3," % (T + 5),
    ]
    (settings.data_dir / "links.csv").write_bytes(
        b"timestamp,visitorid,event,itemid,transactionid\n" + b"\n".join(rows)
    )
    job = replay(worker.base_url, "links.csv")
    assert (job["rows_sent"], job["rows_rejected"]) == (5, 1)
    stats = wait_until_reflected(worker.base_url, 1, timeout=120)
    assert (stats["events"], stats["visitors"], stats["rejected"]) == (1, 1, 3)  # both views refused
    reasons = [r["reason"] for r in http_json("GET", f"{worker.base_url}/rejections?source_id=1")[1]["reasons"]]
    assert any("another visitor to link to" in r for r in reasons) and any("one level deep" in r for r in reasons)
