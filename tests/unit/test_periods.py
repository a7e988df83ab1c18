"""Period populations: built from batches in any order and packing, they equal the
definition applied to all events at once."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch
from ampelios.core.journeys import JourneyState, merge_journeys, summary_shape, window_shapes
from ampelios.core.periods import ACTIVITY_NAMES, PeriodDelta, PeriodPopulations, Rows, batch_delta

GAP = 20 * 60_000
HOUR = 3_600_000
PERIOD = 24 * HOUR

# One visitor's events: (hour offset, minute, event, item); a few days, collisions likely.
event_rows = st.tuples(
    st.integers(0, 24 * 9),
    st.sampled_from([0, 1, 5, 30, 59]),
    st.sampled_from([VIEW, ADDTOCART, TRANSACTION]),
    st.integers(0, 2),
)
visitor_events = st.dictionaries(
    st.integers(0, 5), st.lists(event_rows, min_size=1, max_size=25), min_size=1, max_size=5
)


def as_batch(rows: list[tuple[int, int, int, int, int]]) -> EventBatch:
    """rows of (visitor, hour, minute, event, item) -> events."""
    v, h, m, e, i = (np.array(x, dtype=np.int64) for x in zip(*rows))
    tx = np.where(e == TRANSACTION, i, -1)
    return EventBatch.from_columns(np.ones(len(v)), h * HOUR + m * 60_000, v, e, i, tx)


def definition(rows, period: int, window_ms: int | None, visitors: bool = False) -> dict[tuple, int]:
    """The population at the end of ``period`` (with ``visitors``: the visitors with
    events in it), by shape at its end, from all events at once."""
    events = as_batch(rows)
    end = (period + 1) * PERIOD
    counts: dict[tuple, int] = {}
    for visitor in np.unique(events.visitorid).tolist():
        mine = events.take((events.visitorid == visitor) & (events.timestamp < end))
        distinct = sorted(set(zip(mine.timestamp.tolist(), mine.event.tolist(), mine.itemid.tolist())))
        if not distinct:
            continue
        ts = np.array([d[0] for d in distinct], dtype=np.int64)
        if visitors and ts[-1] < end - PERIOD:
            continue
        if not visitors and window_ms is not None and ts[-1] <= end - window_ms:
            continue
        ev = np.array([d[1] for d in distinct])
        shape = tuple(window_shapes(np.zeros(len(ts), dtype=np.int64), ts, ev, 1, GAP, window_ms)[0].tolist())
        counts[shape] = counts.get(shape, 0) + 1
    return counts


def activity_definition(rows, period: int) -> list[int]:
    events = as_batch(rows)
    distinct = set(
        zip(events.visitorid.tolist(), events.timestamp.tolist(), events.event.tolist(), events.itemid.tolist())
    )
    mine = [d for d in distinct if d[1] // PERIOD == period]
    buys = {d[0] for d in mine if d[2] == TRANSACTION}
    by_event = [sum(1 for d in mine if d[2] == code) for code in (VIEW, ADDTOCART, TRANSACTION)]
    return [len({d[0] for d in mine}), len(buys), *by_event]


def streamed(
    rows,
    chunk_sizes,
    window_ms: int | None,
    keep_ms: int | None = None,
    keep_periods: int | None = None,
    lateness_ms: int | None = None,
    stored: dict[int, bytes] | None = None,
) -> PeriodPopulations:
    """Rows through merge_journeys in chunks, as the journeys processor does (storing
    each journey's events of the ``keep_ms`` up to its latest, if given; with
    ``lateness_ms``, leaving out the rows that late and summarizing the sessions before
    the last period boundary that far behind the newest event), folding the periods older
    than the newest ``keep_periods`` after each chunk, as the owner does. The journeys
    end in ``stored``; the rows applied are those whose ``applied`` flag is set."""
    stored = {} if stored is None else stored
    periods = PeriodPopulations()
    events = as_batch(rows)
    start, watermark = 0, 0
    for size in [*chunk_sizes, len(rows)]:
        chunk = events.take(slice(start, start + size))
        start += size
        if lateness_ms is not None and len(chunk):
            chunk = chunk.take(chunk.timestamp > watermark - lateness_ms)
            watermark = max([watermark, *chunk.timestamp.tolist()])
        if not len(chunk):
            continue
        visitors, owner = np.unique(chunk.visitorid, return_inverse=True)
        old = [stored.get(v) for v in visitors.tolist()]
        batch = merge_journeys(old, chunk, owner, GAP, window_ms)
        first, summaries = batch.first_kept(keep_ms), None
        if lateness_ms is not None:
            first, summaries = batch.summarize((watermark - lateness_ms) // PERIOD * PERIOD, GAP)
        for i, v in enumerate(visitors.tolist()):
            stored[v] = batch.encode(np.array([i]), first, summaries)[0]
        delta = PeriodDelta.from_json(batch_delta(batch, GAP, window_ms, PERIOD).to_json())
        periods.apply(delta)
        if keep_periods is not None:
            periods.fold(keep_periods)
    return periods


def applied(rows, chunk_sizes, lateness_ms: int) -> list:
    """The rows :func:`streamed` applies with ``lateness_ms``: those not that late."""
    kept, start, watermark = [], 0, 0
    for size in [*chunk_sizes, len(rows)]:
        chunk = [r for r in rows[start : start + size] if r[1] * HOUR + r[2] * 60_000 > watermark - lateness_ms]
        start += size
        kept += chunk
        watermark = max([watermark, *(r[1] * HOUR + r[2] * 60_000 for r in chunk)])
    return kept


@settings(max_examples=150, deadline=None)
@given(
    by_visitor=visitor_events,
    seed=st.integers(0, 2**16),
    chunks=st.lists(st.integers(1, 12), max_size=8),
    copies=st.integers(1, 2),
    window_days=st.sampled_from([None, 1, 2, 3]),
)
def test_period_populations_of_any_order_and_packing_equal_the_definition(
    by_visitor, seed, chunks, copies, window_days
):
    rows = [(v, *r) for v, events in by_visitor.items() for r in events] * copies
    random.Random(seed).shuffle(rows)
    window_ms = window_days * PERIOD if window_days else None
    periods = streamed(rows, chunks, window_ms)
    last = max(r[1] for r in rows) // 24 + (window_days or 0) + 1
    for p in range(last + 1):
        assert dict(periods.population(p).counts) == definition(rows, p, window_ms), p
        assert periods.visitors.get(p, {}) == definition(rows, p, window_ms, visitors=True), p
    span, table = periods.activity_table()
    for p in range(last + 1):
        expected = activity_definition(rows, p)
        got = table[p - span.start].tolist() if p in span else [0] * len(ACTIVITY_NAMES)
        assert got == expected, p


@settings(max_examples=100, deadline=None)
@given(
    by_visitor=visitor_events,
    chunks=st.lists(st.integers(1, 12), max_size=8),
    window_days=st.sampled_from([1, 2, 3]),
)
def test_journeys_that_keep_twice_the_window_give_the_same_periods_as_whole_ones(by_visitor, chunks, window_days):
    """Under a window a journey stores only its events of twice the window up to its
    latest: events in time order (none of them too late) still give every period's
    population, visitors and activity as the definition does."""
    rows = sorted(((v, *r) for v, events in by_visitor.items() for r in events), key=lambda r: (r[1], r[2]))
    window_ms = window_days * PERIOD
    periods = streamed(rows, chunks, window_ms, keep_ms=2 * window_ms)
    last = max(r[1] for r in rows) // 24 + window_days + 1
    for p in range(last + 1):
        assert dict(periods.population(p).counts) == definition(rows, p, window_ms), p
        assert periods.visitors.get(p, {}) == definition(rows, p, window_ms, visitors=True), p
    span, table = periods.activity_table()
    for p in range(last + 1):
        got = table[p - span.start].tolist() if p in span else [0] * len(ACTIVITY_NAMES)
        assert got == activity_definition(rows, p), p


@settings(max_examples=150, deadline=None)
@given(
    by_visitor=visitor_events,
    seed=st.integers(0, 2**16),
    chunks=st.lists(st.integers(1, 12), max_size=8),
    window_days=st.sampled_from([None, 1, 3]),
    keep=st.integers(1, 6),
)
def test_folded_periods_keep_every_later_population_whatever_comes_late(by_visitor, seed, chunks, window_days, keep):
    """Folded after every batch, events in any order (some before the fold), the periods
    from the base on are what the definition gives; none before it is kept."""
    rows = [(v, *r) for v, events in by_visitor.items() for r in events]
    random.Random(seed).shuffle(rows)
    window_ms = window_days * PERIOD if window_days else None
    periods = streamed(rows, chunks, window_ms, keep_periods=keep)
    base = periods.base if periods.base is not None else 0
    assert min([*periods.changes, *periods.visitors, *periods.activity]) >= base
    if periods.base is not None:
        assert periods.span().stop - base == keep and periods.first == base - periods.origin
    last = max(r[1] for r in rows) // 24 + (window_days or 0) + 1
    for p in range(base, last + 1):
        assert dict(periods.population(p).counts) == definition(rows, p, window_ms), p
        assert periods.visitors.get(p, {}) == definition(rows, p, window_ms, visitors=True), p
        assert periods.activity.get(p, np.zeros(5)).tolist() == activity_definition(rows, p), p


@settings(max_examples=200, deadline=None)
@given(
    by_visitor=visitor_events,
    seed=st.integers(0, 2**16),
    chunks=st.lists(st.integers(1, 12), max_size=8),
    copies=st.integers(1, 2),
    lateness_hours=st.sampled_from([1, 12, 24, 48]),
    sorted_by_time=st.booleans(),
)
def test_summarized_sessions_keep_every_period_and_journey_as_the_events_applied_give_them(
    by_visitor, seed, chunks, copies, lateness_hours, sorted_by_time
):
    """Without a window, journeys that summarize their sessions older than the allowed
    lateness (events that late are left out) give every period's population, visitors
    and activity, and every journey's shape and sessions, as the definition does from the
    events applied; and they summarize."""
    rows = [(v, *r) for v, events in by_visitor.items() for r in events] * copies
    random.Random(seed).shuffle(rows)
    if sorted_by_time:
        rows.sort(key=lambda r: (r[1], r[2]))
    lateness = lateness_hours * HOUR
    stored: dict[int, bytes] = {}
    periods = streamed(rows, chunks, None, lateness_ms=lateness, stored=stored)
    kept = applied(rows, chunks, lateness)
    last = max(r[1] for r in rows) // 24 + 1
    for p in range(last + 1):
        assert dict(periods.population(p).counts) == definition(kept, p, None), p
        assert periods.visitors.get(p, {}) == definition(kept, p, None, visitors=True), p
        assert periods.activity.get(p, np.zeros(5)).tolist() == activity_definition(kept, p), p
    for visitor, value in stored.items():
        journey = JourneyState.from_bytes(value)
        (shape,) = definition([r for r in kept if r[0] == visitor], last, None).keys()
        assert tuple(journey.features(GAP)[:4].astype(int).tolist()) == shape
        assert len(journey.sessions(GAP)) == shape[3]
        assert len(journey.events) + int(summary_shape(journey.summary)[:3].sum()) == sum(shape[:3])


def test_sessions_before_the_lateness_become_summaries():
    day = 24  # hours
    rows = [(1, h, 0, VIEW, 1) for h in (0, 1, 30, 60)] + [(1, 5 * day, 0, VIEW, 2)]
    stored: dict[int, bytes] = {}
    streamed(rows, [1] * len(rows), None, lateness_ms=2 * day * HOUR, stored=stored)
    journey = JourneyState.from_bytes(stored[1])
    # the newest event is on day 5: the cut is the start of day 3, so days 0-2 are summaries
    assert [(s.start // HOUR, s.end // HOUR, s.views) for s in journey.sessions(GAP)] == [
        (0, 0, 1),
        (1, 1, 1),
        (30, 30, 1),
        (60, 60, 1),
        (120, 120, 1),
    ]
    assert journey.summary["start"].tolist() == [0, HOUR, 30 * HOUR, 60 * HOUR]
    assert journey.events["timestamp"].tolist() == [120 * HOUR]


def test_sizes_per_period_place_each_period_population_by_its_shapes():
    periods = PeriodPopulations()
    population = Rows(np.array([[2, 1, 0, 0, 1], [2, 3, 0, 0, 1], [4, 1, 0, 0, 1]]), np.array([2, 1, -1]))
    visitors = Rows(np.array([[2, 1, 0, 0, 1], [3, 3, 0, 0, 1]]), np.array([2, 1]))
    periods.apply(PeriodDelta(population, visitors, Rows.empty(1, len(ACTIVITY_NAMES))))
    span, sizes, of_visitors = periods.sizes(lambda s: (s[:, 0] > 1).astype(np.int64), 2)
    assert list(span) == [2, 3, 4]
    assert sizes.tolist() == [[2, 1], [2, 1], [1, 1]]
    assert of_visitors.tolist() == [[2, 0], [0, 1], [0, 0]]
    assert dict(periods.population(3).counts) == {(1, 0, 0, 1): 2, (3, 0, 0, 1): 1}


def test_a_window_that_cuts_a_session_counts_its_rest_as_a_session():
    rows = [(7, 0, 0, VIEW, 1), (7, 0, 1, VIEW, 2), (7, 36, 0, VIEW, 3)]  # the window cuts 0:00 | 0:01
    periods = streamed(rows, [1, 1], 36 * HOUR)
    assert dict(periods.population(1).counts) == definition(rows, 1, 36 * HOUR) == {(2, 0, 0, 2): 1}
