"""Without a window, ``AMPELIOS_LATENESS_DAYS`` bounds a journey by its sessions: the
sessions older than the lateness are kept as summaries, and every answer is the one
the events give."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import rocksdict

from ampelios.config import Settings
from ampelios.core.events import EventBatch
from ampelios.core.generate import generate_events
from ampelios.core.journeys import MERGED, SUMMARIZED
from ampelios.services.stack import http_json
from tests.integration.conftest import Workers, outcome, replay, settle, write_events

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def summarized_journeys(worker_dir: Path) -> int:
    """Journeys stored with summaries in a stopped worker's RocksDB."""
    found = 0
    for current in worker_dir.rglob("journeys-*/CURRENT"):
        db = rocksdict.Rdict(str(current.parent), access_type=rocksdict.AccessType.read_only())
        try:
            journeys = (v for k, v in db.items() if k.startswith(b"1:") and b"#" not in k)
            found += sum(1 for v in journeys if v[1] & SUMMARIZED and not v[1] & MERGED)
        finally:
            db.close()
    return found


def test_journeys_that_summarize_old_sessions_answer_as_whole_ones_and_count_what_comes_late(
    settings: Settings, workers: Workers, reference
):
    """The same file replayed (in time order) by a worker that keeps every event and by
    one with a lateness of three days gives the same days, alerts, segments, Postgres
    visitors and /visitors answers (sessions included), while the second keeps older
    sessions as summaries, also after a restart. Events three days behind their
    partition's newest are counted as late and change nothing."""
    events = generate_events(8_000, seed=41)
    visitors = np.unique(events.visitorid)
    counts = np.bincount(np.searchsorted(visitors, events.visitorid))
    sample = sorted({*visitors[np.argsort(-counts)[:10]].tolist(), *random.Random(3).sample(visitors.tolist(), 40)})
    write_events(settings.data_dir / "events.csv", events)

    with reference() as whole:
        worker = workers.start(whole)
        replay(worker.base_url, "events.csv")
        settle(worker.base_url)
        expected = outcome(whole, worker.base_url, sample)
        workers.stop_all()

    bounded = settings.with_(lateness_days=3.0)
    worker = workers.start(bounded)
    replay(worker.base_url, "events.csv")
    settle(worker.base_url)
    assert outcome(bounded, worker.base_url, sample) == expected
    assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["late"] == 0

    newest = int(events.timestamp.max())
    at, who = [newest - 10 * DAY_MS] * 3, [10**12 + i for i in range(3)]
    late = EventBatch.from_columns([1] * 3, at, who, [0] * 3, [1] * 3, [-1] * 3)  # three views, new visitors
    write_events(settings.data_dir / "late.csv", late)
    replay(worker.base_url, "late.csv")
    settle(worker.base_url)
    stats = http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]
    assert stats["late"] == 3 and stats["events"] == expected["stats"]["events"]
    assert outcome(bounded, worker.base_url, sample) == expected

    workers.stop_all()
    assert summarized_journeys(bounded.worker_dir) > len(visitors) // 10
    worker = workers.start(bounded)  # from its local files
    settle(worker.base_url)
    assert outcome(bounded, worker.base_url, sample) == expected
