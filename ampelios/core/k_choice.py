"""How many segments: the quality of k = 2..10 on a population, and the rule of ``AMPELIOS_K=auto``.

For each k, :func:`evaluate` fits the model as a seeding does (the same starts, so the
figures are those of the segments ``AMPELIOS_K=k`` would give) and reports, on the
weighted population (every visitor counted once):

- ``inertia``: mean squared distance of a visitor to its segment's centroid, in the
  model's space (falls as k grows, always);
- ``davies_bouldin``: the Davies-Bouldin index, the mean over segments of the worst ratio
  of two segments' spread to the distance between them (lower: better separated);
- ``smallest_share``: the share of visitors in the smallest segment;
- ``kinds``: how many different kinds of name the segments get
  (:mod:`ampelios.core.labels`); fewer than k means two segments are of one kind.

The silhouette is not among them: on these populations most visitors share a handful of
journeys (a one-view bouncer is at distance 0 from every other one), which puts the
weighted silhouette between 0.74 and 0.90 for every k from 2 to 10 on Retailrocket-sized
data, whatever the fit (docs/segment-model.md).

**The rule** (:func:`choose_k`): the largest k whose segments a marketer can tell apart
and act on -- every segment a kind of its own, and every segment at least MIN_SHARE of
the visitors; 2 if no k qualifies.

>>> from ampelios.core.population import Population
>>> population = Population({(1, 0, 0, 1): 900, (4, 0, 0, 2): 300, (30, 3, 2, 4): 40, (3, 2, 1, 1): 30})
>>> choose_k(evaluate(population, range(2, 5)))
4
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ampelios.core.labels import EMPTY, kind_of
from ampelios.core.model import points_of, update
from ampelios.core.population import Population

K_RANGE = range(2, 11)
MIN_SHARE = 0.005  # a segment smaller than this is too small to act on
K_RULE = (
    "the largest k from 2 to 10 whose segments are each of a kind of their own and each hold at least "
    f"{MIN_SHARE:.1%} of the visitors (2 if none)"
)


@dataclass(frozen=True)
class KQuality:
    """The segments ``AMPELIOS_K=k`` gives a population, in figures (module docstring)."""

    k: int
    inertia: float
    davies_bouldin: float
    smallest_share: float
    kinds: int
    labels: list[str]

    @property
    def actionable(self) -> bool:
        """Every segment is a kind of its own and holds at least MIN_SHARE of the visitors."""
        return self.kinds == self.k and self.smallest_share >= MIN_SHARE

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "actionable": self.actionable}


def evaluate(population: Population, ks: Iterable[int] = K_RANGE) -> list[KQuality]:
    """The quality of each k of ``ks`` on ``population`` (as many distinct journeys as k at
    least; larger k are left out)."""
    _, logged, weights = points_of(population)
    total = weights.sum()
    qualities = []
    for k in ks:
        if k > len(weights):
            break
        model = update(None, population, k)
        z, centers = logged / model.scale, model.centroids / model.scale
        d2 = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(2)
        d2[:, ~model.active] = np.inf
        nearest = d2.argmin(1)
        spread = np.sqrt(np.bincount(nearest, weights=weights * d2[np.arange(len(z)), nearest], minlength=k))
        spread /= np.sqrt(np.maximum(model.sizes, 1))  # root mean squared distance to the centroid
        apart = np.sqrt(((centers[:, None, :] - centers[None, :, :]) ** 2).sum(2))
        ratio = (spread[:, None] + spread[None, :]) / np.where(apart > 0, apart, np.inf)
        np.fill_diagonal(ratio, 0.0)
        filled = model.sizes > 0
        qualities.append(
            KQuality(
                k=k,
                inertia=model.inertia / total,
                davies_bouldin=float(ratio[np.ix_(filled, filled)].max(1).mean()),
                smallest_share=float(model.sizes.min() / total),
                kinds=len({kind_of(label) for label in model.labels} - {EMPTY}),
                labels=model.labels,
            )
        )
    return qualities


def choose_k(qualities: list[KQuality]) -> int:
    """The largest k whose segments are all actionable (:attr:`KQuality.actionable`), or 2."""
    return max((q.k for q in qualities if q.actionable), default=2)
