"""Why a visitor is in its segment: distances to every segment and, in words, the features
that place it there rather than in the nearest other one.

The model assigns a visitor to the nearest centroid in its space (``log1p`` of the six
features, each divided by its scale; :mod:`ampelios.core.model`). The squared distance to
the nearest other segment exceeds the one to its own by a sum over the six features;
the features with the largest positive terms are what place the visitor here rather
than there. They are said in the units a marketer reads: the visitor's own count and
the two segments' mean members.

>>> import numpy as np
>>> from ampelios.core.model import update
>>> from ampelios.core.population import Population
>>> model = update(None, Population({(1, 0, 0, 1): 900, (3, 0, 0, 2): 300, (40, 3, 2, 4): 5}), k=3)
>>> answer = why(model, np.array([30.0, 2, 2, 3, 10, 0.067]))
>>> answer["segment"], answer["nearest_other"]["label"]
(0, 'returning browsers')
>>> for reason in answer["reasons"]:
...     print(reason["says"])
0.067 purchases per view: repeat buyers average 0.05, returning browsers 0
2 purchases: repeat buyers average 2, returning browsers 0
2 add-to-carts: repeat buyers average 3, returning browsers 0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ampelios.core.journeys import FEATURE_NAMES
from ampelios.core.labels import amount, counted
from ampelios.core.model import SegmentModel

MAX_REASONS = 3

# How each feature is said: singular and plural noun (None: the plural adds an s).
_NOUNS = {
    "views": ("product view", None),
    "addtocarts": ("add-to-cart", None),
    "transactions": ("purchase", None),
    "sessions": ("visit", None),
    "views_per_session": ("view per visit", "views per visit"),
    "purchase_ratio": ("purchase per view", "purchases per view"),
}


def why(model: SegmentModel, features: np.ndarray) -> dict[str, Any]:
    """Why a visitor with these six ``features`` (original units) is in its segment:
    ``segment``; ``distances`` to every segment with members (model space, nearest
    first); ``nearest_other`` (``None`` with one segment); ``reasons``: up to
    MAX_REASONS features, largest first, each with the visitor's value, both segments'
    means, its ``share`` of the features' pull towards this segment (the positive terms
    of the squared distance gap), and what it ``says``."""
    d2 = model.sq_distances(features[None, :])[0]
    order = [int(s) for s in np.argsort(d2, kind="stable") if np.isfinite(d2[s])]  # argmin first, as assign
    here = order[0]
    distances = [{"segment": s, "label": model.labels[s], "distance": float(np.sqrt(d2[s]))} for s in order]
    answer: dict[str, Any] = {"segment": here, "distances": distances, "nearest_other": None, "reasons": []}
    if len(order) < 2:
        return answer
    other = order[1]
    z, centers = np.log1p(features) / model.scale, model.centroids / model.scale
    answer["nearest_other"] = {"segment": other, "label": model.labels[other]}
    terms = (z - centers[other]) ** 2 - (z - centers[here]) ** 2  # adds up to d2[other] - d2[here]
    pull = max(float(terms[terms > 0].sum()), 1e-300)  # what draws the visitor here, all features
    for f in np.argsort(-terms, kind="stable")[:MAX_REASONS].tolist():
        if terms[f] <= 0:
            break
        name = FEATURE_NAMES[f]
        noun, plural = _NOUNS[name]
        mine, theirs = float(model.units[here, f]), float(model.units[other, f])
        answer["reasons"].append(
            {
                "feature": name,
                "visitor": float(features[f]),
                "segment_mean": mine,
                "other_mean": theirs,
                "share": float(terms[f]) / pull,
                "says": f"{counted(float(features[f]), noun, plural)}: {model.labels[here]} average {amount(mine)}, "
                f"{model.labels[other]} {amount(theirs)}",
            }
        )
    return answer
