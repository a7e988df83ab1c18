"""One person across login: whatever the order and packing of a visitor's events and its
link, the person's journey holds every event of both, and the linked visitor none."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.events import MERGE, VIEW, EventBatch
from ampelios.core.identities import follow_links, has_links, link_targets
from ampelios.core.journeys import JourneyState, merge_journeys, merged_into, merged_value

ANONYMOUS, USER, OTHER = 11, 22, 33
GAP_MS = 20 * 60_000

rows = st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3))  # minute, event, item


def batch(events: list[tuple[int, int, int, int]]) -> EventBatch:
    """(visitor, minute, event, item) rows of source 1; a MERGE row's item is its target."""
    visitor, minute, event, item = (list(c) for c in zip(*events)) if events else ([], [], [], [])
    timestamp = [1_433_116_800_000 + m * 60_000 for m in minute]
    return EventBatch.from_columns([1] * len(events), timestamp, visitor, event, item, [-1] * len(events))


class Site:
    """The journeys of a site's partitions as the journeys processor keeps them (visitor
    ``v`` is partition ``v % partitions``'s), the moved events in flight between them and
    the events refused."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.stores: list[dict[int, bytes]] = [{} for _ in range(partitions)]
        self.in_flight: list[tuple[int, EventBatch]] = []
        self.refused: list[EventBatch] = []

    def arrive(self, rows: list[tuple[int, int, int, int]]) -> None:
        """A run of rows, each sent to its visitor's partition (as the collector does)."""
        events = batch(rows)
        for partition, own in self.split(events):
            self.apply(partition, own)

    def deliver(self) -> None:
        """The oldest message of moved events in flight arrives."""
        partition, events = self.in_flight.pop(0)
        self.apply(partition, events, moved=True)

    def split(self, events: EventBatch) -> list[tuple[int, EventBatch]]:
        owner = events.visitorid % self.partitions
        return [(p, events.take(owner == p)) for p in range(self.partitions) if (owner == p).any()]

    def apply(self, partition: int, events: EventBatch, moved: bool = False) -> None:
        """What the journeys processor does with one run of ``partition``: moved events for
        its own visitors are merged in the same step, the others sent as moved."""
        store = self.stores[partition]
        ids = np.unique(events.visitorid).tolist()
        stored = {v: store[v] for v in ids if v in store}
        gone, links = np.empty(0, dtype=np.int64), {}
        if has_links(events, stored):
            stored |= {v: store[v] for v in link_targets(events, stored) if v in store}
            followed = follow_links(events, stored, 1, ids if moved else ())
            here = []
            for p, batch_ in self.split(followed.moved):
                (here.append(batch_) if p == partition else self.in_flight.append((p, batch_)))
            events, gone, links = EventBatch.concat([followed.kept, *here]), followed.gone, followed.links
            self.refused.append(followed.refused)
        visitors, owner = np.unique(np.concatenate([events.visitorid, gone]), return_inverse=True)
        old = [store.get(v) for v in visitors.tolist()]
        merged = merge_journeys(old, events, owner[: len(events)], GAP_MS, leaving=np.isin(visitors, gone))
        staying = np.flatnonzero(~np.isin(visitors, gone))
        store.update({a: merged_value(u) for a, u in links.items()})  # then the journeys, as the processor writes
        store.update(zip(visitors[staying].tolist(), merged.encode(staying), strict=True))

    def value(self, visitor: int) -> bytes | None:
        return self.stores[visitor % self.partitions].get(visitor)

    def journey(self, visitor: int) -> set[tuple[int, int, int]]:
        value = self.value(visitor)
        if value is None:
            return set()
        assert merged_into(value) is None
        events = JourneyState.from_bytes(value).events
        return set(zip(events["timestamp"].tolist(), events["event"].tolist(), events["itemid"].tolist()))


def moment(minute: int) -> int:
    return 1_433_116_800_000 + minute * 60_000


@settings(max_examples=150, deadline=None)
@given(
    partitions=st.sampled_from([1, 2]),  # the person's two visitors on one partition, or on two
    anonymous=st.lists(rows, max_size=6),
    user=st.lists(rows, max_size=6),
    other=st.lists(rows, max_size=3),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.booleans(), min_size=20, max_size=20),
    deliveries=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_the_person_s_journey_holds_both_whatever_comes_first(
    partitions, anonymous, user, other, order, cuts, deliveries
):
    arrivals = [(ANONYMOUS, *r) for r in anonymous] + [(USER, *r) for r in user] + [(OTHER, *r) for r in other]
    arrivals.append((ANONYMOUS, 9, MERGE, USER))  # the link, somewhere among them
    order.shuffle(arrivals)
    site = Site(partitions)
    run: list[tuple[int, int, int, int]] = []
    for i, row in enumerate(arrivals):
        run.append(row)
        if cuts[i % len(cuts)] or i == len(arrivals) - 1:  # runs of any packing
            site.arrive(run)
            run = []
        while site.in_flight and deliveries[i % len(deliveries)]:  # moved events arrive at any time
            site.deliver()
    while site.in_flight:
        site.deliver()

    def definition(*of: list[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
        return {(moment(m), e, item) for rows_ in of for m, e, item in rows_}

    assert site.journey(USER) == definition(anonymous, user)
    assert merged_into(site.value(ANONYMOUS) or b"") == USER  # the anonymous visitor has no journey of its own
    assert site.journey(OTHER) == definition(other)  # nobody else is touched
    assert not sum(map(len, site.refused))


def test_a_visitor_linked_before_any_event_sends_them_all_to_its_person():
    site = Site(2)
    site.arrive([(ANONYMOUS, 0, MERGE, USER)])
    site.arrive([(ANONYMOUS, 1, VIEW, 3), (USER, 2, VIEW, 4)])
    assert [len(events) for _, events in site.in_flight] == [1]  # the link found no journey; the view followed it
    site.deliver()
    assert site.journey(USER) == {(moment(1), VIEW, 3), (moment(2), VIEW, 4)}


VISITORS = st.sampled_from([ANONYMOUS, USER, OTHER])


@settings(max_examples=200, deadline=None)
@given(
    partitions=st.sampled_from([1, 2, 3]),
    views=st.lists(st.tuples(VISITORS, rows), max_size=12, unique=True),
    links=st.lists(st.tuples(VISITORS, VISITORS).filter(lambda link: link[0] != link[1]), max_size=4),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_links_that_chain_or_go_round_refuse_what_they_would_move_again(partitions, views, links, order, cuts):
    """``$merge`` rows of another producer may link a linked visitor again, or round in a
    cycle: each event still ends in one journey or refused, and nothing moves for ever."""
    arrivals = [(v, m, e, v * 10 + item) for v, (m, e, item) in views]  # no two visitors' events alike
    arrivals += [(a, 9, MERGE, u) for a, u in links]
    order.shuffle(arrivals)
    site = Site(partitions)
    run: list[tuple[int, int, int, int]] = []
    for i, row in enumerate(arrivals):
        run.append(row)
        if cuts[i % len(cuts)] or i == len(arrivals) - 1:
            site.arrive(run)
            run = []
    deliveries = 0
    while site.in_flight:
        site.deliver()
        deliveries += 1
        assert deliveries <= 3 * len(arrivals), "events keep moving"
    journeys = [site.journey(v) for v in (ANONYMOUS, USER, OTHER) if merged_into(site.value(v) or b"\0\0") is None]
    refusals = {(t, e, i) for r in site.refused for t, e, i in zip(*(r.timestamp, r.event, r.itemid))}
    events = {(moment(m), e, item) for _, m, e, item in arrivals if e != MERGE}
    assert set().union(refusals, *journeys) == events
    assert sum(map(len, journeys)) + len(refusals) == len(events)  # in one place each
