"""Segment names follow the documented rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.labels import action, advice, label_of, segment_labels, summary


@pytest.mark.parametrize(
    ("views", "carts", "buys", "sessions", "label"),
    [
        (14.0, 1.2, 1.0, 3.0, "high-value buyers"),
        (3.0, 1.0, 0.5, 1.0, "high-value buyers"),
        (5.0, 0.3, 0.0, 1.0, "likely buyers"),
        (5.0, 0.1, 0.1, 1.0, "likely buyers"),
        (3.0, 0.0, 0.0, 1.0, "engaged browsers"),
        (2.0, 0.0, 0.0, 1.5, "engaged browsers"),
        (1.0, 0.02, 0.0, 1.0, "one-visit browsers"),
        (2.9, 0.29, 0.09, 1.49, "one-visit browsers"),
    ],
)
def test_label_rule(views, carts, buys, sessions, label):
    assert label_of([views, carts, buys, sessions, views / sessions, 0.0]) == label


def test_repeated_labels_are_numbered_in_id_order_and_empty_segments_named():
    centroids = [[1, 0, 0, 1, 1, 0], [1.2, 0, 0, 1, 1.2, 0], [0, 0, 0, 0, 0, 0], [1.1, 0, 0, 1, 1.1, 0]]
    assert segment_labels(centroids, [5, 9, 0, 1]) == [
        "one-visit browsers",
        "one-visit browsers 2",
        "empty",
        "one-visit browsers 3",
    ]


features = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(st.lists(st.tuples(*[features] * 6), min_size=1, max_size=8), st.data())
def test_every_segment_gets_advice_and_a_summary_with_its_numbers(centroids, data):
    sizes = data.draw(st.lists(st.integers(0, 100), min_size=len(centroids), max_size=len(centroids)))
    for centroid, label in zip(centroids, segment_labels(centroids, sizes)):
        assert advice(label) and action(label)  # numbered and empty labels too
        words = summary(centroid)
        said = float(words.removeprefix("On average ").split(" purchases")[0])
        assert said == pytest.approx(centroid[2], rel=0.05, abs=0.005)  # two significant digits


def test_the_advice_tells_whom_to_target_and_whom_to_ignore():
    assert advice("likely buyers").startswith("Target") and action("likely buyers") == "target"
    assert advice("one-visit browsers 3").startswith("Ignore") and action("one-visit browsers 3") == "ignore"
