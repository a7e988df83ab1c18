"""The online segment model: seeding, assignment, exact sufficient statistics."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.model import SegmentDelta, SegmentModel, kmeans_plus_plus, scale


def features(rng: np.random.Generator, n: int) -> np.ndarray:
    views = rng.integers(0, 50, n).astype(float)
    carts = rng.integers(0, 3, n).astype(float)
    buys = rng.integers(0, 2, n).astype(float)
    sessions = rng.integers(1, 5, n).astype(float)
    return np.column_stack(
        [
            views,
            carts,
            buys,
            sessions,
            views / sessions,
            np.where(views > 0, buys / np.maximum(views, 1), buys / sessions),
        ]
    )


def test_kmeans_plus_plus_picks_distinct_centers_and_no_more_than_exist():
    rng = np.random.default_rng(0)
    points = np.repeat(np.eye(3), 10, axis=0)
    centers = kmeans_plus_plus(points, 5, rng)
    assert len(centers) == 3 and len(np.unique(centers, axis=0)) == 3
    assert len(kmeans_plus_plus(np.eye(4), 2, rng)) == 2


def test_seeding_spreads_over_well_separated_groups():
    rng = np.random.default_rng(1)
    groups = [np.full((100, 6), v) + rng.normal(0, 0.01, (100, 6)) for v in (0.0, 5.0, 50.0, 500.0)]
    model = SegmentModel.seeded(np.abs(np.vstack(groups)), k=4)
    assigned = model.assign(np.vstack([g[:1] for g in groups]).clip(0))
    assert sorted(assigned.tolist()) == [0, 1, 2, 3]


def test_seeding_with_fewer_distinct_journeys_than_k_leaves_segments_inactive():
    model = SegmentModel.seeded(np.ones((10, 6)), k=5)
    assert model.active.tolist() == [True, False, False, False, False]
    assert model.assign(np.zeros((3, 6))).tolist() == [0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.lists(st.integers(1, 40), min_size=1, max_size=15))
def test_sizes_and_sums_are_exactly_those_of_the_current_members(seed, k, batch_sizes):
    rng = np.random.default_rng(seed)
    n_visitors = 60
    current = {}  # visitor -> (segment, features)
    model = SegmentModel.seeded(features(rng, 30), k)
    for size in batch_sizes:
        visitors = np.unique(rng.integers(0, n_visitors, size))
        new = features(rng, len(visitors))
        old_seg = np.array([current.get(v, (-1, None))[0] for v in visitors.tolist()])
        old_f = np.array([current[v][1] if v in current else np.zeros(6) for v in visitors.tolist()])
        seg = model.assign(new)
        model.apply(SegmentDelta.between(model, old_seg, old_f, seg, new))
        for v, s, f in zip(visitors.tolist(), seg.tolist(), new):
            current[v] = (s, f)
    members = np.array([s for s, _ in current.values()])
    assert model.sizes().tolist() == np.bincount(members, minlength=k).tolist()
    assert model.sizes().sum() == len(current)
    for s in range(k):
        mine = [f for seg, f in current.values() if seg == s]
        if mine:
            np.testing.assert_allclose(model.sums[s], np.sum(mine, axis=0), atol=1e-9)
            np.testing.assert_allclose(model.centroids[s], scale(np.array(mine)).mean(axis=0), atol=1e-9)
            np.testing.assert_allclose(model.centroids_in_units()[s], np.mean(mine, axis=0), atol=1e-9)


def test_an_empty_segment_is_replaced_at_the_farthest_point():
    model = SegmentModel.seeded(np.ones((5, 6)), k=2)  # one active segment
    far = np.array([[100.0, 5, 2, 3, 33, 0.02]])
    near = np.ones((1, 6))
    batch = np.vstack([near, far])
    seg = model.assign(batch)
    model.apply(SegmentDelta.between(model, np.array([-1, -1]), np.zeros_like(batch), seg, batch))
    assert model.active.tolist() == [True, True]
    np.testing.assert_allclose(model.centroids[1], scale(far[0]))
    assert model.assign(far).tolist() == [1]


def test_model_bytes_round_trip():
    rng = np.random.default_rng(3)
    model = SegmentModel.seeded(features(rng, 50), 3)
    f = features(rng, 20)
    model.apply(SegmentDelta.between(model, np.full(20, -1), np.zeros_like(f), model.assign(f), f))
    back = SegmentModel.from_bytes(model.to_bytes())
    assert back.version == model.version == 1
    for name in ("centroids", "active", "counts", "sums", "scaled_sums"):
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
    delta = SegmentDelta.between(model, np.full(20, -1), np.zeros_like(f), model.assign(f), f)
    again = SegmentDelta.from_json(delta.to_json())
    np.testing.assert_array_equal(again.sums, delta.sums)
