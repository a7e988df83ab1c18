"""The segment model: online k-means over journeys, each visitor counted once.

Each segment keeps sufficient statistics of its current members: how many visitors,
the sum of their six features in original units, and the sum in the scaled space the
distances are measured in (``log1p`` of every feature, so that a visitor with 2,000
views is not a segment of one). A centroid is the mean of its members.

When a visitor's journey changes, its old feature vector leaves the segment it was in
and its new one joins the nearest centroid: the model is updated incrementally, never
retrained, and segment sizes always add up to the number of distinct visitors. Updates
arrive as :class:`SegmentDelta` (per-segment sums of one batch, a few hundred bytes
whatever the batch size), and applying deltas commutes, so the order in which
partitions report does not matter.

Seeding is k-means++ (greedy, as in scikit-learn) on the first batch. A segment with
no members -- never filled at seeding because the first batch had fewer than k distinct
journeys, or emptied later -- is re-placed at the point of a later batch that lies
farthest from its own centroid, so no centroid stays dead.

>>> import numpy as np
>>> first = np.array([[1, 0, 0, 1, 1, 0], [40, 3, 1, 4, 10, 0.025]], dtype=float)
>>> model = SegmentModel.seeded(first, k=2)
>>> segments = model.assign(first)
>>> new = np.array([-1, -1])
>>> model.apply(SegmentDelta.between(model, new, np.zeros_like(first), segments, first))
>>> model.sizes().tolist()
[1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from ampelios.core.journeys import N_FEATURES

_SEEDING_SAMPLE = 10_000


def scale(features: np.ndarray) -> np.ndarray:
    """Features in the space distances are measured in (log1p of each; all are >= 0)."""
    return np.log1p(features)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` distinct centers chosen by greedy k-means++ (fewer if fewer distinct points)."""
    if len(points) > _SEEDING_SAMPLE:
        points = points[rng.choice(len(points), _SEEDING_SAMPLE, replace=False)]
    trials = 2 + int(np.log(k))
    centers = [points[rng.integers(len(points))]]
    closest = ((points - centers[0]) ** 2).sum(axis=1)
    while len(centers) < k and closest.sum() > 0:
        candidates = rng.choice(len(points), size=trials, p=closest / closest.sum())
        d2 = ((points[None, :, :] - points[candidates][:, None, :]) ** 2).sum(axis=2)
        potentials = np.minimum(closest[None, :], d2).sum(axis=1)
        best = int(np.argmin(potentials))
        centers.append(points[candidates[best]])
        closest = np.minimum(closest, d2[best])
    return np.array(centers)


@dataclass
class SegmentDelta:
    """What one batch changes in the model: per-segment member count and feature sums
    (joined minus left), and the batch's points farthest from their centroids, which
    may re-place empty segments."""

    counts: np.ndarray  # (k,) int
    sums: np.ndarray  # (k, 6), original units
    scaled_sums: np.ndarray  # (k, 6)
    far_points: np.ndarray = field(default_factory=lambda: np.empty((0, N_FEATURES)))  # raw
    far_distances: np.ndarray = field(default_factory=lambda: np.empty(0))

    @classmethod
    def between(
        cls,
        model: SegmentModel,
        old_segments: np.ndarray,
        old_features: np.ndarray,
        new_segments: np.ndarray,
        new_features: np.ndarray,
    ) -> SegmentDelta:
        """The delta for visitors moving from (old segment, old features) to (new, new),
        with ``new_segments`` assigned by ``model``. Visitors whose old segment is
        negative are new: they only join."""
        k = model.k
        counts = np.bincount(new_segments, minlength=k).astype(np.int64)
        sums = _sum_by(new_segments, new_features, k)
        scaled_new = scale(new_features)
        scaled_sums = _sum_by(new_segments, scaled_new, k)
        was = old_segments >= 0
        counts -= np.bincount(old_segments[was], minlength=k)
        sums -= _sum_by(old_segments[was], old_features[was], k)
        scaled_sums -= _sum_by(old_segments[was], scale(old_features[was]), k)
        distance = np.sqrt(((scaled_new - model.centroids[new_segments]) ** 2).sum(axis=1))
        far = np.argsort(-distance, kind="stable")[:k]
        return cls(counts, sums, scaled_sums, new_features[far], distance[far])

    def to_json(self) -> dict[str, object]:
        return {
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
            "scaled_sums": self.scaled_sums.tolist(),
            "far_points": self.far_points.tolist(),
            "far_distances": self.far_distances.tolist(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, list]) -> SegmentDelta:  # type: ignore[type-arg]
        return cls(
            counts=np.asarray(obj["counts"], dtype=np.int64),
            sums=np.asarray(obj["sums"], dtype=np.float64).reshape(-1, N_FEATURES),
            scaled_sums=np.asarray(obj["scaled_sums"], dtype=np.float64).reshape(-1, N_FEATURES),
            far_points=np.asarray(obj["far_points"], dtype=np.float64).reshape(-1, N_FEATURES),
            far_distances=np.asarray(obj["far_distances"], dtype=np.float64),
        )


def _sum_by(segments: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, values.shape[1]))
    np.add.at(out, segments, values)
    return out


@dataclass
class SegmentModel:
    """k segments: centroids in scaled space plus the members' sufficient statistics."""

    centroids: np.ndarray  # (k, 6) scaled space
    active: np.ndarray  # (k,) bool: the segment has a centroid
    counts: np.ndarray  # (k,) members
    sums: np.ndarray  # (k, 6) original units
    scaled_sums: np.ndarray  # (k, 6)
    version: int = 0

    @property
    def k(self) -> int:
        return len(self.counts)

    @classmethod
    def seeded(cls, features: np.ndarray, k: int, seed: int = 0) -> SegmentModel:
        """A model with no members whose centroids are k-means++ seeds of ``features``."""
        if len(features) == 0:
            raise ValueError("seeding needs at least one feature vector")
        centers = kmeans_plus_plus(scale(features), k, np.random.default_rng(seed))
        centroids = np.zeros((k, N_FEATURES))
        centroids[: len(centers)] = centers
        active = np.arange(k) < len(centers)
        return cls(centroids, active, np.zeros(k, dtype=np.int64), np.zeros((k, N_FEATURES)), np.zeros((k, N_FEATURES)))

    def assign(self, features: np.ndarray) -> np.ndarray:
        """The nearest active centroid of each feature vector (ties: lowest id)."""
        scaled = scale(features)
        d2 = ((scaled[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        d2[:, ~self.active] = np.inf
        return np.argmin(d2, axis=1)

    def apply(self, delta: SegmentDelta) -> None:
        """Add a batch's delta; move centroids to their members' means; re-place empty ones."""
        self.counts += delta.counts
        self.sums += delta.sums
        self.scaled_sums += delta.scaled_sums
        if (self.counts < 0).any():
            raise ValueError(f"a segment would have a negative size: {self.counts.tolist()}")
        empty = self.counts == 0
        self.sums[empty] = 0.0  # drop float residue of members that all left
        self.scaled_sums[empty] = 0.0
        filled = ~empty
        self.centroids[filled] = self.scaled_sums[filled] / self.counts[filled, None]
        self.active |= filled
        self._replace_empty(delta)
        self.version += 1

    def _replace_empty(self, delta: SegmentDelta) -> None:
        points = [p for p, d in zip(scale(delta.far_points), delta.far_distances) if d > 0]
        for segment in np.flatnonzero(self.counts == 0):
            while points:
                point = points.pop(0)
                others = self.active & (np.arange(self.k) != segment)
                if not (np.abs(self.centroids[others] - point).sum(axis=1) == 0).any():
                    self.centroids[segment] = point
                    self.active[segment] = True
                    break

    def sizes(self) -> np.ndarray:
        return self.counts.copy()

    def centroids_in_units(self) -> np.ndarray:
        """Each segment's centroid in original units: the mean of its members' features
        (for an empty segment, its centroid mapped back from the scaled space)."""
        means = np.expm1(self.centroids)
        filled = self.counts > 0
        means[filled] = self.sums[filled] / self.counts[filled, None]
        return means

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "centroids": self.centroids,
                "active": self.active,
                "counts": self.counts,
                "sums": self.sums,
                "scaled_sums": self.scaled_sums,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> SegmentModel:
        obj = orjson.loads(value)
        return cls(
            centroids=np.asarray(obj["centroids"], dtype=np.float64),
            active=np.asarray(obj["active"], dtype=bool),
            counts=np.asarray(obj["counts"], dtype=np.int64),
            sums=np.asarray(obj["sums"], dtype=np.float64),
            scaled_sums=np.asarray(obj["scaled_sums"], dtype=np.float64),
            version=int(obj["version"]),
        )
