"""Write docs/api.md: every operation of /openapi.json with a real request and answer.

Starts an embedded broker, Postgres and a worker in a temporary directory, replays
generated events, asks every endpoint and writes what it answered (long lists cut). Run:

    .venv/bin/python scripts/api_doc.py            # writes docs/api.md
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ampelios.api.openapi import openapi_document
from ampelios.api.routes import OPERATIONS
from ampelios.api.routes.collector import LIBRARY
from ampelios.config import Settings
from ampelios.core.events import write_csv
from ampelios.core.generate import Drop, Scenario, generate_events
from ampelios.services.processes import free_port
from ampelios.services.stack import Stack, http_json, wait_for_job, wait_until_reflected
from ampelios.services.webhook_receiver import WebhookReceiver

OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"
JULY, AUGUST = (round(datetime(2015, m, 1, tzinfo=UTC).timestamp() * 1000) for m in (7, 8))

INTRO = """# HTTP API

Every worker serves this API (default `http://127.0.0.1:6066`), JSON in and out; with
several workers, any of them answers any request ([deploy.md](deploy.md)). The contract is
`GET /openapi.json` (OpenAPI 3.1); this page shows each operation with a request and the
answer a worker gave to it, written by `scripts/api_doc.py` from a live worker after a replay
of 300,000 generated events, in which purchases drop for July (long lists are cut to their first items, marked `"..."`).
`docs/http/ampelios.http` has the same requests for an editor's REST client.

Errors are `{"error": "..."}` with a status that says what to do: 400 (fix the request),
401 (`POST /trigger` without the token, when `AMPELIOS_API_TOKEN` is set), 404 (unknown
source, visitor, job or file), 413 (a body over 64 KiB), 503 (the worker is recovering or
rebalancing, another worker did not answer, or Postgres is down: retry). Writes must be
`Content-Type: application/json` (415 otherwise) and come from the worker's own origin or
one of `AMPELIOS_CORS_ORIGINS` (403); a `Host` that is not the worker's is refused (403).

A source that has sent nothing is not an error where the answer is a count: `/stats` and
`/rejections` answer 200 with zeros; where there is nothing to show, `/view`, `/history`
and `/visitors/{id}` answer 404 with the reason.
"""


SITE_EXPORT = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433221332118,257597,page_view,,
1433223236124,257597,addtocart,355908,
1433223236125,257597,add_to_wishlist,355908,
1433224214164,7,view,248676,
2015-06-02,7,view,248676,
1433224214165,-7,view,248676,
"""
UNREADABLE = """timestamp,visitorid,event
1433221332117;257597;view
1433221332118;257598;view
"""


def cut(value: Any, items: int = 2) -> Any:
    """``value`` with every list longer than ``items`` cut to its first items and "..."."""
    if isinstance(value, list):
        kept = [cut(v, items) for v in value[:items]]
        return [*kept, "..."] if len(value) > items else kept
    if isinstance(value, dict):
        return {k: cut(v, items) for k, v in value.items()}
    return value


def cut_text(text: str, lines: int = 4) -> str:
    """The first ``lines`` lines of ``text``, and "..." if there were more."""
    kept = text.splitlines()
    return "\n".join(kept[:lines] + (["..."] if len(kept) > lines else []))


def text_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ampelios-api-doc-") as root:
        data = Path(root) / "data"
        data.mkdir()
        with (data / "events.csv").open("wb") as f:
            write_csv(generate_events(300_000, seed=5, scenario=Scenario(drops=(Drop(JULY, AUGUST),))), f)
        (data / "site-export.csv").write_text(SITE_EXPORT)
        (data / "unreadable.csv").write_text(UNREADABLE)
        settings = Settings(
            state_dir=Path(root) / "state",
            data_dir=data,
            web_port=free_port(),
            partitions=4,
            event_map={"page_view": "ignore"},
            write_keys={"shop-key": 3},
        )
        with Stack(settings) as stack, WebhookReceiver() as receiver:
            assert stack.worker is not None
            base = stack.worker.base_url
            examples = record(base, receiver)
    OUT.write_text(api_document(examples))
    print(f"wrote {OUT}")
    return 0


def record(base: str, receiver: WebhookReceiver) -> dict[tuple[str, str], list[tuple[str, Any, int, Any]]]:
    """(method, path template) -> [(request path, body, status, answer)] from a live worker."""
    examples: dict[tuple[str, str], list[tuple[str, Any, int, Any]]] = {}

    def ask(method: str, template: str, path: str, body: Any = None) -> Any:
        status, answer = http_json(method, base + path, body)
        examples.setdefault((method, template), []).append((path, body, status, answer))
        return answer

    job = ask("POST", "/trigger", "/trigger", {"source_id": 1, "events_path": "events.csv"})
    wait_for_job(base, job["job"], timeout=600)
    stats = wait_until_reflected(base, 1, timeout=600, stored=True)
    ask("GET", "/trigger/{job}", f"/trigger/{job['job']}")
    ask("GET", "/files", "/files")
    segments = ask("GET", "/view", "/view?source_id=1")
    ask("GET", "/view", "/view?source_id=1&verbose=true&limit=3")
    visitor = http_json("GET", base + "/view?source_id=1&verbose=true&limit=1")[1][0]["users"][0]
    ask("GET", "/visitors/{visitorid}", f"/visitors/{visitor}?source_id=1")
    ask("GET", "/segments/quality", "/segments/quality?source_id=1")
    members = "/segments/{segment}/members"
    page = ask("GET", members, "/segments/0/members?source_id=1&limit=2")
    ask("GET", members, f"/segments/0/members?source_id=1&limit=2&after={page['next']}")
    status, rows = text_get(base + "/segments/0/members?source_id=1&format=csv")
    examples[("GET", members)].append(("/segments/0/members?source_id=1&format=csv", None, status, cut_text(rows)))
    ask("GET", "/history", "/history?source_id=1&clock=event&since=2015-07-01&until=2015-07-03")
    ask("GET", "/alerts", "/alerts?source_id=1")
    ask("GET", "/stats", "/stats?source_id=1")
    ask("GET", "/stats", "/stats?source_id=1&local=true")
    ask("GET", "/health", "/health")
    ask("GET", "/view", "/view?source_id=9")  # an error
    ask("GET", "/stats", "/stats?source_id=9")  # a source with no events: counts are 0
    for name in ("site-export.csv", "unreadable.csv"):  # some rows rejected or ignored; every row rejected
        job = http_json("POST", base + "/trigger", {"source_id": 2, "events_path": name})[1]
        wait_for_job(base, job["job"], timeout=600)
        ask("GET", "/trigger/{job}", f"/trigger/{job['job']}")
    wait_until_reflected(base, 2, timeout=600)
    ask("GET", "/rejections", "/rejections?source_id=2&limit=5")
    ask("GET", "/rejections", "/rejections?source_id=9")
    # A site's tracker (source 3, write key shop-key), as Segment's clients send its calls.
    view = {"userId": "ada", "event": "Product Viewed", "properties": {"product_id": "355908"}}
    ask("POST", "/v1/track", "/v1/track", {**view, "writeKey": "shop-key", "timestamp": "2015-09-18T10:00:00Z"})
    ask("POST", "/v1/page", "/v1/page", {"anonymousId": "a-1", "name": "Home", "writeKey": "shop-key"})
    ask("POST", "/v1/identify", "/v1/identify", {"userId": "ada", "anonymousId": "a-1", "writeKey": "shop-key"})
    calls = [
        {"type": "track", "anonymousId": "a-1", "event": "Product Added", "timestamp": "2015-09-18T10:05:00Z"},
        {"type": "track", "userId": "ada", "event": "Order Completed", "timestamp": "yesterday"},
    ]
    ask("POST", "/v1/batch", "/v1/batch", {"batch": calls, "writeKey": "shop-key"})
    # ... and as Segment's browser library (analytics.js) sends them, and what it fetches.
    browser_view = {"type": "track", "anonymousId": "a-2", "event": "Product Viewed", "writeKey": "shop-key"}
    ask("POST", "/v1/{call}", "/v1/t", {**browser_view, "properties": {"product_id": "248676"}})
    ask("POST", "/v1/m", "/v1/m", {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1}]})
    ask("GET", "/v1/projects/{write_key}/settings", "/v1/projects/shop-key/settings")
    ask("GET", "/sourceConfig/", "/sourceConfig/?writeKey=shop-key")  # RudderStack's SDK
    library = "/analytics.js/v1/{write_key}/analytics.min.js"
    status, script = text_get(base + "/analytics.js/v1/shop-key/analytics.min.js")
    examples[("GET", library)] = [("/analytics.js/v1/shop-key/analytics.min.js", None, status, script[:100] + "...")]
    chunk = sorted(p.name for p in (LIBRARY / "bundles").glob("*.js"))[0]
    status, script = text_get(f"{base}/analytics-next/bundles/{chunk}")
    examples[("GET", "/analytics-next/bundles/{bundle}")] = [
        (f"/analytics-next/bundles/{chunk}", None, status, script[:100] + "...")
    ]
    wait_until_reflected(base, 3, timeout=600)
    ask("GET", "/visitors/{visitorid}", "/visitors/user:ada?source_id=3")
    # A receiver of the segment membership of source 1: its members, then enters and exits.
    hook = {"url": receiver.url("/hook"), "source_id": 1, "segments": [segments[-1]["label"]]}
    subscription = ask("POST", "/webhooks", "/webhooks", hook)
    ask("POST", "/webhooks", "/webhooks", {"url": "ftp://crm.example", "source_id": 1})  # an error
    ask("GET", "/webhooks", "/webhooks")
    one = f"/webhooks/{subscription['id']}"
    ask("GET", "/webhooks/{subscription_id}", one)
    deadline = time.monotonic() + 60
    while not any(r.status == 200 for r in receiver.attempts("/hook")) and time.monotonic() < deadline:
        time.sleep(0.2)
    ask("GET", "/webhooks/{subscription_id}/deliveries", one + "/deliveries")
    status, metrics = text_get(base + "/metrics")
    lines = [line for line in metrics.splitlines() if line.startswith("ampelios_") and "_bucket" not in line]
    examples[("GET", "/metrics")] = [("/metrics", None, status, "\n".join(lines))]
    ask("DELETE", "/webhooks/{subscription_id}", one)
    contract = ask("GET", "/openapi.json", "/openapi.json")
    trimmed = {k: v if k in ("openapi", "info") else "..." for k, v in contract.items()}
    examples[("GET", "/openapi.json")] = [("/openapi.json", None, 200, trimmed)]
    assert stats["events"] > 0 and segments
    return examples


def api_document(examples: dict[tuple[str, str], list[tuple[str, Any, int, Any]]]) -> str:
    """The markdown: an index, then each operation's parameters and recorded examples."""
    document = openapi_document(OPERATIONS, token_required=False)
    parts = [INTRO]
    parts.append("| operation | summary |\n|---|---|")
    operations = [(m.upper(), path, op) for path, item in document["paths"].items() for m, op in item.items()]
    for method, path, op in operations:
        anchor = f"{method} {path}".lower().replace(" ", "-").replace("/", "").replace("{", "").replace("}", "")
        parts[-1] += f"\n| [`{method} {path}`](#{anchor}) | {op['summary']} |"
    parts.append("The dashboard is `GET /` (HTML, with its files under `/static/`); it uses the operations below.")
    for method, path, op in operations:
        section = [f"## {method} {path}", "", op["summary"] + "."]
        if "description" in op:
            section += ["", op["description"]]
        parameters = op.get("parameters", [])
        if parameters:
            section += ["", "| parameter | in | required | meaning |", "|---|---|---|---|"]
            for p in parameters:
                meaning = p.get("description", "")
                section.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | {meaning} |")
        for request_path, body, status, answer in examples.get((method, path), []):
            section += ["", "```http", f"{method} {request_path}"]
            if body is not None:
                section += ["Content-Type: application/json", "", json.dumps(body)]
            section += ["```", "", f"`{status}`", ""]
            if isinstance(answer, str):
                section += ["```text", answer, "```"]
            else:
                section += ["```json", json.dumps(cut(answer), indent=2, ensure_ascii=False), "```"]
        if (method, path) not in examples:
            raise SystemExit(f"no example recorded for {method} {path}: add one to record()")
        parts.append("\n".join(section))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
