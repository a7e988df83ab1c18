"""The batch changelog record format."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ampelios.engine.batch_table import pack_pairs, unpack_pairs


@given(st.lists(st.tuples(st.binary(max_size=40), st.none() | st.binary(max_size=300)), max_size=50))
def test_pairs_round_trip_in_order(pairs):
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    assert unpack_pairs(pack_pairs(keys, values)) == pairs
