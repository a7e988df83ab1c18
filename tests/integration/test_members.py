"""Whole segments out: every member of a segment, page by page (JSON, a cursor) or in one
stream (CSV, NDJSON), each with the features /visitors gives it."""

from __future__ import annotations

import csv
import io
import urllib.request

import numpy as np
import orjson
import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.core.journeys import FEATURE_NAMES
from ampelios.services.stack import WorkerProcess, http_json
from tests.integration.conftest import replay, settle, write_events

pytestmark = pytest.mark.integration


def download(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.headers["Content-Type"], response.read()


def test_every_member_of_every_segment_pages_and_streams_with_its_features(settings: Settings, worker: WorkerProcess):
    events = generate_events(20_000, seed=4)
    write_events(settings.data_dir / "events.csv", events)
    base = worker.base_url
    replay(base, "events.csv")
    settle(base)
    segments = http_json("GET", f"{base}/view?source_id=1")[1]
    assert sum(s["users"] for s in segments) == len(set(events.visitorid.tolist()))

    for segment in segments:
        path = f"{base}/segments/{segment['id']}/members?source_id=1"
        pages, after = [], None  # a small limit: many pages, some ending inside a partition
        while True:
            code, page = http_json("GET", f"{path}&limit=700" + (f"&after={after}" if after else ""))
            assert code == 200, page
            assert (page["segment"], page["label"]) == (segment["id"], segment["label"]) and len(page["members"]) <= 700
            pages.append(page)
            after = page["next"]
            if after is None:
                break
        assert len({p["model_version"] for p in pages}) == 1  # one model for the whole listing
        members = {m["visitorid"]: m["features"] for p in pages for m in p["members"]}
        assert len(members) == sum(len(p["members"]) for p in pages) == segment["users"]

        kind, body = download(f"{path}&format=csv")
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert kind.startswith("text/csv") and rows[0] == ["visitorid", *FEATURE_NAMES]
        streamed = {int(r[0]): [float(x) for x in r[1:]] for r in rows[1:]}
        assert len(rows) - 1 == len(streamed) == segment["users"] and streamed.keys() == members.keys()
        ids = sorted(members)
        np.testing.assert_allclose([streamed[v] for v in ids], [members[v] for v in ids], rtol=1e-5)

        kind, body = download(f"{path}&format=ndjson")
        lines = [orjson.loads(line) for line in body.splitlines()]
        assert kind == "application/x-ndjson" and {m["visitorid"]: m["features"] for m in lines} == members

        for visitor in sorted(members)[:3]:  # /visitors agrees
            answer = http_json("GET", f"{base}/visitors/{visitor}?source_id=1")[1]
            assert answer["segment"] == segment["id"] and answer["features"] == members[visitor]

    first = f"{base}/segments/0/members?source_id=1"
    assert http_json("GET", f"{first}&after=not-a-cursor")[0] == 404
    assert http_json("GET", f"{first}&after=&limit=1")[1] == http_json("GET", f"{first}&limit=1")[1]  # the start
    cursor = http_json("GET", f"{first}&limit=1")[1]["next"]
    assert http_json("GET", f"{base}/segments/1/members?source_id=1&after={cursor}")[0] == 400  # another segment's
    assert http_json("GET", f"{first}&format=xml")[0] == 400
    assert http_json("GET", f"{base}/segments/{len(segments)}/members?source_id=1")[0] == 404
    assert http_json("GET", f"{base}/segments/0/members?source_id=9")[0] == 404
