"""The replay's partitions are the ones Kafka's default partitioner gives the key."""

from __future__ import annotations

import numpy as np
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.events import EventBatch
from ampelios.core.partitioning import partitions_for, route, visitor_key


@given(
    st.lists(st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1)), min_size=1, max_size=200),
    st.integers(1, 64),
)
def test_vectorized_partitions_equal_kafkas_default_partitioner(pairs, n):
    sources, visitors = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    expected = [DefaultPartitioner()(visitor_key(s, v), list(range(n)), list(range(n))) for s, v in pairs]
    assert partitions_for(sources, visitors, n).tolist() == expected


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6)), min_size=0, max_size=300),
    st.integers(1, 8),
    st.integers(1, 50),
    st.data(),
)
def test_route_keeps_every_event_and_sends_each_to_its_owner(pairs, n, max_events, data):
    partition = data.draw(st.integers(0, n - 1))
    sources = [s for s, _ in pairs]
    visitors = [v for _, v in pairs]
    k = len(pairs)
    events = EventBatch.from_columns(sources, range(k), visitors, [0] * k, [-1] * k, [-1] * k)  # timestamp = row
    routed = route(events, partition, n, max_events)
    owners = dict(zip(zip(sources, visitors), partitions_for(sources, visitors, n).tolist())) if k else {}

    assert all(owners[pair] == partition for pair in zip(routed.own.source_id.tolist(), routed.own.visitorid.tolist()))
    rows = routed.own.timestamp.tolist()
    for owner, message in routed.forwarded:
        assert owner != partition and 1 <= len(message) <= max_events
        assert len(set(message.source_id.tolist())) == 1
        assert {owners[pair] for pair in zip(message.source_id.tolist(), message.visitorid.tolist())} == {owner}
        assert message.timestamp.tolist() == sorted(message.timestamp.tolist())  # input order kept
        rows += message.timestamp.tolist()
    assert sorted(rows) == list(range(k))  # every event once
    assert routed.own.timestamp.tolist() == sorted(routed.own.timestamp.tolist())
    assert routed.forwarded_events == k - len(routed.own)
