"""Segment names follow the documented rule."""

from __future__ import annotations

import pytest

from ampelios.core.labels import label_of, segment_labels


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
