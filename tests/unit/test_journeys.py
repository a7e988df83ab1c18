"""Sessions and features: the streaming journey equals the batch definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch
from ampelios.core.journeys import (
    JOURNEY_EVENT,
    JourneyState,
    batch_shapes,
    chunk_count,
    features_from_shapes,
    features_of,
    join_journey,
    merge_journeys,
    sessionize,
    store_journey,
    stored_features,
)

GAP = 20 * 60_000
T0 = 1_433_000_000_000


def test_a_gap_of_exactly_twenty_minutes_stays_in_the_session():
    sessions = sessionize(np.array([0, GAP, 2 * GAP + 1]), np.array([VIEW, VIEW, VIEW]), GAP)
    assert [(s.start, s.end, s.views) for s in sessions] == [(0, GAP, 2), (2 * GAP + 1, 2 * GAP + 1, 1)]


def test_six_features_follow_the_seed_definition():
    # session 1: 2 views, 1 cart, 1 buy; session 2: 2 views
    ts = np.array([0, 1, 2, 3, GAP * 3, GAP * 3 + 5])
    ev = np.array([VIEW, VIEW, ADDTOCART, TRANSACTION, VIEW, VIEW])
    f = features_of(sessionize(ts, ev, GAP))
    assert f.tolist() == [4, 1, 1, 2, 2.0, (1 / 2) / 2.0]


def test_purchase_ratio_without_views_is_buys_per_session():
    f = features_of(sessionize(np.array([0, 1]), np.array([ADDTOCART, TRANSACTION]), GAP))
    assert f.tolist() == [0, 1, 1, 1, 0.0, 1.0]


# One visitor's events: (minute offset, event, item). Few distinct values -> collisions.
event_rows = st.tuples(st.integers(0, 200), st.sampled_from([VIEW, ADDTOCART, TRANSACTION]), st.integers(0, 3))
visitor_events = st.dictionaries(
    st.integers(0, 5), st.lists(event_rows, min_size=1, max_size=30), min_size=1, max_size=6
)


def as_batch(rows: list[tuple[int, int, int, int]]) -> EventBatch:
    """rows of (visitor, minute, event, item) -> events (transaction id = item for buys)."""
    v, m, e, i = (np.array(x, dtype=np.int64) for x in zip(*rows))
    tx = np.where(e == TRANSACTION, i, -1)
    return EventBatch.from_columns(np.ones(len(v)), T0 + m * 60_000 + (m % 7) * 1000, v, e, i, tx)


def batch_definition(rows) -> dict[int, tuple[list, np.ndarray]]:
    """The obvious definition: distinct events per visitor, sorted, sessionized."""
    events = as_batch(rows)
    result = {}
    for visitor in np.unique(events.visitorid).tolist():
        mine = events.take(events.visitorid == visitor)
        distinct = sorted(
            set(zip(mine.timestamp.tolist(), mine.event.tolist(), mine.itemid.tolist(), mine.transactionid.tolist()))
        )
        ts = np.array([d[0] for d in distinct])
        ev = np.array([d[1] for d in distinct])
        sessions = sessionize(ts, ev, GAP)
        result[visitor] = (sessions, features_of(sessions))
    return result


def stream(rows, chunk_sizes) -> dict[int, bytes]:
    """Feed rows through merge_journeys in chunks, as the agent does, keeping bytes."""
    store: dict[int, bytes] = {}
    events = as_batch(rows)
    start = 0
    for size in chunk_sizes:
        if start >= len(events):
            break
        chunk = events.take(slice(start, start + size))
        start += size
        visitors, owner = np.unique(chunk.visitorid, return_inverse=True)
        batch = merge_journeys([store.get(v) for v in visitors.tolist()], chunk, owner, GAP)
        idx = np.arange(len(visitors))
        for v, value in zip(visitors.tolist(), batch.encode(idx)):
            store[v] = value
    assert start >= len(events)
    return store


@settings(max_examples=200, deadline=None)
@given(
    visitor_events,
    st.randoms(use_true_random=False),
    st.lists(st.integers(1, 12), min_size=1, max_size=40),
    st.integers(0, 3),
)
def test_streaming_equals_batch_for_any_order_chunking_and_duplicates(by_visitor, rnd, chunks, copies):
    rows = [(v, m, e, i) for v, evs in by_visitor.items() for (m, e, i) in evs]
    delivered = rows + [rnd.choice(rows) for _ in range(copies * len(rows) // 2)]  # redeliveries
    rnd.shuffle(delivered)
    chunks = [*chunks, len(delivered)]  # whatever is left arrives in one last batch
    store = stream(delivered, chunks)
    expected = batch_definition(rows)
    assert set(store) == set(expected)
    for visitor, (sessions, features) in expected.items():
        journey = JourneyState.from_bytes(store[visitor])
        assert journey.sessions(GAP) == sessions
        np.testing.assert_allclose(journey.features(GAP), features)


@settings(max_examples=100, deadline=None)
@given(visitor_events)
def test_vectorized_features_equal_the_definition(by_visitor):
    rows = sorted((v, m, e, i) for v, evs in by_visitor.items() for (m, e, i) in evs)
    events = as_batch(rows)
    order = np.lexsort((events.timestamp, events.visitorid))
    e = events.take(order)
    visitors, owner = np.unique(e.visitorid, return_inverse=True)
    got = features_from_shapes(batch_shapes(owner, e.timestamp, e.event, len(visitors), GAP))
    for i, visitor in enumerate(visitors.tolist()):
        mine = e.take(e.visitorid == visitor)
        np.testing.assert_allclose(got[i], features_of(sessionize(mine.timestamp, mine.event, GAP)))


def test_merge_reports_old_and_new_shapes_and_what_was_added():
    first = as_batch([(1, 0, VIEW, 1)])
    b1 = merge_journeys([None], first, np.array([0]), GAP)
    assert b1.existed.tolist() == [False] and b1.added.tolist() == [1]
    assert (b1.was_active.tolist(), b1.active.tolist()) == ([False], [True])
    assert b1.new_shapes.tolist() == [[1, 0, 0, 1]]
    stored = b1.encode(np.array([0]))[0]
    again = as_batch([(1, 0, VIEW, 1), (1, 1, ADDTOCART, 1), (1, 90, VIEW, 2)])
    b2 = merge_journeys([stored], again, np.array([0, 0, 0]), GAP)
    assert b2.existed.tolist() == [True] and b2.added.tolist() == [2] and b2.was_active.tolist() == [True]
    assert b2.old_shapes.tolist() == [[1, 0, 0, 1]] and b2.new_shapes.tolist() == [[2, 1, 0, 2]]
    duplicate = merge_journeys(b2.encode(np.array([0])), first, np.array([0]), GAP)
    assert duplicate.changed.tolist() == [False]


def test_a_window_counts_recent_events_and_activity_follows_the_cutoff():
    day = 24 * 60 * 60_000
    events = as_batch([(1, 0, VIEW, 1), (1, 1, TRANSACTION, 1), (1, 3 * 24 * 60, VIEW, 2)])  # day 0 and day 3
    batch = merge_journeys([None], events, np.zeros(3, dtype=np.int64), GAP, window_ms=2 * day)
    assert batch.new_shapes.tolist() == [[1, 0, 0, 1]]  # the day-0 purchase is out of the window
    last = int(batch.last_event[0])
    stored = batch.encode(np.array([0]))[0]
    expired = merge_journeys([stored], EventBatch.empty(), np.empty(0, dtype=np.int64), GAP, 2 * day, last)
    assert (expired.was_active.tolist(), expired.active.tolist(), expired.changed.tolist()) == ([True], [False], [True])
    assert JourneyState.from_bytes(expired.encode(np.array([0]))[0]).active is False
    back = merge_journeys(
        expired.encode(np.array([0])),
        as_batch([(1, 4 * 24 * 60, VIEW, 3)]),
        np.zeros(1, dtype=np.int64),
        GAP,
        2 * day,
        last,
    )
    assert (back.was_active.tolist(), back.active.tolist(), back.new_shapes.tolist()) == (
        [False],
        [True],
        [[2, 0, 0, 2]],
    )


def test_journey_bytes_round_trip():
    events = np.zeros(2, dtype=JOURNEY_EVENT)
    events["timestamp"] = [T0, T0 + 1]
    back = JourneyState.from_bytes(JourneyState(events, active=False).to_bytes())
    assert back.events.tolist() == events.tolist() and back.active is False


@settings(max_examples=100, deadline=None)
@given(visitor_events, st.integers(1, 200))
def test_windowed_features_count_the_events_of_the_window_before_the_last(by_visitor, window_minutes):
    rows = sorted((v, m, e, i) for v, evs in by_visitor.items() for (m, e, i) in evs)
    events = as_batch(rows)
    visitors, owner = np.unique(events.visitorid, return_inverse=True)
    window = window_minutes * 60_000
    batch = merge_journeys([None] * len(visitors), events, owner, GAP, window_ms=window)
    for i, visitor in enumerate(visitors.tolist()):
        mine = events.take(events.visitorid == visitor)
        recent = mine.take(mine.timestamp > mine.timestamp.max() - window)
        columns = (recent.timestamp, recent.event, recent.itemid, recent.transactionid)
        distinct = sorted(set(zip(*(c.tolist() for c in columns))))
        ts = np.array([d[0] for d in distinct])
        ev = np.array([d[1] for d in distinct])
        expected = features_of(sessionize(ts, ev, GAP))
        np.testing.assert_allclose(features_from_shapes(batch.new_shapes[i : i + 1])[0], expected)


def _journey(n: int, active: bool = True) -> bytes:
    events = np.zeros(n, dtype=JOURNEY_EVENT)
    events["timestamp"] = T0 + np.arange(n) * 1000
    events["itemid"] = np.arange(n) % 7
    return JourneyState(events, active).to_bytes()


def _joined(stored: list[tuple[int, bytes]], previous: dict[int, bytes]) -> bytes:
    kept = dict(previous) | {i: v for i, v in stored}
    head = kept[-1]
    n = chunk_count(head)
    return join_journey(head, [kept[c] for c in range(n)]) if n else head


@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 9), st.booleans())
def test_long_journeys_are_stored_in_chunks_and_only_changed_chunks_are_rewritten(n, more, chunk, active):
    before, after = _journey(n), _journey(n + more, active)
    first = store_journey(None, before, chunk)
    assert _joined(first, {}) == before
    assert all(len(v) <= chunk * JOURNEY_EVENT.itemsize for i, v in first if i >= 0)
    second = store_journey(before, after, chunk)  # events appended in time order
    assert _joined(second, dict(first)) == after
    assert JourneyState.from_bytes(_joined(second, dict(first))).active is active
    rewritten = sorted(i for i, _ in second if i >= 0)
    if n + more > chunk:  # stored in chunks now
        first_changed = 0 if n <= chunk else n // chunk if more else -(-n // chunk)
        assert rewritten == list(range(first_changed, -(-(n + more) // chunk)))


@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 9))
def test_a_journey_that_drops_its_oldest_events_leaves_no_chunk_behind(n, dropped, chunk):
    """A window keeps a journey's recent events only: stored shorter, it holds no chunk of before."""
    before = _journey(n + dropped)
    after = JourneyState(JourneyState.from_bytes(before).events[dropped:]).to_bytes()
    first = store_journey(None, before, chunk)
    kept = {i: v for i, v in first}
    for i, value in store_journey(before, after, chunk):
        if value is None:
            del kept[i]
        else:
            kept[i] = value
    assert _joined(list(kept.items()), {}) == after
    assert sorted(i for i in kept if i >= 0) == list(range(chunk_count(kept[-1])))


@given(visitor_events, st.one_of(st.none(), st.integers(1, 200)), st.lists(st.booleans(), min_size=6, max_size=6))
def test_stored_features_of_many_journeys_equal_each_journeys_own(by_visitor, window_minutes, inactive):
    rows = sorted((v, m, e, i) for v, evs in by_visitor.items() for (m, e, i) in evs)
    events = as_batch(rows)
    visitors, owner = np.unique(events.visitorid, return_inverse=True)
    values = merge_journeys([None] * len(visitors), events, owner, GAP).encode(np.arange(len(visitors)))
    values = [JourneyState(JourneyState.from_bytes(v).events, not off).to_bytes() for v, off in zip(values, inactive)]
    window = window_minutes * 60_000 if window_minutes else None
    features, active = stored_features(values, GAP, window)
    for i, value in enumerate(values):
        journey = JourneyState.from_bytes(value)
        np.testing.assert_allclose(features[i], journey.features(GAP, window))
        assert active[i] == journey.active
