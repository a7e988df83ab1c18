"""Plain names for segments, from their centroid in original units.

Every segment with members gets a name of its own and advice of its own. The name's
*kind* reads the segment's mean member (its centroid in original units), first rule that
holds:

====================  ============================================  ========  ============================
kind                  rule on the mean member                       action    serves the seed's use
====================  ============================================  ========  ============================
repeat buyers         purchases >= 1.3                              keep      identify high-value users
first-time buyers     purchases >= 0.5                              keep      identify high-value users
cart abandoners       add-to-carts >= 0.3 or purchases >= 0.1       target    find moderately likely buyers
returning browsers    visits >= 1.5                                 nurture   browsers to nurture
engaged browsers      views >= 3 (in about one visit)               nurture   browsers to nurture
one-visit browsers    views >= 1.5                                  ignore    filter out (low potential)
one-view bouncers     everything else: one visit, about one view    ignore    filter out (no potential)
====================  ============================================  ========  ============================

Segments of the same kind are told apart by what sets them apart from each other: the
feature (views, add-to-carts, purchases, visits, views per visit) on which their mean
members differ most (``log1p`` scale), ranked, e.g. ``returning browsers with more
visits`` and ``returning browsers with fewer visits`` -- never a number suffix. A segment
without members is ``empty (id N)``.

>>> label_of([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
'one-view bouncers'
>>> segment_labels([[12, 1, 2, 3, 4, 0.1], [4, 0, 0, 2, 2, 0], [5, 0, 0, 6, 0.8, 0]], [10, 20, 5])
['repeat buyers', 'returning browsers with fewer visits', 'returning browsers with more visits']

For people who have never seen the six features, :func:`summary` says what the mean member
did and :func:`advice` what a marketer may do with the segment:

>>> summary([16.6, 3.24, 1.0, 3.44, 4.58, 0.06])
'On average 1 purchase, 3.2 add-to-carts and 17 product views per visitor, over 3.4 visits (4.6 views per visit).'
>>> advice("cart abandoners")
'Target with a campaign: they put products in the cart but seldom buy; a reminder or an offer may tip them over.'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REPEAT_BUYERS = "repeat buyers"
FIRST_TIME_BUYERS = "first-time buyers"
CART_ABANDONERS = "cart abandoners"
RETURNING_BROWSERS = "returning browsers"
ENGAGED_BROWSERS = "engaged browsers"
ONE_VISIT_BROWSERS = "one-visit browsers"
ONE_VIEW_BOUNCERS = "one-view bouncers"
KINDS = (
    REPEAT_BUYERS,
    FIRST_TIME_BUYERS,
    CART_ABANDONERS,
    RETURNING_BROWSERS,
    ENGAGED_BROWSERS,
    ONE_VISIT_BROWSERS,
    ONE_VIEW_BOUNCERS,
)
BUYERS = (REPEAT_BUYERS, FIRST_TIME_BUYERS)  # the kinds whose mean member has bought
EMPTY = "empty"

# What tells segments of one kind apart: feature index (in the six features) and its noun.
_DISTINGUISHING = ((0, "views"), (1, "add-to-carts"), (2, "purchases"), (3, "visits"), (4, "views per visit"))
_ORDINALS = ("2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th", "10th", "11th", "12th", "13th", "14th")


def label_of(centroid: Sequence[float]) -> str:
    """The kind of a segment whose mean member has these six features (module docstring)."""
    views, carts, buys, sessions = (float(x) for x in centroid[:4])
    if buys >= 1.3:
        return REPEAT_BUYERS
    if buys >= 0.5:
        return FIRST_TIME_BUYERS
    if carts >= 0.3 or buys >= 0.1:
        return CART_ABANDONERS
    if sessions >= 1.5:
        return RETURNING_BROWSERS
    if views >= 3:
        return ENGAGED_BROWSERS
    if views >= 1.5:
        return ONE_VISIT_BROWSERS
    return ONE_VIEW_BOUNCERS


def _ranks(n: int, noun: str) -> list[str]:
    """Qualifiers of ``n`` segments ranked from the highest value of ``noun`` down."""
    if n == 2:
        return [f"more {noun}", f"fewer {noun}"]
    return [f"the most {noun}", *(f"the {_ORDINALS[i]}-most {noun}" for i in range(n - 2)), f"the fewest {noun}"]


def segment_labels(centroids: Sequence[Sequence[float]], sizes: Sequence[int]) -> list[str]:
    """Labels of all segments (in id order), each different from every other: segments
    of one kind are qualified by the feature that sets them apart most, ranked (ties in
    id order)."""
    labels = [EMPTY if size <= 0 else label_of(c) for c, size in zip(centroids, sizes)]
    logged = np.log1p(np.maximum(np.asarray(centroids, dtype=np.float64).reshape(len(labels), -1), 0.0))
    for kind in set(labels) - {EMPTY}:
        same = [s for s, label in enumerate(labels) if label == kind]
        if len(same) < 2:
            continue
        spreads = [np.ptp(logged[same, f]) for f, _ in _DISTINGUISHING]
        feature, noun = _DISTINGUISHING[int(np.argmax(spreads))]
        ranked = sorted(same, key=lambda s: (-logged[s, feature], s))
        for s, qualifier in zip(ranked, _ranks(len(same), noun)):
            labels[s] = f"{kind} with {qualifier}"
    return [f"{EMPTY} (id {s})" if label == EMPTY else label for s, label in enumerate(labels)]


def kind_of(label: str) -> str:
    """The kind a label names (``returning browsers with more visits``: returning browsers)."""
    return EMPTY if label.startswith(EMPTY) else label.partition(" with ")[0]


ADVICE = {
    REPEAT_BUYERS: "Keep them: they buy again and again. Reward loyalty; no discount is needed to win them.",
    FIRST_TIME_BUYERS: (
        "Bring them back: they bought once. A thank-you and a next-purchase suggestion may make them regulars."
    ),
    CART_ABANDONERS: (
        "Target with a campaign: they put products in the cart but seldom buy; a reminder or an offer "
        "may tip them over."
    ),
    RETURNING_BROWSERS: "Nurture: they come back and look around; recommendations may turn interest into intent.",
    ENGAGED_BROWSERS: (
        "Nurture: one long look at many products; a follow-up with what they viewed may bring them back."
    ),
    ONE_VISIT_BROWSERS: "Low priority: one short visit of a few views; a cheap retargeting ad at most.",
    ONE_VIEW_BOUNCERS: "Ignore for campaigns: one view and gone, no sign of purchase potential.",
}

ACTIONS = {
    REPEAT_BUYERS: "keep",
    FIRST_TIME_BUYERS: "keep",
    CART_ABANDONERS: "target",
    RETURNING_BROWSERS: "nurture",
    ENGAGED_BROWSERS: "nurture",
    ONE_VISIT_BROWSERS: "ignore",
    ONE_VIEW_BOUNCERS: "ignore",
    EMPTY: "none",
}


def advice(label: str) -> str:
    """What to do with a segment of this label; a qualified label says what sets its
    segment apart from the others of its kind, so no two labels share advice."""
    kind = kind_of(label)
    if kind == EMPTY:
        return f"No visitors at the moment ({label})."
    qualifier = label.partition(" with ")[2]
    if not qualifier:
        return ADVICE[kind]
    return f"{ADVICE[kind]} Of the {kind}, these have {qualifier}."


def action(label: str) -> str:
    """The advice in one word: keep, target, nurture, ignore (or none for an empty segment)."""
    return ACTIONS[kind_of(label)]


def amount(x: float) -> str:
    """Two significant digits, no exponent: 0.035, 1.5, 17, 240."""
    return f"{x:.2g}" if abs(x) < 100 else f"{x:.0f}"


def counted(x: float, noun: str, plural: str | None = None) -> str:
    """``x`` (as :func:`amount` writes it) and the noun, singular only for exactly 1."""
    written = amount(x)
    return f"{written} {noun if written == '1' else plural or noun + 's'}"


def summary(centroid: Sequence[float]) -> str:
    """What a segment's mean member did, in plain words (the centroid in original units)."""
    views, carts, buys, sessions, per_session = (float(x) for x in centroid[:5])
    return (
        f"On average {counted(buys, 'purchase')}, {counted(carts, 'add-to-cart')} and "
        f"{counted(views, 'product view')} per visitor, over {counted(sessions, 'visit')} "
        f"({counted(per_session, 'view')} per visit)."
    )
