"""Any producer, one journey per visitor: events sent with confluent-kafka's own
partitioner, null keys, wrong keys and random partitions end exactly as a replay of the
same rows through ``POST /trigger``."""

from __future__ import annotations

import random
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.services.stack import http_json
from tests.integration.conftest import Workers, outcome, replay, settle, write_events
from tests.integration.producers import produce_anyhow

pytestmark = [pytest.mark.integration, pytest.mark.apache]


def test_events_from_any_partition_and_key_end_as_a_replay(
    settings: Settings, workers: Workers, tmp_path: Path, reference
):
    events = generate_events(8_000, seed=31)
    visitors = np.unique(events.visitorid)
    counts = np.bincount(np.searchsorted(visitors, events.visitorid))
    sample = sorted({*visitors[np.argsort(-counts)[:10]].tolist(), *random.Random(2).sample(visitors.tolist(), 40)})
    name = "events.csv"
    write_events(settings.data_dir / name, events)

    with reference() as alone:  # the same data directory
        worker = workers.start(alone)
        replay(worker.base_url, name)
        settle(worker.base_url)
        expected = outcome(alone, worker.base_url, sample)
        assert http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]["forwarded"] == 0
        workers.stop_all()

    worker = workers.start(settings)
    produce_anyhow(settings, events)
    settle(worker.base_url)
    got = outcome(settings, worker.base_url, sample)
    stats = http_json("GET", f"{worker.base_url}/stats?source_id=1")[1]
    assert stats["forwarded"] > len(events) // 2  # most events arrived on a partition not owning them
    with urllib.request.urlopen(f"{worker.base_url}/metrics") as answer:
        metrics = answer.read().decode()
    assert f'ampelios_events_forwarded_total{{source_id="1"}} {float(stats["forwarded"])}' in metrics
    assert got == expected
    assert expected["stats"] == {"events": len(events), "visitors": len(visitors), "rejected": 0}

    # The same rows replayed on top change nothing: no visitor was split.
    replay(worker.base_url, name)
    settle(worker.base_url)
    assert outcome(settings, worker.base_url, sample) == expected
