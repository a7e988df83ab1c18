"""Why a visitor is in its segment: the explanation agrees with the model's assignment."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.explain import MAX_REASONS, why
from ampelios.core.journeys import features_from_shapes
from ampelios.core.model import update
from ampelios.core.population import Population

shapes = st.tuples(st.integers(1, 80), st.integers(0, 5), st.integers(0, 3), st.integers(1, 8)).filter(
    lambda s: s[3] <= s[0] + s[1] + s[2]
)


@given(st.dictionaries(shapes, st.integers(1, 500), min_size=2, max_size=60), st.integers(1, 6), shapes)
@settings(max_examples=60, deadline=None)
def test_the_explanation_names_the_assigned_segment_and_what_sets_it_apart(counts, k, visitor):
    model = update(None, Population(counts), k)
    features = features_from_shapes(np.array([visitor]))[0]
    answer = why(model, features)
    assert answer["segment"] == int(model.assign(features[None, :])[0])
    distances = [d["distance"] for d in answer["distances"]]
    assert distances == sorted(distances) and answer["distances"][0]["segment"] == answer["segment"]
    assert {d["segment"] for d in answer["distances"]} == set(np.flatnonzero(model.active).tolist())
    if len(distances) == 1:
        assert answer["nearest_other"] is None and answer["reasons"] == []
        return
    assert answer["nearest_other"]["segment"] == answer["distances"][1]["segment"]
    reasons = answer["reasons"]
    assert len(reasons) <= MAX_REASONS and all(r["share"] > 0 for r in reasons)
    assert [r["share"] for r in reasons] == sorted((r["share"] for r in reasons), reverse=True)
    assert sum(r["share"] for r in reasons) <= 1 + 1e-9
    for r in reasons:
        assert model.labels[answer["segment"]] in r["says"] and answer["nearest_other"]["label"] in r["says"]
