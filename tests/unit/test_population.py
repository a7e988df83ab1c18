"""The population: visitors per journey shape, changed by commuting deltas."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.population import Population, PopulationDelta

shapes = st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 1), st.integers(1, 3))


@given(st.lists(st.lists(shapes, min_size=1, max_size=5), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_deltas_keep_every_visitor_once_with_its_latest_shape(histories, rnd):
    """Each visitor goes through a list of shapes. Its deltas arrive in its own order (a
    visitor lives in one partition) but interleaved at random with other visitors' (as
    partitions report); the population ends with one count per visitor at its last shape."""
    queues = [list(enumerate(history)) for history in histories]
    population = Population()
    while any(queues):
        visitor = rnd.choice([v for v, q in enumerate(queues) if q])
        i, shape = queues[visitor].pop(0)
        left = np.array([histories[visitor][i - 1]] if i else np.empty((0, 4)))
        population.apply(PopulationDelta.of(left, np.array([shape])))
    expected: dict = {}
    for history in histories:
        expected[history[-1]] = expected.get(history[-1], 0) + 1
    assert population.counts == expected and population.total == len(histories)


def test_a_delta_that_would_go_negative_changes_nothing():
    population = Population({(1, 0, 0, 1): 1})
    delta = PopulationDelta(np.array([[2, 0, 0, 1], [1, 0, 0, 1]]), np.array([1, -2]))
    with pytest.raises(ValueError, match="would have -1"):
        population.apply(delta)
    assert population.counts == {(1, 0, 0, 1): 1}


def test_delta_json_round_trip_and_arrays_follow_changes():
    delta = PopulationDelta.of(np.array([[1, 0, 0, 1]]), np.array([[2, 0, 0, 1], [1, 0, 0, 1]]))
    assert delta.shapes.tolist() == [[2, 0, 0, 1]] and delta.changes.tolist() == [1]  # 1,0,0,1: -1 +1
    again = PopulationDelta.from_json(delta.to_json())
    population = Population({(1, 0, 0, 1): 3})
    assert population.arrays()[1].tolist() == [3]
    population.apply(again)
    shapes, weights = population.arrays()
    assert shapes.tolist() == [[1, 0, 0, 1], [2, 0, 0, 1]] and weights.tolist() == [3, 1]


@given(st.lists(shapes, max_size=40), st.lists(shapes, max_size=40))
def test_a_delta_is_the_net_change_of_each_shape(left, joined):
    left_rows, joined_rows = (np.array(rows, dtype=np.int64).reshape(-1, 4) for rows in (left, joined))
    delta = PopulationDelta.of(left_rows, joined_rows)
    expected = Counter(map(tuple, joined))
    expected.subtract(Counter(map(tuple, left)))
    assert {tuple(s): c for s, c in zip(delta.shapes.tolist(), delta.changes.tolist())} == {
        s: c for s, c in expected.items() if c
    }
    assert delta.shapes.tolist() == sorted(delta.shapes.tolist())
