"""One person across login: whatever the order and packing of a visitor's events and its
link, the person's journey holds every event of both, and the linked visitor none."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.events import MERGE, VIEW, EventBatch
from ampelios.core.identities import follow_links, has_links
from ampelios.core.journeys import JourneyState, merge_journeys, merged_into, merged_value

ANONYMOUS, USER, OTHER = 11, 22, 33
GAP_MS = 20 * 60_000

rows = st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3))  # minute, event, item


def batch(events: list[tuple[int, int, int, int]]) -> EventBatch:
    """(visitor, minute, event, item) rows of source 1; a MERGE row's item is its target."""
    visitor, minute, event, item = (list(c) for c in zip(*events)) if events else ([], [], [], [])
    timestamp = [1_433_116_800_000 + m * 60_000 for m in minute]
    return EventBatch.from_columns([1] * len(events), timestamp, visitor, event, item, [-1] * len(events))


def apply(store: dict[int, bytes], events: EventBatch, forwarded: list[EventBatch]) -> None:
    """What the journeys processor does with one run of one partition (every visitor is
    this partition's; what it would forward goes to ``forwarded``, applied later)."""
    ids = np.unique(events.visitorid).tolist()
    stored = {v: store[v] for v in ids if v in store}
    gone, links = np.empty(0, dtype=np.int64), {}
    if has_links(events, stored):
        followed = follow_links(events, stored, 1)
        forwarded.append(followed.moved)
        events, gone, links = followed.kept, followed.gone, followed.links
    visitors, owner = np.unique(np.concatenate([events.visitorid, gone]), return_inverse=True)
    old = [store.get(v) for v in visitors.tolist()]
    merged = merge_journeys(old, events, owner[: len(events)], GAP_MS, leaving=np.isin(visitors, gone))
    staying = np.flatnonzero(~np.isin(visitors, gone))
    store.update(zip(visitors[staying].tolist(), merged.encode(staying), strict=True))
    store.update({a: merged_value(u) for a, u in links.items()})  # written with the step, as the processor does


def journey(store: dict[int, bytes], visitor: int) -> set[tuple[int, int, int]]:
    value = store.get(visitor)
    if value is None:
        return set()
    assert merged_into(value) is None
    events = JourneyState.from_bytes(value).events
    return set(zip(events["timestamp"].tolist(), events["event"].tolist(), events["itemid"].tolist()))


@settings(max_examples=150, deadline=None)
@given(
    anonymous=st.lists(rows, max_size=6),
    user=st.lists(rows, max_size=6),
    other=st.lists(rows, max_size=3),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.booleans(), min_size=20, max_size=20),
    deliveries=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_the_person_s_journey_holds_both_whatever_comes_first(anonymous, user, other, order, cuts, deliveries):
    arrivals = [(ANONYMOUS, *r) for r in anonymous] + [(USER, *r) for r in user] + [(OTHER, *r) for r in other]
    arrivals.append((ANONYMOUS, 9, MERGE, USER))  # the link, somewhere among them
    order.shuffle(arrivals)
    store: dict[int, bytes] = {}
    forwarded: list[EventBatch] = []
    run: list[tuple[int, int, int, int]] = []
    for i, row in enumerate(arrivals):
        run.append(row)
        if cuts[i % len(cuts)] or i == len(arrivals) - 1:  # runs of any packing
            apply(store, batch(run), forwarded)
            run = []
        while forwarded and deliveries[i % len(deliveries)]:  # moved events arrive at any time
            apply(store, forwarded.pop(0), forwarded)
    while forwarded:
        apply(store, forwarded.pop(0), forwarded)

    def definition(*of: list[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
        return {(1_433_116_800_000 + m * 60_000, e, item) for rows_ in of for m, e, item in rows_}

    assert journey(store, USER) == definition(anonymous, user)
    assert merged_into(store[ANONYMOUS]) == USER  # the anonymous visitor has no journey of its own
    assert journey(store, OTHER) == definition(other)  # nobody else is touched


def test_a_visitor_linked_before_any_event_sends_them_all_to_its_person():
    store: dict[int, bytes] = {}
    forwarded: list[EventBatch] = []
    apply(store, batch([(ANONYMOUS, 0, MERGE, USER)]), forwarded)
    apply(store, batch([(ANONYMOUS, 1, VIEW, 3), (USER, 2, VIEW, 4)]), forwarded)
    assert [len(f) for f in forwarded] == [0, 1]  # the link found no journey; the view followed it
    while forwarded:
        apply(store, forwarded.pop(0), forwarded)
    assert journey(store, USER) == {(1_433_116_860_000, VIEW, 3), (1_433_116_920_000, VIEW, 4)}
