"""Online k-means in the segment model: river's KMeans vs Ampelios's numpy SegmentModel.

Both see the same journeys (the final six features of every visitor of a generated data
set, in batches as the worker would see them) and the same log1p scaling. Prints the cost
per observation and the inertia of the final model (sum of squared distances of every
visitor to its nearest centroid, in the scaled space).

    python scripts/bench_model.py --events 500000

Needs the bench extra (``pip install -e .[bench]``) for river.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from river import cluster

from ampelios.core.generate import generate_events
from ampelios.core.journeys import batch_features
from ampelios.core.model import SegmentDelta, SegmentModel, scale


def journeys(n_events: int, seed: int) -> np.ndarray:
    events = generate_events(n_events, seed=seed)
    order = np.lexsort((events.timestamp, events.visitorid))
    e = events.take(order)
    visitors, owner = np.unique(e.visitorid, return_inverse=True)
    features = batch_features(owner, e.timestamp, e.event, len(visitors), 20 * 60_000)
    return features[np.random.default_rng(seed).permutation(len(features))]


def inertia(points: np.ndarray, centroids: np.ndarray) -> float:
    d2 = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return float(d2.min(axis=1).sum())


def bench_numpy(features: np.ndarray, k: int, batch: int) -> tuple[float, float]:
    started = time.perf_counter()
    model = SegmentModel.seeded(features[:batch], k)
    none = np.full(batch, -1)
    for i in range(0, len(features), batch):
        chunk = features[i : i + batch]
        segments = model.assign(chunk)
        model.apply(SegmentDelta.between(model, none[: len(chunk)], np.zeros_like(chunk), segments, chunk))
    elapsed = time.perf_counter() - started
    return elapsed, inertia(scale(features), model.centroids[model.active])


def bench_river(features: np.ndarray, k: int) -> tuple[float, float]:
    model = cluster.KMeans(n_clusters=k, halflife=0.5, sigma=3, seed=0)
    scaled = scale(features)
    rows = [dict(enumerate(row)) for row in scaled.tolist()]
    started = time.perf_counter()
    for row in rows:
        model.learn_one(row)
    elapsed = time.perf_counter() - started
    centroids = np.array([[c[j] for j in range(scaled.shape[1])] for c in model.centers.values()])
    return elapsed, inertia(scaled, centroids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2_500, help="visitors per worker batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    features = journeys(args.events, args.seed)
    n = len(features)
    rows = [
        ("numpy SegmentModel", *bench_numpy(features, args.k, args.batch)),
        ("river KMeans", *bench_river(features, args.k)),
    ]
    print(f"{n} visitors ({args.events} events), k={args.k}, batches of {args.batch} visitors")
    print(f"{'model':<20} {'total s':>9} {'us/obs':>8} {'inertia':>12}")
    for name, seconds, value in rows:
        print(f"{name:<20} {seconds:>9.3f} {1e6 * seconds / n:>8.2f} {value:>12.1f}")


if __name__ == "__main__":
    main()
