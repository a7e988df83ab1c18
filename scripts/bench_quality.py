"""Segment quality: the online model against batch k-means, river and the seed's approach.

For each size, generated events are replayed through Ampelios's own core -- the replay's
messages (per partition, in event-time order), journeys merged batch by batch, one
population delta and one model update per message, exactly the functions the agents call
-- and the final model is compared with, on the same scaled features (``log1p``, divided
by the population's standard deviation, which is the model's own space):

- batch: scikit-learn ``KMeans(k, init="k-means++", n_init=10)`` fitted offline;
- river: ``river.cluster.KMeans`` fed every visitor's final features once;
- seed: the seed's approach, ``MiniBatchKMeans(k)`` on unscaled features.

Inertia is each partition's sum of squared distances to its own cluster means in the
scaled space; the ratio is against the batch fit. ARI is the adjusted Rand index of the
assignments against the batch fit. The online model is also replayed in file order
(shuffled rows) and compared with the time-ordered run: ARI, and once both are settled
as the model's owner settles at the end of a replay, whether every visitor has the same
segment id and every segment the same label and size in both; and every consecutive pair
of model versions during the time-ordered replay is checked for id swaps (the best
matching of old to new centroids is not the identity) and label swaps (two ids exchange
labels).

    python scripts/bench_quality.py                      # 20k and 1.4M visitors
    python scripts/bench_quality.py --visitors 2000 --skip-river   # a smoke run

Needs the bench extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from river import cluster as river_cluster
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score

from ampelios.core.events import EventBatch
from ampelios.core.generate import EVENTS_PER_VISITOR, generate_events
from ampelios.core.journeys import batch_shapes, features_from_shapes, merge_journeys
from ampelios.core.model import SegmentModel, update
from ampelios.core.population import Population, PopulationDelta
from ampelios.ingest.replay import plan_messages

GAP_MS = 20 * 60_000


@dataclass
class OnlineRun:
    model: SegmentModel
    seconds: float
    versions: int
    id_swaps: int = 0
    label_swaps: int = 0
    history: list[SegmentModel] = field(default_factory=list)


def match_ids(current: np.ndarray, current_active: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """How ids would move if they followed the groups: ``order`` such that
    ``candidate[order]`` gives each current id the candidate segment closest to it
    (minimum total squared distance; inactive ids served last). An id swap is an
    ``order`` that is not the identity."""
    k = len(candidate)
    current, current_active = current[:k], current_active[:k]
    cost = ((current[:, None, :] - candidate[None, :, :]) ** 2).sum(2)
    cost[~current_active] = cost.max() + 1.0
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(k, dtype=np.int64)
    order[rows] = cols
    order[len(current) :] = sorted(set(range(k)) - set(cols.tolist()))
    return order


def replay_online(events: EventBatch, k: int, partitions: int, batch_events: int, in_time_order: bool) -> OnlineRun:
    """The agents' work, in process: journeys -> population deltas -> model updates."""
    started = time.perf_counter()
    journeys: dict[int, bytes] = {}
    population = Population()
    model: SegmentModel | None = None
    id_swaps = label_swaps = versions = 0
    for _, chunk in plan_messages(events, partitions, batch_events, in_time_order):
        visitors, owner = np.unique(chunk.visitorid, return_inverse=True)
        ids = visitors.tolist()
        batch = merge_journeys([journeys.get(v) for v in ids], chunk, owner, GAP_MS)
        changed = batch.changed
        for i, value in zip(np.flatnonzero(changed).tolist(), batch.encode(np.flatnonzero(changed))):
            journeys[ids[i]] = value
        delta = PopulationDelta.of(batch.old_shapes[changed & batch.was_active], batch.new_shapes[changed])
        if not len(delta):
            continue
        population.apply(delta)
        before = model
        model = update(model, population, k)
        versions += 1
        if before is not None:
            order = match_ids(before.centroids / model.scale, before.active, model.centroids / model.scale)
            id_swaps += int(not np.array_equal(order[before.active], np.flatnonzero(before.active)))
            label_swaps += sum(
                1
                for a in range(k)
                for b in range(a + 1, k)
                if before.labels[a] == model.labels[b] and before.labels[b] == model.labels[a] != model.labels[b]
            )
    assert model is not None
    model = update(model, population, k, settle=True)  # as the owner does at the end of a replay
    return OnlineRun(model, time.perf_counter() - started, versions, id_swaps, label_swaps)


def final_features(events: EventBatch) -> np.ndarray:
    """Every visitor's six features by the batch definition (visitors in id order)."""
    order = np.lexsort((events.timestamp, events.visitorid))
    e = events.take(order)
    visitors, owner = np.unique(e.visitorid, return_inverse=True)
    return features_from_shapes(batch_shapes(owner, e.timestamp, e.event, len(visitors), GAP_MS))


def partition_inertia(z: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for label in np.unique(labels):
        members = z[labels == label]
        total += float(((members - members.mean(axis=0)) ** 2).sum())
    return total


def river_labels(z: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    model = river_cluster.KMeans(n_clusters=k, seed=0)
    rows = [dict(enumerate(row)) for row in z.tolist()]
    for i in np.random.default_rng(0).permutation(len(rows)).tolist():
        model.learn_one(rows[i])
    labels = np.array([model.predict_one(row) for row in rows])
    return labels, time.perf_counter() - started


def measure(n_visitors: int, k: int, partitions: int, batch_events: int, seed: int, skip_river: bool) -> dict:
    n_events = round(n_visitors * EVENTS_PER_VISITOR)
    events = generate_events(n_events, seed=seed)
    online = replay_online(events, k, partitions, batch_events, in_time_order=True)
    shuffled = replay_online(events, k, partitions, batch_events, in_time_order=False)
    features = final_features(events)
    model = online.model
    z = np.log1p(features) / model.scale
    online_labels = model.assign(features)
    shuffled_labels = shuffled.model.assign(features)

    started = time.perf_counter()
    batch = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(z)
    batch_seconds = time.perf_counter() - started
    batch_inertia = partition_inertia(z, batch.labels_)

    rows = {
        "online": (online_labels, online.seconds),
        "online, shuffled replay": (shuffled_labels, shuffled.seconds),
        "batch KMeans n_init=10": (batch.labels_, batch_seconds),
    }
    if not skip_river:
        rows["river KMeans"] = river_labels(z, k)
    started = time.perf_counter()
    seed_model = MiniBatchKMeans(k, random_state=seed, n_init=3).fit(features)
    rows["seed: MiniBatchKMeans, unscaled"] = (seed_model.labels_, time.perf_counter() - started)

    results = {
        name: {
            "inertia_ratio": partition_inertia(z, labels) / batch_inertia,
            "ari_vs_batch": float(adjusted_rand_score(batch.labels_, labels)),
            "seconds": seconds,
        }
        for name, (labels, seconds) in rows.items()
    }
    return {
        "visitors": len(features),
        "events": n_events,
        "k": k,
        "methods": results,
        "time_vs_shuffled_ari": float(adjusted_rand_score(online_labels, shuffled_labels)),
        "time_vs_shuffled_same_ids": float(np.mean(online_labels == shuffled_labels)),
        "time_vs_shuffled_same_segments": model.labels == shuffled.model.labels
        and model.sizes.tolist() == shuffled.model.sizes.tolist(),
        "model_versions": online.versions,
        "id_swaps": online.id_swaps,
        "label_swaps": online.label_swaps,
        "labels": model.labels,
        "sizes": model.sizes.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", default="20000,1406174", help="comma-separated sizes (visitors)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-events", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-river", action="store_true", help="river costs ~20 us per visitor")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report = [
        measure(int(n), args.k, args.partitions, args.batch_events, args.seed, args.skip_river)
        for n in args.visitors.split(",")
    ]
    for r in report:
        print(f"\n{r['visitors']} visitors ({r['events']} events), k={r['k']}")
        print(f"{'method':<34} {'inertia/batch':>13} {'ARI vs batch':>13} {'seconds':>9}")
        for name, m in r["methods"].items():
            print(f"{name:<34} {m['inertia_ratio']:>13.4f} {m['ari_vs_batch']:>13.4f} {m['seconds']:>9.2f}")
        print(f"time-ordered vs shuffled replay ARI: {r['time_vs_shuffled_ari']:.4f}")
        same = "same" if r["time_vs_shuffled_same_segments"] else "different"
        print(f"visitors with the same segment id: {r['time_vs_shuffled_same_ids']:.4f}; labels and sizes: {same}")
        print(f"model versions: {r['model_versions']}, id swaps: {r['id_swaps']}, label swaps: {r['label_swaps']}")
        print("segments: " + ", ".join(f"{label} ({size})" for label, size in zip(r["labels"], r["sizes"])))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
