"""The replay's partitions are the ones Kafka's default partitioner gives the key."""

from __future__ import annotations

import numpy as np
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.partitioning import partitions_for, visitor_key


@given(
    st.lists(st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1)), min_size=1, max_size=200),
    st.integers(1, 64),
)
def test_vectorized_partitions_equal_kafkas_default_partitioner(pairs, n):
    sources, visitors = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    expected = [DefaultPartitioner()(visitor_key(s, v), list(range(n)), list(range(n))) for s, v in pairs]
    assert partitions_for(sources, visitors, n).tolist() == expected
