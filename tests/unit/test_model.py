"""The segment model: seeding, refinement, exact sizes, stable ids, quality vs batch k-means."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.journeys import features_from_shapes
from ampelios.core.labels import KINDS, kind_of
from ampelios.core.model import (
    MIN_SCALE,
    SegmentModel,
    kmeans_plus_plus,
    lloyd,
    points_of,
    scale_of,
    update,
)
from ampelios.core.population import Population


def population_from(rng: np.random.Generator, n_shapes: int = 300) -> Population:
    views = rng.integers(1, 60, n_shapes)
    sessions = np.minimum(views, rng.integers(1, 6, n_shapes))
    carts = rng.binomial(3, 0.2, n_shapes)
    buys = np.minimum(carts, rng.binomial(2, 0.3, n_shapes))
    counts = rng.zipf(1.8, n_shapes).clip(1, 5000)
    shapes = zip(views.tolist(), carts.tolist(), buys.tolist(), sessions.tolist())
    population = Population()
    for shape, count in zip(shapes, counts.tolist()):
        population.counts[shape] = population.counts.get(shape, 0) + count
    return population


def test_kmeans_plus_plus_picks_distinct_centers_and_no_more_than_exist():
    rng = np.random.default_rng(0)
    points = np.eye(3)
    assert len(kmeans_plus_plus(points, np.array([5.0, 1.0, 1.0]), 5, rng)) == 3
    centers = kmeans_plus_plus(np.eye(4), np.ones(4), 2, rng)
    assert len(centers) == 2 and len(np.unique(centers, axis=0)) == 2


def test_seeding_finds_well_separated_groups():
    population = Population({(1, 0, 0, 1): 1000, (30, 0, 0, 8): 50, (12, 2, 2, 2): 20, (5, 3, 0, 2): 70})
    model = update(None, population, k=4)
    assert sorted(model.sizes.tolist()) == [20, 50, 70, 1000]
    shapes, _ = population.arrays()
    assert len(set(model.assign(features_from_shapes(shapes)).tolist())) == 4


def test_fewer_distinct_journeys_than_k_leaves_segments_empty_then_fills_them():
    model = update(None, Population({(1, 0, 0, 1): 10}), k=3)
    assert model.active.tolist() == [True, False, False]
    assert model.sizes.tolist() == [10, 0, 0] and model.labels[1:] == ["empty (id 1)", "empty (id 2)"]
    bigger = Population({(1, 0, 0, 1): 10, (20, 1, 1, 3): 4, (8, 0, 0, 2): 6})
    model = update(model, bigger, k=3)
    assert model.active.all() and sorted(model.sizes.tolist()) == [4, 6, 10]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 7))
def test_sizes_are_the_members_each_centroid_attracts_and_add_up(seed, k):
    population = population_from(np.random.default_rng(seed))
    model = update(None, population, k)
    model = update(model, population, k)
    shapes, weights = population.arrays()
    segments = model.assign(features_from_shapes(shapes))
    assert model.sizes.tolist() == np.bincount(segments, weights=weights, minlength=k).astype(int).tolist()
    assert model.sizes.sum() == population.total
    raw = features_from_shapes(shapes)
    for s in np.flatnonzero(model.sizes):
        members = segments == s
        np.testing.assert_allclose(model.units[s], np.average(raw[members], axis=0, weights=weights[members]))


def test_ids_stay_with_their_groups_as_the_population_grows():
    rng = np.random.default_rng(5)
    population = population_from(rng, 200)
    model = update(None, population, 5)
    for _ in range(12):  # growth triggers refits; ids must not swap meaning
        extra = population_from(rng, 40)
        for shape, count in extra.counts.items():
            population.counts[shape] = population.counts.get(shape, 0) + count
        population._arrays = None
        before = model
        model = update(model, population, 5)
        z_before, z_after = before.centroids / model.scale, model.centroids / model.scale
        nearest = ((z_before[:, None, :] - z_after[None, :, :]) ** 2).sum(2).argmin(1)
        assert nearest.tolist() == list(range(5))  # each id's new centroid is its old one's nearest


def test_k_can_change_and_the_segments_are_then_numbered_as_if_seeded_with_it():
    population = population_from(np.random.default_rng(8))
    five = update(None, population, 5)
    seven = update(five, population, 7)
    assert seven.k == 7 and seven.sizes.sum() == population.total
    fresh = update(None, population, 7)
    np.testing.assert_allclose(seven.centroids, fresh.centroids)
    assert seven.labels == fresh.labels


def test_lloyd_replaces_an_empty_segment():
    z = np.array([[0.0, 0], [0.1, 0], [10, 10], [10.1, 10]])
    centers = np.array([[0.05, 0], [100.0, 100]])  # the second attracts nobody
    _, _, assignment, _ = lloyd(z, np.ones(4), centers, np.array([True, True]), 10)
    assert sorted(np.bincount(assignment).tolist()) == [2, 2]


def test_quality_is_that_of_batch_kmeans_on_the_same_scaled_features():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    population = population_from(np.random.default_rng(2), 600)
    model = update(None, population, 5)
    for _ in range(3):
        model = update(model, population, 5)
    _, logged, weights = points_of(population)
    z = logged / scale_of(logged, weights)
    batch = sklearn_cluster.KMeans(5, init="k-means++", n_init=10, random_state=0).fit(z, sample_weight=weights)
    assert model.inertia <= 1.03 * batch.inertia_


def test_model_bytes_round_trip():
    model = update(None, population_from(np.random.default_rng(3)), 4)
    back = SegmentModel.from_bytes(model.to_bytes())
    assert (back.version, back.labels) == (1, model.labels)
    for name in ("centroids", "active", "scale", "sizes", "units"):
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))


def test_scale_is_the_weighted_standard_deviation_of_log1p_features_with_a_floor():
    population = Population({(1, 0, 0, 1): 3, (9, 0, 0, 1): 1})
    _, logged, weights = points_of(population)
    scale = scale_of(logged, weights)
    expanded = np.repeat(logged, weights.astype(int), axis=0)
    np.testing.assert_allclose(scale[0], expanded[:, 0].std())
    assert scale[1] == scale[2] == scale[3] == MIN_SCALE  # constant features


def test_standardization_lets_a_rare_purchase_outweigh_many_views():
    # Without scaling, 1 purchase (log1p 0.69) is smaller than 3 vs 1 views (log1p 1.39 vs
    # 0.69); scaled by the population's spread, the buyer stands apart from browsers.
    population = Population({(1, 0, 0, 1): 500, (3, 0, 0, 1): 500, (2, 1, 1, 1): 5})
    model = update(None, population, k=3)
    sizes = sorted(model.sizes.tolist())
    assert sizes == [5, 500, 500]
    assert "first-time buyers" in model.labels


def test_settling_makes_the_segments_a_function_of_the_population_alone():
    rng = np.random.default_rng(11)
    population = population_from(rng, 400)
    paths = []
    for order in (rng.permutation(10), rng.permutation(10)):  # two ways of growing to it
        model, partial = None, Population()
        items = sorted(population.counts.items())
        for step in order.tolist():
            for shape, count in items[step::10]:
                partial.counts[shape] = count
            partial._arrays = None
            model = update(model, partial, 5)
        paths.append(update(model, population, 5, settle=True))
    first, second = paths  # the same segments under the same ids and labels
    assert first.sizes.tolist() == second.sizes.tolist() and first.labels == second.labels
    np.testing.assert_allclose(first.units, second.units, rtol=1e-9)


@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.floats(0.05, 0.9))
@settings(max_examples=25, deadline=None)
def test_ids_are_the_same_whatever_part_of_the_population_seeded_the_model(seed, k, part):
    rng = np.random.default_rng(seed)
    population = population_from(rng, 150)
    items = list(population.counts.items())
    seeded = [Population(dict(items[i] for i in np.flatnonzero(rng.random(len(items)) < part))) for _ in range(2)]
    settled = [update(update(None, s, k) if s.total else None, population, k, settle=True) for s in seeded]
    assert settled[0].sizes.tolist() == settled[1].sizes.tolist() and settled[0].labels == settled[1].labels
    np.testing.assert_allclose(settled[0].centroids, settled[1].centroids, rtol=1e-9)
    kinds = [KINDS.index(kind_of(label)) for label in settled[0].labels if kind_of(label) in KINDS]
    assert kinds == sorted(kinds)  # repeat buyers first, bouncers last


def test_settling_a_settled_model_changes_nothing_not_even_the_version():
    population = population_from(np.random.default_rng(5), 300)
    settled = update(update(None, population, 4), population, 4, settle=True)
    assert update(settled, population, 4, settle=True) is settled
    grown = Population(dict(population.counts))
    grown.counts[(40, 3, 2, 5)] = 50
    assert update(settled, grown, 4, settle=True).version == settled.version + 1


def test_a_model_keeps_the_lineage_it_was_seeded_with():
    population = population_from(np.random.default_rng(4))
    seeded = update(None, population, 2, lineage="abc")
    refined = update(seeded, population, 2)
    settled = update(refined, population, 3, settle=True)  # k changed: ids follow the groups, the lineage stays
    assert seeded.lineage == refined.lineage == settled.lineage == "abc"
    assert SegmentModel.from_bytes(settled.to_bytes()).lineage == "abc"
    assert update(None, population, 2).lineage == ""  # unnamed
