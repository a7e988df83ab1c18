"""The segment model: k-means over a source's whole population, kept up to date online.

**Space.** Distances are measured on ``log1p`` of the six features, each divided by its
standard deviation over the current population (online standardization: the scale is
learned from the population as it grows and stored with the model). Centroids are kept
in ``log1p`` units, so they do not move when the scale is re-estimated; ``/view`` reports
each segment's mean member in original units.

**Data.** The model is fitted on the :class:`~ampelios.core.population.Population`: every
visitor counted once, with its latest features, as a weight on its journey shape. That
is the exact objective of batch k-means over all visitors, held in a few thousand points.

**Updates** (:func:`update`, once per batch of journey changes):

- the first update seeds with weighted greedy k-means++ (best of several starts) and
  numbers the segments in a canonical order, most engaged first (:func:`canonical_order`),
  so that the same events give the same ids whatever the order they arrived in;
- every later one refines the current centroids with a few weighted Lloyd steps -- an
  incremental update, warm-started, never a retraining -- and re-places a segment that
  has no members at the point that contributes most to the inertia;
- when the population has grown by a quarter, or after 100 updates, since the last full
  fit, a fresh fit is tried and adopted only if its inertia is lower, its segments matched
  to the current ids by minimum-cost assignment, so a segment keeps its id while it is
  the same group;
- a *settling* update (the owner settles at every wall-clock snapshot) adopts a full fit
  of the population whatever the path, so replays of the same events end with the same
  segments however their batches interleaved or a crash replayed some of them.

Segment sizes are the weights each centroid attracts: they always add up to the number of
distinct visitors, and a visitor's segment is the nearest centroid of its features.

>>> from ampelios.core.population import Population
>>> population = Population({(1, 0, 0, 1): 900, (2, 0, 0, 1): 300, (40, 3, 1, 4): 5})
>>> model = update(None, population, k=2)
>>> model.sizes.tolist(), model.labels
([5, 1200], ['first-time buyers', 'one-view bouncers'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ampelios.core.journeys import N_FEATURES, features_from_shapes
from ampelios.core.labels import KINDS, label_of, segment_labels
from ampelios.core.population import Population

N_INIT = 8  # starts of each full fit
SETTLE_N_INIT = 16  # starts of a settling fit
REFINE_STEPS = 5  # Lloyd steps per update
FIT_STEPS = 100  # Lloyd steps of a full fit, at most
REFIT_GROWTH = 1.25  # try a full fit when the population grew by this factor ...
REFIT_EVERY = 100  # ... or after this many updates
MIN_SCALE = 1e-3  # floor of a feature's standard deviation (constant features)


def points_of(population: Population) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw features (m, 6), their ``log1p`` (m, 6) and visitor counts (m,) of a population."""
    shapes, weights = population.arrays()
    raw = features_from_shapes(shapes)
    return raw, np.log1p(raw), weights.astype(np.float64)


def scale_of(logged: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted standard deviation of each ``log1p`` feature, floored at MIN_SCALE."""
    mean = np.average(logged, axis=0, weights=weights)
    var = np.average((logged - mean) ** 2, axis=0, weights=weights)
    return np.maximum(np.sqrt(var), MIN_SCALE)


def _sq_distances(z: np.ndarray, centers: np.ndarray, active: np.ndarray) -> np.ndarray:
    d2 = (z * z).sum(1)[:, None] - 2 * z @ centers.T + (centers * centers).sum(1)[None, :]
    d2 = np.maximum(d2, 0.0)
    d2[:, ~active] = np.inf
    return d2


def kmeans_plus_plus(z: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` distinct centers by weighted greedy k-means++ (as scikit-learn seeds)."""
    trials = 2 + int(np.log(k))
    first = rng.choice(len(z), p=weights / weights.sum())
    centers = [z[first]]
    closest = ((z - z[first]) ** 2).sum(1)
    while len(centers) < k:
        potential = weights * closest
        if potential.sum() <= 0:
            break  # every point is a center already
        candidates = rng.choice(len(z), size=trials, p=potential / potential.sum())
        d2 = ((z[None, :, :] - z[candidates][:, None, :]) ** 2).sum(2)
        best = int(np.argmin((weights * np.minimum(closest, d2)).sum(1)))
        centers.append(z[candidates[best]])
        closest = np.minimum(closest, d2[best])
    return np.array(centers)


def lloyd(
    z: np.ndarray, weights: np.ndarray, centers: np.ndarray, active: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Weighted Lloyd steps until assignments settle (or ``steps``); a segment without
    members is re-placed at the point contributing most to the inertia. Returns centers,
    active mask, assignment and inertia (all in the scaled space)."""
    centers, active = centers.copy(), active.copy()
    k = len(centers)
    assignment = np.full(len(z), -1)
    for _ in range(steps):
        d2 = _sq_distances(z, centers, active)
        new = np.argmin(d2, axis=1)
        mass = np.bincount(new, weights=weights, minlength=k)
        empty = np.flatnonzero(mass == 0)
        if len(empty):
            contribution = weights * d2[np.arange(len(z)), new]
            for segment in empty:
                point = int(np.argmax(contribution))
                if contribution[point] <= 0:
                    break  # fewer distinct points than segments
                centers[segment], active[segment] = z[point], True
                contribution[point] = 0.0
            d2 = _sq_distances(z, centers, active)
            new = np.argmin(d2, axis=1)
            mass = np.bincount(new, weights=weights, minlength=k)
        if np.array_equal(new, assignment):
            break
        assignment = new
        sums = np.zeros_like(centers)
        np.add.at(sums, assignment, z * weights[:, None])
        filled = mass > 0
        centers[filled] = sums[filled] / mass[filled, None]
    d2 = _sq_distances(z, centers, active)
    assignment = np.argmin(d2, axis=1)
    inertia = float((weights * d2[np.arange(len(z)), assignment]).sum())
    return centers, active, assignment, inertia


@dataclass
class SegmentModel:
    """k segments of one source: centroids (``log1p`` units), scale, and what they hold."""

    centroids: np.ndarray  # (k, 6) log1p units
    active: np.ndarray  # (k,) the segment has a centroid
    scale: np.ndarray  # (6,) standard deviation of each log1p feature
    sizes: np.ndarray  # (k,) visitors
    units: np.ndarray  # (k, 6) mean member in original units
    labels: list[str] = field(default_factory=list)
    inertia: float = 0.0
    version: int = 0
    fitted_total: int = 0  # visitors at the last full fit
    fitted_version: int = 0  # version of the last full fit
    lineage: str = ""  # names the model's life since it was seeded: its segment ids mean one thing in it

    @property
    def k(self) -> int:
        return len(self.centroids)

    def sq_distances(self, features: np.ndarray) -> np.ndarray:
        """Squared distance (n, k) of each feature vector (n, 6) to each centroid in the
        model's space; ``inf`` to a segment without a centroid."""
        z = np.log1p(features) / self.scale
        return _sq_distances(z, self.centroids / self.scale, self.active)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """The segment of each feature vector (n, 6): the nearest active centroid."""
        return np.argmin(self.sq_distances(features), axis=1)

    def segments(self) -> list[dict[str, Any]]:
        """Every segment: id, label, size, share of the visitors, centroid (mean member)."""
        total = max(1, int(self.sizes.sum()))
        return [
            {
                "id": s,
                "label": self.labels[s],
                "size": int(self.sizes[s]),
                "share": int(self.sizes[s]) / total,
                "centroid": self.units[s].tolist(),
            }
            for s in range(self.k)
        ]

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "centroids": self.centroids,
                "active": self.active,
                "scale": self.scale,
                "sizes": self.sizes,
                "units": self.units,
                "labels": self.labels,
                "inertia": self.inertia,
                "version": self.version,
                "fitted_total": self.fitted_total,
                "fitted_version": self.fitted_version,
                "lineage": self.lineage,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> SegmentModel:
        obj = orjson.loads(value)
        return cls(
            centroids=np.asarray(obj["centroids"], dtype=np.float64).reshape(-1, N_FEATURES),
            active=np.asarray(obj["active"], dtype=bool),
            scale=np.asarray(obj["scale"], dtype=np.float64),
            sizes=np.asarray(obj["sizes"], dtype=np.int64),
            units=np.asarray(obj["units"], dtype=np.float64).reshape(-1, N_FEATURES),
            labels=list(obj["labels"]),
            inertia=float(obj["inertia"]),
            version=int(obj["version"]),
            fitted_total=int(obj["fitted_total"]),
            fitted_version=int(obj["fitted_version"]),
            lineage=str(obj.get("lineage", "")),
        )


def _fit(
    z: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator, n_init: int = N_INIT
) -> tuple[np.ndarray, np.ndarray, float]:
    """Best of ``n_init`` weighted k-means runs (scaled space): centers, active, inertia."""
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        seeds = kmeans_plus_plus(z, weights, k, rng)
        centers = np.zeros((k, z.shape[1]))
        centers[: len(seeds)] = seeds
        active = np.arange(k) < len(seeds)
        centers, active, _, inertia = lloyd(z, weights, centers, active, FIT_STEPS)
        if best is None or inertia < best[2]:
            best = (centers, active, inertia)
    assert best is not None
    return best


def canonical_order(centers: np.ndarray, active: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``order`` such that ``centers[order]`` numbers segments canonically: by the kind
    their mean member (``units``, original units) is named (in the order of
    :data:`~ampelios.core.labels.KINDS`, repeat buyers first), then by engagement, the sum
    of the scaled views, add-to-carts, purchases and visits of the centroid, descending;
    segments without a centroid last. A function of the segments alone, not of the order
    they were found in."""
    kind = np.array([KINDS.index(label_of(u)) for u in units.tolist()])
    engagement = centers[:, :4].sum(1)
    return np.lexsort((-engagement, kind, ~active))


def members(
    z: np.ndarray, raw: np.ndarray, weights: np.ndarray, centers: np.ndarray, active: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Visitors each centroid attracts (k,) and their mean member in original units (k, 6)
    (the centroid itself for a segment without members)."""
    k = len(centers)
    assignment = np.argmin(_sq_distances(z, centers, active), axis=1)
    sizes = np.bincount(assignment, weights=weights, minlength=k).astype(np.int64)
    units = np.zeros((k, N_FEATURES))
    np.add.at(units, assignment, raw * weights[:, None])
    units[sizes > 0] /= sizes[sizes > 0, None]
    units[sizes == 0] = np.expm1(centers[sizes == 0] * scale)
    return sizes, units


def update(
    model: SegmentModel | None, population: Population, k: int, settle: bool = False, lineage: str = ""
) -> SegmentModel:
    """The model after the population changed: seeded (named ``lineage``), refined or
    refitted (keeping its lineage; see the module docstring). With ``settle``, a full fit
    of SETTLE_N_INIT starts replaces the centroids whatever the path that led here, so
    that the segments (up to their ids) are a function of the population alone: two
    replays of the same events end with the same segments however their batches
    interleaved; a settle that changes nothing returns ``model`` itself (versions count
    changes). Deterministic for the same model, population and lineage."""
    raw, logged, weights = points_of(population)
    if len(weights) == 0:
        raise ValueError("the population is empty")
    total = int(weights.sum())
    rng = np.random.default_rng([total, len(weights), k])  # a function of the population
    scale = scale_of(logged, weights)
    z = logged / scale
    version = model.version + 1 if model is not None else 1
    renumber = model is None or model.k != k or settle  # seeding, k changed, settling
    if renumber:
        centers, active, inertia = _fit(z, weights, k, rng, SETTLE_N_INIT if settle else N_INIT)
        fitted_total, fitted_version = total, version
    else:
        fitted_total, fitted_version = model.fitted_total, model.fitted_version
        centers, active, _, inertia = lloyd(z, weights, model.centroids / scale, model.active, REFINE_STEPS)
        if total >= REFIT_GROWTH * fitted_total or version - fitted_version >= REFIT_EVERY:
            fitted_total, fitted_version = total, version
            fresh, fresh_active, fresh_inertia = _fit(z, weights, k, rng)
            if fresh_inertia < inertia * (1 - 1e-6):
                centers, active, inertia, renumber = fresh, fresh_active, fresh_inertia, True
    sizes, units = members(z, raw, weights, centers, active, scale)
    if renumber:
        order = canonical_order(centers, active, units)
        centers, active, sizes, units = centers[order], active[order], sizes[order], units[order]
    centroids = centers * scale
    if (
        settle
        and model is not None
        and np.array_equal(sizes, model.sizes)
        and np.array_equal(active, model.active)
        and np.allclose(centroids, model.centroids, rtol=1e-9, atol=1e-12)
    ):
        return model
    return SegmentModel(
        centroids=centroids,
        active=active,
        scale=scale,
        sizes=sizes,
        units=units,
        labels=segment_labels(units.tolist(), sizes.tolist()),
        inertia=inertia,
        version=version,
        fitted_total=fitted_total,
        fitted_version=fitted_version,
        lineage=model.lineage if model is not None else lineage,
    )
