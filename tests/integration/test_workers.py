"""Two workers of one app: the partitions split between them, either answers every request
completely, and when one stops the other takes its partitions over and finishes the work."""

from __future__ import annotations

import random
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.core.partitioning import partition_for
from ampelios.services.processes import free_port
from ampelios.services.stack import http_json
from tests.integration.conftest import (
    Workers,
    held_partitions,
    outcome,
    replay_with_cli,
    settle,
    wait_for_split,
    write_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.apache]


def replay_file(settings: Settings, path: Path) -> None:
    producer = replay_with_cli(settings, path)
    assert producer.wait(300) == 0, producer.stderr.read() if producer.stderr else ""


def test_two_workers_share_the_partitions_answer_alike_and_take_over_from_each_other(
    settings: Settings, workers: Workers, tmp_path: Path, reference
):
    events = generate_events(40_000, seed=8)
    order = np.argsort(events.timestamp, kind="stable")
    first = write_events(tmp_path / "first.csv", events.take(order[:20_000]))
    second = write_events(tmp_path / "second.csv", events.take(order[20_000:]))  # many return
    visitors = np.unique(events.visitorid).tolist()
    sample = sorted(random.Random(3).sample(visitors, 60))
    settings = settings.with_(replay_batch_events=100)

    with reference() as one:  # one worker: what two must equal
        one = one.with_(replay_batch_events=100)
        alone = workers.start(one)
        replay_file(one, first)
        settle(alone.base_url)
        expected_first = outcome(one, alone.base_url, sample)
        replay_file(one, second)
        settle(alone.base_url)
        expected_second = outcome(one, alone.base_url, sample)
        workers.stop_all()

    a = workers.start(settings.with_(state_dir=tmp_path / "a"))
    b = workers.start(settings.with_(state_dir=tmp_path / "b", web_port=free_port()))
    _, held_b = wait_for_split([a, b], settings.partitions)
    in_b = [v for v in sample if partition_for(1, v, settings.partitions) in held_b]
    assert in_b and len(in_b) < len(sample)  # some answers need the other worker

    replay_file(settings, first)
    settle(a.base_url, b.base_url)
    assert outcome(settings, a.base_url, sample) == outcome(settings, b.base_url, sample) == expected_first
    verbose = [http_json("GET", f"{w.base_url}/view?source_id=1&verbose=true&limit=5")[1] for w in (a, b)]
    assert verbose[0] == verbose[1]
    assert any(partition_for(1, v, settings.partitions) in held_b for s in verbose[0] for v in s["users"])
    # a whole segment from either worker: the same rows, half of them relayed from the other
    segment = max(http_json("GET", f"{a.base_url}/view?source_id=1")[1], key=lambda s: s["users"])
    path = f"/segments/{segment['id']}/members?source_id=1"
    streamed = [urllib.request.urlopen(w.base_url + path + "&format=csv", timeout=60).read() for w in (a, b)]
    assert streamed[0] == streamed[1] and streamed[0].count(b"\n") == 1 + segment["users"]
    paged, after = [], ""
    while after is not None:
        page = http_json("GET", f"{b.base_url}{path}&limit=5000{after and f'&after={after}'}")[1]
        paged += [m["visitorid"] for m in page["members"]]
        after = page["next"]
    assert paged == [int(line.split(b",")[0]) for line in streamed[0].splitlines()[1:]]

    producer = replay_with_cli(settings, second)
    time.sleep(1.0)  # b stops while the second file is being processed
    assert b.stop() == 0
    assert producer.wait(300) == 0, producer.stderr.read() if producer.stderr else ""
    settle(a.base_url)
    assert held_partitions(a) == list(range(settings.partitions))
    # b's journeys reached a through their changelogs: the visitors of its partitions too
    # end exactly as with one worker
    assert outcome(settings, a.base_url, sample) == expected_second
