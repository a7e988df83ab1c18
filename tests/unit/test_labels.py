"""Segment names follow the documented rule, and no two segments share a name or advice."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.labels import KINDS, action, advice, kind_of, label_of, segment_labels, summary


@pytest.mark.parametrize(
    ("views", "carts", "buys", "sessions", "label"),
    [
        (16.6, 3.2, 1.46, 3.4, "repeat buyers"),
        (0.9, 1.2, 1.04, 1.3, "first-time buyers"),
        (3.0, 1.0, 0.5, 1.0, "first-time buyers"),
        (5.0, 0.3, 0.0, 1.0, "cart abandoners"),
        (5.0, 0.1, 0.1, 1.0, "cart abandoners"),
        (6.6, 0.08, 0.0, 2.4, "returning browsers"),
        (2.0, 0.0, 0.0, 1.5, "returning browsers"),
        (3.0, 0.0, 0.0, 1.0, "engaged browsers"),
        (2.9, 0.29, 0.09, 1.49, "one-visit browsers"),
        (0.99, 0.013, 0.0, 1.0, "one-view bouncers"),
    ],
)
def test_label_rule(views, carts, buys, sessions, label):
    assert label_of([views, carts, buys, sessions, views / sessions, 0.0]) == label


def test_segments_of_one_kind_are_told_apart_by_what_differs_most_and_empty_ones_by_id():
    centroids = [[1, 0, 0, 1, 1, 0], [1.2, 0, 0, 1, 1.2, 0], [0, 0, 0, 0, 0, 0], [1.1, 0, 0, 1, 1.1, 0]]
    assert segment_labels(centroids, [5, 9, 0, 1]) == [
        "one-view bouncers with the fewest views",
        "one-view bouncers with the most views",
        "empty (id 2)",
        "one-view bouncers with the 2nd-most views",
    ]


features = st.floats(min_value=0, max_value=1e6, allow_nan=False)
models = st.lists(st.tuples(*[features] * 6), min_size=1, max_size=14).flatmap(
    lambda cs: st.tuples(st.just(cs), st.lists(st.integers(0, 100), min_size=len(cs), max_size=len(cs)))
)


@given(models)
def test_no_two_segments_share_a_name_or_advice_and_no_name_is_numbered(model):
    centroids, sizes = model
    labels = segment_labels(centroids, sizes)
    assert len(set(labels)) == len(labels)
    assert len({advice(label) for label in labels}) == len(labels)
    for label, size in zip(labels, sizes):
        assert not re.search(r"\s\d+$", label)
        assert (kind_of(label) in KINDS) == (size > 0) and action(label)


@given(st.tuples(*[features] * 6))
def test_every_summary_says_its_numbers_with_the_right_plural(centroid):
    words = summary(centroid)
    said = re.match(r"On average (\S+) purchases?,", words)
    assert said and float(said[1]) == pytest.approx(centroid[2], rel=0.05, abs=0.005)  # two significant digits
    counts = re.findall(r"([\d.]+) (purchase|add-to-cart|product view|visit|view)(s?)\b", words)
    assert len(counts) == 5 and all((number == "1") == (plural == "") for number, _, plural in counts)


def test_the_advice_tells_whom_to_keep_target_and_ignore():
    assert advice("cart abandoners").startswith("Target") and action("cart abandoners") == "target"
    assert action("repeat buyers") == "keep" and action("first-time buyers with more visits") == "keep"
    assert advice("one-view bouncers with fewer views").startswith("Ignore")
    assert advice("one-view bouncers with fewer views").endswith("Of the one-view bouncers, these have fewer views.")
