"""Plain names for segments, from their centroid in original units.

The vocabulary serves the seed's uses -- identify high-value users, find moderately
likely buyers, filter out users with no purchase potential -- and the rule reads the
centroid (the mean member) of a segment, in this order:

=====================  ================================================================
label                  rule on the segment's mean member
=====================  ================================================================
high-value buyers      transactions >= 0.5 (at least every other member has bought)
likely buyers          add-to-carts >= 0.3 or transactions >= 0.1 (intent to buy)
engaged browsers       views >= 3 or sessions >= 1.5 (interest, no intent yet)
one-visit browsers     everything else: about one visit and one view, no purchase
                       potential
=====================  ================================================================

Two segments with the same label are told apart by a number, given in id order (the
lower id keeps the plain name), so a label stays with its segment while ids are stable.
A segment without members is ``empty``.

>>> label_of([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
'one-visit browsers'
>>> segment_labels([[12, 1, 1, 3, 4, 0.08], [4, 0, 0, 2, 2, 0], [5, 0, 0, 2, 2.5, 0]], [10, 20, 5])
['high-value buyers', 'engaged browsers', 'engaged browsers 2']

For people who have never seen the six features, :func:`summary` says what the mean member
did and :func:`advice` what a marketer may do with the segment:

>>> summary([16.6, 3.24, 1.46, 3.44, 4.58, 0.168])
'On average 1.5 purchases, 3.2 add-to-carts and 17 product views per visitor, over 3.4 visits (4.6 views per visit).'
>>> advice("likely buyers 2")
'Target with a campaign: they put products in the cart but seldom buy; a reminder or an offer may tip them over.'
"""

from __future__ import annotations

from collections.abc import Sequence

HIGH_VALUE_BUYERS = "high-value buyers"
LIKELY_BUYERS = "likely buyers"
ENGAGED_BROWSERS = "engaged browsers"
ONE_VISIT_BROWSERS = "one-visit browsers"
EMPTY = "empty"
LABELS = (HIGH_VALUE_BUYERS, LIKELY_BUYERS, ENGAGED_BROWSERS, ONE_VISIT_BROWSERS)


def label_of(centroid: Sequence[float]) -> str:
    """The label of a segment whose mean member has these six features."""
    views, carts, buys, sessions = (float(x) for x in centroid[:4])
    if buys >= 0.5:
        return HIGH_VALUE_BUYERS
    if carts >= 0.3 or buys >= 0.1:
        return LIKELY_BUYERS
    if views >= 3 or sessions >= 1.5:
        return ENGAGED_BROWSERS
    return ONE_VISIT_BROWSERS


def segment_labels(centroids: Sequence[Sequence[float]], sizes: Sequence[int]) -> list[str]:
    """Labels of all segments (in id order), numbered where a label repeats."""
    seen: dict[str, int] = {}
    labels = []
    for centroid, size in zip(centroids, sizes):
        if size <= 0:
            labels.append(EMPTY)
            continue
        label = label_of(centroid)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} {seen[label]}")
    return labels


ADVICE = {
    HIGH_VALUE_BUYERS: "Keep them: they already buy. Reward loyalty; no discount is needed to win them.",
    LIKELY_BUYERS: (
        "Target with a campaign: they put products in the cart but seldom buy; a reminder or an offer "
        "may tip them over."
    ),
    ENGAGED_BROWSERS: "Nurture: they come back and look around; recommendations may turn interest into intent.",
    ONE_VISIT_BROWSERS: "Ignore for campaigns: one short visit and no sign of purchase potential.",
    EMPTY: "No visitors at the moment.",
}


def _amount(x: float) -> str:
    """Two significant digits, no exponent: 0.035, 1.5, 17, 240."""
    return f"{x:.2g}" if abs(x) < 100 else f"{x:.0f}"


def summary(centroid: Sequence[float]) -> str:
    """What a segment's mean member did, in plain words (the centroid in original units)."""
    views, carts, buys, sessions, per_session = (float(x) for x in centroid[:5])
    visits = _amount(sessions)
    return (
        f"On average {_amount(buys)} purchases, {_amount(carts)} add-to-carts and {_amount(views)} product "
        f"views per visitor, over {visits} visit{'' if visits == '1' else 's'} ({_amount(per_session)} views "
        f"per visit)."
    )


ACTIONS = {
    HIGH_VALUE_BUYERS: "keep",
    LIKELY_BUYERS: "target",
    ENGAGED_BROWSERS: "nurture",
    ONE_VISIT_BROWSERS: "ignore",
    EMPTY: "none",
}


def advice(label: str) -> str:
    """What to do with a segment of this label (numbered labels share their base's advice)."""
    return ADVICE[label.rstrip(" 0123456789")]


def action(label: str) -> str:
    """The advice in one word: keep, target, nurture, ignore (or none for an empty segment)."""
    return ACTIONS[label.rstrip(" 0123456789")]
