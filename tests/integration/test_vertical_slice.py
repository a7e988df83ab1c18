"""CSV -> /trigger -> events topic -> worker -> /view, /visitors, /stats and Postgres, all real."""

from __future__ import annotations

import os
import urllib.request

import numpy as np
import psycopg2
import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.core.labels import KINDS, kind_of
from ampelios.services.stack import WorkerProcess, http_json
from tests.integration.conftest import batch_definition, replay, write_events

pytestmark = pytest.mark.integration


@pytest.mark.smoke
@pytest.mark.apache
def test_a_replayed_file_is_reflected_in_segments_visitors_stats_and_history(settings: Settings, worker: WorkerProcess):
    events = generate_events(20_000, seed=11)
    csv_bytes = write_events(settings.data_dir / "events.csv", events).stat().st_size
    base = worker.base_url

    job = replay(base, "events.csv")
    assert (job["rows"], job["rows_sent"], job["rows_rejected"]) == (20_000, 20_000, 0)

    visitors = np.unique(events.visitorid)
    code, stats = http_json("GET", f"{base}/stats?source_id=1")
    assert code == 200
    assert stats.pop("model_version") > 0
    assert stats == {
        "events": 20_000,
        "visitors": len(visitors),
        "rejected": 0,
        "ignored": 0,
        "forwarded": 0,  # a replay sends every event to the partition owning its visitor
        "late": 0,
        "lag": 0,
        "sink_lag": 0,
        "sink_error": None,
    }

    code, segments = http_json("GET", f"{base}/view?source_id=1")
    assert code == 200 and [s["id"] for s in segments] == list(range(settings.k))
    assert sum(s["users"] for s in segments) == len(visitors)
    assert all(len(s["centroid"]) == 6 for s in segments)
    assert all(kind_of(s["label"]) in KINDS for s in segments)
    assert len({s["label"] for s in segments}) == len(segments)
    assert abs(sum(s["share"] for s in segments) - 1) < 1e-9

    # Every visitor checked equals the batch definition; the heaviest ones always included.
    counts = np.bincount(np.searchsorted(visitors, events.visitorid))
    heavy = visitors[np.argsort(-counts)[:20]]
    sample = np.unique(np.concatenate([heavy, np.random.default_rng(0).choice(visitors, 200, replace=False)]))
    users_by_segment = np.zeros(settings.k, dtype=int)
    for visitor in sample.tolist():
        code, answer = http_json("GET", f"{base}/visitors/{visitor}?source_id=1")
        assert code == 200, answer
        sessions, features = batch_definition(events, visitor, settings.session_gap_ms)
        assert answer["sessions"] == [s.to_dict() for s in sessions]
        np.testing.assert_allclose(answer["features"], features)
        assert answer["state"] == features[:3].tolist()
        assert 0 <= answer["segment"] < settings.k
        assert answer["label"] == segments[answer["segment"]]["label"]
        why = answer["why"]  # nearest first: its own segment, then the one it would otherwise be in
        assert why["distances"][0]["segment"] == answer["segment"] == why["segment"]
        other = why["nearest_other"]
        assert other == {"segment": why["distances"][1]["segment"], "label": segments[other["segment"]]["label"]}
        says = [r["says"] for r in why["reasons"]]
        assert says and all(answer["label"] in said and other["label"] in said for said in says)
        users_by_segment[answer["segment"]] += 1

    # verbose=true lists visitor ids instead of counts, each id in its own segment.
    code, verbose = http_json("GET", f"{base}/view?source_id=1&verbose=true&limit=5")
    assert code == 200
    for segment in verbose:
        assert len(segment["users"]) == min(5, segments[segment["id"]]["users"])
        for visitor in segment["users"]:
            assert http_json("GET", f"{base}/visitors/{visitor}?source_id=1")[1]["segment"] == segment["id"]

    # Postgres: the end-of-job snapshot holds the final segments; every visitor has a row,
    # and the visitor_segments view agrees with /view.
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT array_agg(size ORDER BY segment_id), array_agg(label ORDER BY segment_id) "
            "FROM segment_snapshots WHERE source_id = 1 AND clock = 'wall' AND reason LIKE 'replay events.csv%%' "
            "GROUP BY taken_at"
        )
        (sizes, labels), *_ = cur.fetchall()
        assert sizes == [s["users"] for s in segments] and labels == [s["label"] for s in segments]
        cur.execute("SELECT count(*), count(*) FILTER (WHERE active) FROM visitors WHERE source_id = 1")
        assert cur.fetchone() == (len(visitors), len(visitors))
        cur.execute("SELECT segment_id, count(*) FROM visitor_segments WHERE source_id = 1 GROUP BY 1 ORDER BY 1")
        assert [n for _, n in cur.fetchall()] == [s["users"] for s in segments if s["users"]]
        cur.execute(
            "SELECT views, addtocarts, transactions, sessions FROM visitors WHERE source_id = 1 AND visitorid = %s",
            (int(heavy[0]),),
        )
        assert list(cur.fetchone()) == batch_definition(events, int(heavy[0]), settings.session_gap_ms)[1][:4].tolist()

    # Plain words for each segment, the files a replay can read, Prometheus metrics.
    assert all(s["summary"].startswith("On average") and s["advice"] and s["action"] for s in segments)
    assert http_json("GET", f"{base}/files") == (200, {"files": [{"name": "events.csv", "bytes": csv_bytes}]})
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        metrics = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in response.read().decode().splitlines()
            if line and not line.startswith("#")
        }
    assert metrics['ampelios_events_processed_total{source_id="1"}'] == 20_000
    assert metrics['ampelios_replay_jobs{state="done"}'] == 1
    assert metrics['ampelios_lag{kind="stream"}'] == 0
    assert metrics['ampelios_batch_seconds_count{agent="journeys"}'] > 0
    assert metrics['ampelios_model_version{source_id="1"}'] > 0
    sizes = [v for k, v in metrics.items() if k.startswith("ampelios_segment_visitors{") and 'source_id="1"' in k]
    assert len(sizes) == settings.k and sum(sizes) == len(visitors)  # every visitor in one segment


def test_http_answers_bad_requests_clearly(settings: Settings, worker: WorkerProcess, tmp_path):
    base = worker.base_url
    outside = tmp_path / "secret.csv"
    outside.write_text("timestamp,visitorid,event\n")
    (settings.data_dir / "escape.csv").symlink_to(outside)
    (settings.data_dir / "sub.csv").mkdir()
    os.mkfifo(settings.data_dir / "pipe.csv")  # opening it would block the worker forever
    (settings.data_dir / "null.csv").symlink_to("/dev/null")
    (settings.data_dir / "notes.txt").write_text("timestamp,visitorid,event\n")

    for body, status, words in [
        ({"source_id": 1, "events_path": str(outside)}, 400, "relative"),
        ({"source_id": 1, "events_path": "../secret.csv"}, 400, ".."),
        ({"source_id": 1, "events_path": "sub/../../secret.csv"}, 400, ".."),
        ({"source_id": 1, "events_path": "escape.csv"}, 400, "leaves the data directory"),
        ({"source_id": 1, "events_path": "missing.csv"}, 404, "no file"),
        ({"source_id": 1, "events_path": "sub.csv"}, 400, "not a regular file"),
        ({"source_id": 1, "events_path": "pipe.csv"}, 400, "not a regular file"),
        ({"source_id": 1, "events_path": "null.csv"}, 400, "leaves the data directory"),
        ({"source_id": 1, "events_path": "notes.txt"}, 400, "must name a .csv file, as GET /files lists them"),
        ({"source_id": 1, "events_path": "a\x00b"}, 400, "NUL"),
        ({"source_id": 1, "events_path": "x" * 5000 + ".csv"}, 400, "cannot be used"),
        ({"source_id": -1, "events_path": "x.csv"}, 400, "source_id"),
        ({"source_id": "1", "events_path": "x.csv"}, 400, "source_id must be a JSON integer"),
        ({"source_id": 1.5, "events_path": "x.csv"}, 400, "source_id must be a JSON integer"),
        ({"source_id": True, "events_path": "x.csv"}, 400, "source_id must be a JSON integer"),
        ({"events_path": "x.csv"}, 400, "source_id"),
        ({"source_id": 1}, 400, "events_path"),
    ]:
        code, answer = http_json("POST", f"{base}/trigger", body)
        assert (code, words in answer["error"]) == (status, True), (body, answer)

    for path, status, words in [
        ("/view", 400, "source_id is required"),
        ("/view?source_id=abc", 400, "integer"),
        ("/view?source_id=7", 404, "no segments"),
        ("/view?source_id=1&verbose=maybe", 400, "verbose"),
        ("/visitors/abc?source_id=1", 400, "visitorid"),
        ("/visitors/123?source_id=1", 404, "unknown"),
        ("/stats", 400, "source_id"),
        ("/trigger/nope", 404, "no replay job"),
        ("/view?source_id=1&verbose=true&limit=10001", 400, "limit"),
        ("/history?source_id=1&since=99999999999999999999", 400, "since"),
        ("/nowhere", 404, "Not Found"),
    ]:
        code, answer = http_json("GET", f"{base}{path}")
        assert (code, words in answer["error"]) == (status, True), (path, answer)
    assert http_json("GET", f"{base}/health") == (200, {"status": "ok"})
