"""The collector: a site's tracker pointed at Ampelios, through Segment's own Python client
(segment-analytics-python) and RudderStack's (rudder-sdk-python, which gzips its bodies),
and the answers Segment's API gives."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from aiokafka.structs import TopicPartition
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics import Client as SegmentClient

from ampelios.config import Settings
from ampelios.core.collect import MAX_CALL_BYTES, visitor_id
from ampelios.core.partitioning import partition_for
from ampelios.services.broker import end_offsets, plain_consumer
from ampelios.services.processes import free_port
from ampelios.services.stack import http_json, wait_until_reflected
from tests.integration.conftest import Workers, replay, wait_for_split

pytestmark = pytest.mark.integration

WRITE_KEY = "wk-shop"
START = datetime(2015, 6, 1, 10, 0, tzinfo=UTC)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


SHOP = "https://shop.example"


def post_text(url: str, body: bytes, origin: str) -> tuple[int, Any]:
    """POST ``body`` as ``text/plain`` from a page of ``origin``: status and headers."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain", "Origin": origin}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def preflight(url: str, origin: str, headers: str) -> tuple[int, Any]:
    """A browser's CORS preflight of a POST with ``headers`` from a page of ``origin``."""
    request = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


async def records_of(url: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of every record of a one-partition topic, in order."""
    tp = TopicPartition(topic, 0)
    (end,) = (await end_offsets(url, [tp])).values()
    consumer = plain_consumer(url)
    await consumer.start()
    try:
        consumer.assign([tp])
        found = []
        while len(found) < end:  # no offset skipped: nothing compacts in a test this short
            batches = await consumer.getmany(tp, timeout_ms=10_000)
            assert batches, f"no records of {topic} came"
            found += [(r.key, r.value) for r in batches[tp]]
        return found
    finally:
        await consumer.stop()


def state_of(base: str, kind: str, value: str) -> list[int]:
    code, visitor = http_json("GET", f"{base}/visitors/{visitor_id(kind, value)}?source_id=7")
    assert code == 200, visitor
    return visitor["state"]  # views, add-to-carts, transactions


@pytest.mark.parametrize(
    "sdk",
    [pytest.param(SegmentClient, marks=pytest.mark.apache, id="segment"), pytest.param(RudderClient, id="rudderstack")],
)
def test_a_site_s_tracker_sends_events_that_become_journeys(sdk, settings: Settings, workers: Workers):
    """...and the names of its visitors are kept as long as they may be segmented (a
    window of 2 days here): the records of names that left get tombstones."""
    worker = workers.start(settings.with_(write_keys={WRITE_KEY: 7}, active_days=2))
    base = worker.base_url
    errors: list[object] = []
    client = sdk(WRITE_KEY, host=base, on_error=lambda e, batch: errors.append(e), max_retries=0)
    at = [START + timedelta(minutes=i) for i in range(10)]
    client.track("ada", "Product Viewed", {"product_id": "355908"}, timestamp=at[0])
    client.track("ada", "Product Viewed", {"product_id": "sku-77"}, timestamp=at[1])
    client.track("ada", "Product Added", {"product_id": "355908"}, timestamp=at[2])
    client.track(
        "ada", "Order Completed", {"order_id": "o-1", "products": [{"product_id": "355908"}, {}]}, timestamp=at[3]
    )
    client.track(anonymous_id="anon-9", event="Product Viewed", properties={"product_id": 1}, timestamp=at[4])
    client.page("ada", name="Home", timestamp=at[5])  # pages are ignored unless mapped
    client.track("ada", "Signed Up", timestamp=at[6])  # not an e-commerce event: ignored
    client.identify("ada", {"plan": "gold"}, anonymous_id="anon-9", timestamp=at[7])
    client.flush()  # returns once every call queued so far is answered
    assert errors == []

    stats = wait_until_reflected(base, 7)
    # One person: the anonymous id's view joined ada's journey when the identify linked them.
    assert (stats["events"], stats["visitors"], stats["rejected"], stats["ignored"]) == (6, 1, 0, 2)
    assert state_of(base, "user", "ada") == [3, 1, 2]  # an order of two products: two transactions
    assert state_of(base, "anonymous", "anon-9") == [3, 1, 2]  # the anonymous id finds the person
    sessions = http_json("GET", f"{base}/visitors/{visitor_id('user', 'ada')}?source_id=7")[1]["sessions"]
    assert sessions[0]["start"] == int(at[0].timestamp() * 1000)

    # After the identify, calls with only the anonymous id are ada's too.
    client.track(anonymous_id="anon-9", event="Product Added", properties={"product_id": 1}, timestamp=at[9])
    client.flush()
    client.join()  # the client's sending thread ends
    assert errors == [] and wait_until_reflected(base, 7)["events"] == 7
    assert state_of(base, "user", "ada") == [3, 2, 2]
    for original in ("user:ada", "anonymous:anon-9"):
        by_original = http_json("GET", f"{base}/visitors/{original}?source_id=7")[1]
        assert by_original["visitorid"] == visitor_id("user", "ada") and by_original["state"] == [3, 2, 2]
        assert by_original["original_id"] == "user:ada"

    # A retried batch (the same calls and messageIds) counts once.
    batch = {
        "batch": [
            {
                "type": "track",
                "event": "Product Viewed",
                "userId": "cy",
                "messageId": "m-1",
                "timestamp": at[8].isoformat(),
            }
        ],
        "sentAt": datetime.now(UTC).isoformat(),
    }
    for _ in range(2):
        assert http_json("POST", f"{base}/v1/batch", batch, headers=basic(WRITE_KEY))[0] == 200
    assert wait_until_reflected(base, 7)["events"] == 8

    # Three weeks on ada comes back (her name is stamped again), and a day later bo comes:
    # the names of day 0 alone (cy's) have left, and each record of day 0 has a tombstone.
    names = f"{settings.app_id}-visitor-names-changelog"
    written = asyncio.run(records_of(settings.broker_url, names))
    for day, user in ((22, "ada"), (23, "bo")):
        view = {"type": "track", "event": "Product Viewed", "userId": user, "properties": {"product_id": "1"}}
        call = view | {"timestamp": (START + timedelta(days=day)).isoformat()}
        assert http_json("POST", f"{base}/v1/track", call, headers=basic(WRITE_KEY))[0] == 200
    wait_until_reflected(base, 7)
    ada = http_json("GET", f"{base}/visitors/user:ada?source_id=7")[1]
    assert ada["state"] == [1, 0, 0] and ada["original_id"] == "user:ada"  # day 0 left her window
    assert http_json("GET", f"{base}/visitors/user:bo?source_id=7")[1]["original_id"] == "user:bo"
    records = asyncio.run(records_of(settings.broker_url, names))
    day_zero = {key for key, value in written if value is not None}
    assert len(day_zero) >= 2 and {key for key, value in records if value is None} == day_zero


def test_the_collector_answers_as_segment_does_and_rejects_a_bad_call_alone(settings: Settings, workers: Workers):
    worker = workers.start(settings.with_(write_keys={WRITE_KEY: 7}, cors_origins=(SHOP,)))
    base = worker.base_url
    view = {"type": "track", "event": "Product Viewed", "userId": "ada", "timestamp": START.isoformat()}

    # A browser tracker on the site's page sends text/plain (no preflight); another site's
    # page is refused.
    beacon = json.dumps({**view, "userId": "dee", "writeKey": WRITE_KEY}).encode()
    status, headers = post_text(f"{base}/v1/track", beacon, SHOP)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == SHOP
    assert post_text(f"{base}/v1/track", beacon, "https://elsewhere.example")[0] == 403
    # analytics.js sends its write key as Basic auth and counts retries: a preflight first.
    status, headers = preflight(f"{base}/v1/t", SHOP, "authorization,content-type,x-retry-count")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == SHOP
    assert "X-RETRY-COUNT" in headers["Access-Control-Allow-Headers"].upper()
    assert preflight(f"{base}/v1/t", "https://elsewhere.example", "authorization")[0] == 403

    code, answer = http_json("POST", f"{base}/v1/track", view, headers=basic("wrong"))
    assert code == 401 and "write key" in answer["error"]
    code, answer = http_json("POST", f"{base}/v1/track", {**view, "writeKey": WRITE_KEY})  # the key in the body
    assert code == 200 and answer == {"success": True, "accepted": 1, "ignored": 0, "rejected": []}

    huge = {**view, "properties": {"blob": "x" * MAX_CALL_BYTES}}
    code, answer = http_json("POST", f"{base}/v1/track", huge, headers=basic(WRITE_KEY))
    assert code == 400 and "at most" in answer["error"]
    code, answer = http_json("POST", f"{base}/v1/track", b"{not json", headers=basic(WRITE_KEY))
    assert code == 400 and "JSON" in answer["error"]
    code, answer = http_json("POST", f"{base}/v1/track", {"event": "Product Viewed"}, headers=basic(WRITE_KEY))
    assert code == 400 and "userId or an anonymousId" in answer["error"]

    calls = [
        {**view, "userId": "bob"},
        {**view, "timestamp": "yesterday"},
        {**view, "userId": "cy", "event": "Product Added"},
        {"type": "screen", "userId": "cy"},
        huge,
    ]
    code, answer = http_json("POST", f"{base}/v1/batch", {"batch": calls}, headers=basic(WRITE_KEY))
    assert code == 200, answer
    assert (answer["accepted"], answer["ignored"]) == (2, 1)
    assert [r["index"] for r in answer["rejected"]] == [1, 4]
    assert "ISO 8601" in answer["rejected"][0]["reason"]

    oversized = {"batch": [view] * (500 * 1024 // len(json.dumps(view)) + 1)}
    code, answer = http_json("POST", f"{base}/v1/batch", oversized, headers=basic(WRITE_KEY))
    assert code == 400 and "at most" in answer["error"]

    stats = wait_until_reflected(base, 7)
    assert (stats["events"], stats["rejected"], stats["ignored"]) == (4, 3, 1)
    reasons = {r["reason"] for r in http_json("GET", f"{base}/rejections?source_id=7")[1]["reasons"]}
    assert any("ISO 8601" in r for r in reasons) and any("userId or an anonymousId" in r for r in reasons)


def test_one_person_across_login_across_two_workers_one_killed_midway(
    settings: Settings, workers: Workers, tmp_path: Path
):
    """Forty people browse anonymously, then log in and buy. Each one's anonymous visitor
    lives on one worker's partitions and the user on the other's, and one worker is
    SIGKILLed as soon as the logins are accepted, while their merges are under way: the
    other takes its partitions over, and every person ends as one visitor, exactly once.
    An event of an anonymous visitor that arrives after the link (another feed, late)
    joins its person too."""
    settings = settings.with_(write_keys={WRITE_KEY: 7})
    a = workers.start(settings.with_(state_dir=tmp_path / "a"))
    b = workers.start(settings.with_(state_dir=tmp_path / "b", web_port=free_port()))
    held_a, _ = wait_for_split([a, b], settings.partitions)

    def on_a(kind: str, value: str) -> bool:
        return partition_for(7, visitor_id(kind, value), settings.partitions) in held_a

    pairs = ((f"anon-{i}", f"user-{i}") for i in itertools.count())
    people = list(itertools.islice(((x, u) for x, u in pairs if on_a("anonymous", x) != on_a("user", u)), 40))
    assert {on_a("anonymous", x) for x, _ in people} == {True, False}  # both ways across

    def at(minute: int) -> str:  # each person's own morning: views, login, purchase within minutes
        return (START + timedelta(minutes=minute)).isoformat()

    views = [
        {"type": "track", "anonymousId": x, "event": "Product Viewed", "properties": {"product_id": str(i)}}
        | {"timestamp": at(i)}
        for x, _ in people
        for i in range(3)
    ]
    assert http_json("POST", f"{a.base_url}/v1/batch", {"batch": views}, headers=basic(WRITE_KEY))[0] == 200
    assert wait_until_reflected(a.base_url, 7)["visitors"] == 40
    login = []
    for x, u in people:
        purchase = {"order_id": f"o-{u}", "products": [{"product_id": "1"}]}
        login.append({"type": "identify", "anonymousId": x, "userId": u, "timestamp": at(5)})
        login.append(
            {"type": "track", "userId": u, "event": "Order Completed", "properties": purchase} | {"timestamp": at(6)}
        )
    assert http_json("POST", f"{b.base_url}/v1/batch", {"batch": login}, headers=basic(WRITE_KEY))[0] == 200
    b.kill()

    wait_for_split([a], settings.partitions)  # a holds every partition
    late = f"timestamp,visitorid,event,itemid,transactionid\n{int((START + timedelta(minutes=7)).timestamp() * 1000)},"
    (settings.data_dir / "late.csv").write_text(late + f"{visitor_id('anonymous', people[0][0])},view,4,\n")
    replay(a.base_url, "late.csv", source_id=7)

    stats = wait_until_reflected(a.base_url, 7, stored=True)
    assert (stats["events"], stats["visitors"], stats["rejected"]) == (161, 40, 0)
    for n, (x, u) in enumerate(people):
        assert state_of(a.base_url, "user", u) == state_of(a.base_url, "anonymous", x) == [4 if n == 0 else 3, 0, 1]
    with contextlib.closing(psycopg2.connect(settings.database_url)) as db, db.cursor() as cur:
        cur.execute("SELECT active, views, transactions, count(*) FROM visitors WHERE source_id = 7 GROUP BY 1, 2, 3")
        assert sorted(cur.fetchall()) == [(True, 3, 1, 39), (True, 4, 1, 1)]  # the anonymous ones are theirs
    person = http_json("GET", f"{a.base_url}/visitors/anonymous:{people[0][0]}?source_id=7")[1]
    assert person["visitorid"] == visitor_id("user", people[0][1]) and len(person["sessions"]) == 1
