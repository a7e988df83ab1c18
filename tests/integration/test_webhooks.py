"""Webhooks: a receiver subscribed to a source's segments gets the current members, then
every move, signed as the Standard Webhooks library verifies, retried while it is down,
in order and once back; a subscription from the file runs beside it, unhindered."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ampelios.config import Settings
from ampelios.core.collect import visitor_id
from ampelios.core.webhooks import new_secret
from ampelios.services.processes import free_port
from ampelios.services.stack import http_json, wait_until_reflected
from ampelios.services.webhook_receiver import WebhookReceiver
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration

WRITE_KEY = "wk-shop"
SOURCE = 7
START = datetime(2015, 6, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")


def call(user: str, event: str, minute: int, **properties: Any) -> dict[str, Any]:
    at = (START + timedelta(minutes=minute)).isoformat()
    return {"type": "track", "userId": user, "event": event, "properties": properties, "timestamp": at}


def send(base: str, calls: list[dict[str, Any]]) -> None:
    code, answer = http_json("POST", f"{base}/v1/batch", {"batch": calls, "writeKey": WRITE_KEY})
    assert code == 200 and answer["rejected"] == [], answer


def changes(bodies: list[dict[str, Any]], visitor: int) -> list[dict[str, Any]]:
    return [c for b in bodies if b["type"] == "changes" for c in b["changes"] if c["visitorid"] == visitor]


EVERYONE = {visitor_id("user", f"{kind}-{i}") for kind in ("bouncer", "browser", "buyer") for i in range(10)}


def send_population(base: str) -> None:
    """Thirty visitors: ten bounce after a view, ten browse, ten buy; then a model."""
    calls = []
    for i in range(10):
        calls.append(call(f"bouncer-{i}", "Product Viewed", 0, product_id=i))
        calls += [call(f"browser-{i}", "Product Viewed", m, product_id=m) for m in range(5)]
        calls += [
            call(f"buyer-{i}", "Product Viewed", 0, product_id=1),
            call(f"buyer-{i}", "Product Added", 1, product_id=1),
        ]
        calls.append(call(f"buyer-{i}", "Order Completed", 2, order_id=f"o-{i}", products=[{"product_id": 1}]))
    send(base, calls)
    assert wait_until_reflected(base, SOURCE)["visitors"] == 30
    wait_for(lambda: http_json("GET", f"{base}/view?source_id={SOURCE}")[0] == 200, "a model")


def members(receiver: WebhookReceiver, path: str, secret: str) -> list[int]:
    return [v for b in receiver.bodies(path, secret) if b["type"] == "members" for v in b["visitors"]]


def buy(base: str, user: str) -> None:
    """A bouncer puts a product in the cart, then buys it: it becomes one of the buyers."""
    send(base, [call(user, "Product Added", 3, product_id=0)])
    send(base, [call(user, "Order Completed", 4, order_id=f"o-{user}", products=[{"product_id": 0}])])
    wait_until_reflected(base, SOURCE)


def test_a_receiver_gets_the_members_then_every_move_and_all_it_missed_while_down(
    settings: Settings, workers: Workers, receiver: WebhookReceiver, tmp_path: Path
):
    fixed_secret = new_secret()
    file = tmp_path / "webhooks.json"
    file.write_text(
        json.dumps([{"id": "crm", "url": receiver.url("/file"), "source_id": SOURCE, "secret": fixed_secret}])
    )
    worker = workers.start(settings.with_(write_keys={WRITE_KEY: SOURCE}, webhooks=file))
    base = worker.base_url

    send_population(base)

    # A subscription over HTTP; a wrong one is refused with its reason.
    code, refused = http_json("POST", f"{base}/webhooks", {"url": "ftp://x", "source_id": SOURCE})
    assert code == 400 and "url" in refused["error"]
    code, sub = http_json("POST", f"{base}/webhooks", {"url": receiver.url("/hook"), "source_id": SOURCE})
    assert code == 201, sub
    listed = http_json("GET", f"{base}/webhooks")[1]["subscriptions"]
    assert {s["id"]: s["defined_in"] for s in listed} == {"crm": "AMPELIOS_WEBHOOKS", sub["id"]: "POST /webhooks"}
    assert all("secret" not in s for s in listed)

    # First the members: every active visitor once, in its segment, to both subscriptions.
    for path, secret in (("/hook", sub["secret"]), ("/file", fixed_secret)):
        wait_for(lambda: set(members(receiver, path, secret)) == EVERYONE, f"the members at {path}")  # noqa: B023
        assert sorted(members(receiver, path, secret)) == sorted(EVERYONE)
    originals = {v: o for b in receiver.bodies("/hook", sub["secret"]) for v, o in b.get("original_ids", {}).items()}
    assert originals[str(visitor_id("user", "buyer-7"))] == "user:buyer-7" and len(originals) == 30
    view = {s["id"]: s["label"] for s in http_json("GET", f"{base}/view?source_id={SOURCE}")[1]}
    first = receiver.bodies("/hook", sub["secret"])
    assert all(b["label"] == view[b["segment"]] for b in first)
    buyers = next(b["segment"] for b in first if visitor_id("user", "buyer-0") in b["visitors"])

    # The receiver goes down; a bouncer buys.
    receiver.status["/hook"] = 503
    bouncer = visitor_id("user", "bouncer-0")
    buy(base, "bouncer-0")
    log = f"{base}/webhooks/{sub['id']}/deliveries"
    wait_for(lambda: http_json("GET", log)[1]["deliveries"][0]["attempts"] >= 3, "three failed attempts")
    failing = http_json("GET", log)[1]["deliveries"][0]
    assert failing["status"] == 503 and failing["delivered"] is None and failing["type"] == "changes"

    # Meanwhile the file's subscription, whose receiver is up, got the move.
    moves = wait_for(lambda: changes(receiver.bodies("/file", fixed_secret), bouncer), "the move at /file")
    assert moves[-1]["action"] == "enter" and moves[-1]["segment"] == buyers

    # Back up: the move arrives, exit before entry, in order, under the same webhook-id
    # as the attempts that failed.
    del receiver.status["/hook"]
    wait_for(lambda: changes(receiver.bodies("/hook", sub["secret"]), bouncer), "the move after the outage")
    attempts = receiver.attempts("/hook")
    failed_ids = {r.headers["webhook-id"] for r in attempts if r.status == 503}
    assert failed_ids and failed_ids <= {r.headers["webhook-id"] for r in attempts if r.status == 200}
    mine = changes(receiver.bodies("/hook", sub["secret"]), bouncer)
    assert [c["action"] for c in mine] == ["exit", "enter"] * (len(mine) // 2)
    assert [c["at"] for c in mine] == sorted(c["at"] for c in mine) and mine[-1]["segment"] == buyers
    assert mine == moves
    assert {c["original_id"] for c in mine} == {"user:bouncer-0"}  # whom a CRM knows

    metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
    assert f'ampelios_webhook_deliveries_total{{outcome="failed",subscription="{sub["id"]}"}}' in metrics

    # Deleted: it is gone from the list; the file's cannot be deleted over HTTP.
    assert http_json("DELETE", f"{base}/webhooks/{sub['id']}")[0] == 200
    assert http_json("GET", f"{base}/webhooks/{sub['id']}")[0] == 404
    assert http_json("DELETE", f"{base}/webhooks/crm")[0] == 409


def test_two_workers_share_a_subscription_s_partitions_and_deliver_every_member_and_move(
    settings: Settings, workers: Workers, receiver: WebhookReceiver, tmp_path: Path
):
    both = settings.with_(write_keys={WRITE_KEY: SOURCE})
    a = workers.start(both.with_(state_dir=tmp_path / "a"))
    b = workers.start(both.with_(state_dir=tmp_path / "b", web_port=free_port()))
    wait_for(lambda: http_json("GET", f"{b.base_url}/health")[0] == 200, "the second worker")
    send_population(a.base_url)
    wait_for(lambda: http_json("GET", f"{b.base_url}/view?source_id={SOURCE}")[0] == 200, "the model on b")

    # Subscribed through one worker, delivered by both: each reads the members of the
    # partitions the subscription's group gave it, here or from the worker holding them.
    code, sub = http_json("POST", f"{b.base_url}/webhooks", {"url": receiver.url("/hook"), "source_id": SOURCE})
    assert code == 201
    wait_for(lambda: set(members(receiver, "/hook", sub["secret"])) == EVERYONE, "the members")
    log = http_json("GET", f"{a.base_url}/webhooks/{sub['id']}/deliveries")[1]["deliveries"]
    assert {d["worker"] for d in log} == {a.base_url, b.base_url}
    assert all(d["delivered"] for d in log)

    buy(a.base_url, "bouncer-3")
    bouncer = visitor_id("user", "bouncer-3")
    mine = wait_for(lambda: changes(receiver.bodies("/hook", sub["secret"]), bouncer), "the move")
    assert [c["action"] for c in mine] == ["exit", "enter"] * (len(mine) // 2)

    # Deleted on one worker, its deliveries stop on both: a later move reaches a newer
    # subscription (which starts after the deleted one stopped), not the deleted one.
    assert http_json("DELETE", f"{a.base_url}/webhooks/{sub['id']}")[0] == 200
    wait_for(lambda: http_json("GET", f"{b.base_url}/webhooks/{sub['id']}")[0] == 404, "the deletion on b")
    before = len(receiver.attempts("/hook"))
    code, newer = http_json("POST", f"{a.base_url}/webhooks", {"url": receiver.url("/newer"), "source_id": SOURCE})
    wait_for(lambda: set(members(receiver, "/newer", newer["secret"])) == EVERYONE, "the newer one's members")
    buy(a.base_url, "bouncer-4")
    later = visitor_id("user", "bouncer-4")
    wait_for(lambda: changes(receiver.bodies("/newer", newer["secret"]), later), "the later move")
    assert len(receiver.attempts("/hook")) == before
