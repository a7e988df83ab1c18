"""Choosing k: the figures of every k, and the rule of AMPELIOS_K=auto."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.k_choice import MIN_SHARE, choose_k, evaluate
from ampelios.core.labels import kind_of
from ampelios.core.model import update
from ampelios.core.population import Population

shapes = st.tuples(st.integers(1, 80), st.integers(0, 5), st.integers(0, 3), st.integers(1, 8))


@given(st.dictionaries(shapes, st.integers(1, 2000), min_size=2, max_size=80))
@settings(max_examples=30, deadline=None)
def test_each_k_is_what_the_model_gives_and_the_rule_takes_the_largest_actionable(counts):
    population = Population(counts)
    qualities = evaluate(population, range(2, 7))
    assert [q.k for q in qualities] == list(range(2, min(6, len(counts)) + 1))
    for q in qualities:
        model = update(None, population, q.k)
        assert q.labels == model.labels and np.isclose(q.inertia * population.total, model.inertia)
        assert q.kinds == len({kind_of(label) for label, size in zip(model.labels, model.sizes) if size})
        assert q.actionable == (q.kinds == q.k and q.smallest_share >= MIN_SHARE) and q.davies_bouldin >= 0
    chosen = choose_k(qualities)
    assert chosen == max([q.k for q in qualities if q.actionable], default=2)


def test_more_segments_never_fit_worse():
    population = Population(
        {(1, 0, 0, 1): 900, (4, 0, 0, 2): 300, (30, 3, 2, 4): 40, (3, 2, 1, 1): 30, (9, 0, 0, 1): 80}
    )
    inertias = [q.inertia for q in evaluate(population, range(2, 6))]
    assert inertias == sorted(inertias, reverse=True)
