"""Events produced the way a site's own collector would: with confluent-kafka (librdkafka's
own client and partitioner), not with anything Ampelios wrote."""

from __future__ import annotations

import random

import numpy as np
from confluent_kafka import Producer

from ampelios.config import Settings
from ampelios.core.events import EventBatch, encode_each_event, encode_events
from ampelios.services.broker import bootstrap_servers
from ampelios.topology import Topology

BATCH_SHARE = 0.1  # share of the events sent in multi-visitor messages


def produce_anyhow(settings: Settings, events: EventBatch, seed: int = 0) -> int:
    """Send ``events`` to the events topic with confluent-kafka's default partitioner
    (``consistent_random``: CRC32 of the key, a random partition for a null key), one
    event per message, each keyed one of four ways -- the documented ``source:visitor``
    key, no key, one key for everything, a random explicit partition -- and a tenth of
    them in messages of 50 events of many visitors on random partitions. Returns the
    messages sent, all acknowledged."""
    topic, n = Topology.of(settings).events, settings.partitions
    producer = Producer({"bootstrap.servers": bootstrap_servers(settings.broker_url), "linger.ms": 5})
    rng = random.Random(seed)
    order = np.random.default_rng(seed).permutation(len(events))  # arrival order unlike event time
    batched = order[: int(len(order) * BATCH_SHARE)]
    failures: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    sent = 0
    for start in range(0, len(batched), 50):
        chunk = events.take(np.sort(batched[start : start + 50]))
        producer.produce(topic, encode_events(chunk), partition=rng.randrange(n), on_delivery=delivered)
        sent += 1
    singles = events.take(order[len(batched) :])
    for source, visitor, value in zip(
        singles.source_id.tolist(), singles.visitorid.tolist(), encode_each_event(singles)
    ):
        how = sent % 4
        if how == 0:
            producer.produce(topic, value, key=f"{source}:{visitor}", on_delivery=delivered)
        elif how == 1:
            producer.produce(topic, value, on_delivery=delivered)
        elif how == 2:
            producer.produce(topic, value, key=b"site", on_delivery=delivered)
        else:
            producer.produce(topic, value, key=b"site", partition=rng.randrange(n), on_delivery=delivered)
        sent += 1
        producer.poll(0)
    remaining = producer.flush(120)
    assert remaining == 0 and not failures, (remaining, failures[:3])
    return sent
