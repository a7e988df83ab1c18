"""The population of every event-time period, whatever order or packing the events came in.

A period is ``[p * period_ms, (p + 1) * period_ms)`` of event time (a UTC day by default).
The **population of period p** is every visitor as it stood at the end of the period: its
shape (:mod:`ampelios.core.journeys`) from its events before ``(p + 1) * period_ms``.
With a window of D ms (``AMPELIOS_ACTIVE_DAYS``) a visitor is in it only while its latest
event is after ``(p + 1) * period_ms - D``, with the shape of its events of the D ms up
to that latest event, as :func:`~ampelios.core.journeys.window_shapes` counts them.

A visitor's **timeline** says this per period in few rows: each (visitor, period with
events) group puts the visitor's shape at the end of that period into the population from
that period on, and takes it out at the visitor's next group (or when it goes inactive).
The population of period p is the sum of these changes over periods <= p. A batch that adds
events to journeys changes their timelines by a :class:`PeriodDelta` (new timeline minus
old); deltas commute, so the populations depend only on the set of events, never on how
they were packed into messages or interleaved between partitions.

Each group also counts the period's own **activity**: the visitor was active in it, bought
or not, and its views, add-to-carts and transactions of that period.

>>> import numpy as np
>>> day = 86_400_000
>>> ts = np.array([0, 60_000, 2 * day])  # one visitor: two views on day 0, one on day 2
>>> line = timeline(np.zeros(3, dtype=np.int64), ts, np.zeros(3, dtype=np.uint8), 20 * 60_000, None, day)
>>> periods = PeriodPopulations()
>>> _ = periods.apply(PeriodDelta.between(Timeline.empty(), line))
>>> [(p, dict(periods.population(p).counts)) for p in range(3)]
[(0, {(2, 0, 0, 1): 1}), (1, {(2, 0, 0, 1): 1}), (2, {(3, 0, 0, 2): 1})]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch
from ampelios.core.journeys import JourneyBatch, features_from_shapes, merge_journeys
from ampelios.core.model import SegmentModel
from ampelios.core.population import Population, Shape

ACTIVITY_NAMES = ("visitors", "buyers", "views", "addtocarts", "transactions")


@dataclass(frozen=True)
class Rows:
    """Rows of a table: ``keys`` (m, j) of int64 and ``values`` (m,) or (m, c) of int64.
    In a delta the values are changes; :meth:`net` makes the keys distinct."""

    keys: np.ndarray
    values: np.ndarray

    @classmethod
    def empty(cls, key_columns: int, value_columns: int = 0) -> Rows:
        values = np.empty((0, value_columns) if value_columns else 0, dtype=np.int64)
        return cls(np.empty((0, key_columns), dtype=np.int64), values)

    def __len__(self) -> int:
        return len(self.keys)

    def __add__(self, other: Rows) -> Rows:
        """Both rows, one after the other (not netted)."""
        return Rows(np.concatenate([self.keys, other.keys]), np.concatenate([self.values, other.values]))

    def __sub__(self, other: Rows) -> Rows:
        """``self`` minus ``other``, netted."""
        return Rows(np.concatenate([other.keys, self.keys]), np.concatenate([-other.values, self.values])).net()

    def net(self) -> Rows:
        """Keys made distinct with their values summed; rows whose values are all zero
        dropped; sorted by key."""
        if len(self.keys) == 0:
            return self
        order = np.lexsort(self.keys.T[::-1])
        keys, values = self.keys[order], self.values[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = (keys[1:] != keys[:-1]).any(axis=1)
        sums = np.add.reduceat(values, np.flatnonzero(first), axis=0)
        keep = sums != 0 if sums.ndim == 1 else (sums != 0).any(axis=1)
        return Rows(keys[first][keep], sums[keep])

    def since(self, period: int) -> Rows:
        """The rows whose first key column (the period) is ``period`` or later."""
        kept = self.keys[:, 0] >= period
        return Rows(self.keys[kept], self.values[kept])

    def to_json(self) -> list:  # type: ignore[type-arg]
        return np.column_stack([self.keys, self.values]).tolist()

    @classmethod
    def from_json(cls, rows: list, key_columns: int, value_columns: int = 0) -> Rows:  # type: ignore[type-arg]
        table = np.asarray(rows, dtype=np.int64).reshape(-1, key_columns + max(1, value_columns))
        values = table[:, key_columns:] if value_columns else table[:, key_columns]
        return cls(table[:, :key_columns], values)


@dataclass(frozen=True)
class Timeline:
    """What journeys put in the period tables, each keyed by (period, *shape) or period:

    - ``population``: +1 where a shape enters a period's population, -1 where it leaves;
    - ``visitors``: +1 per visitor with events in a period, at its shape at the period's end;
    - ``activity``: per period, the ACTIVITY_NAMES counts of its own events.
    """

    population: Rows
    visitors: Rows
    activity: Rows

    @classmethod
    def empty(cls) -> Timeline:
        return cls(Rows.empty(5), Rows.empty(5), Rows.empty(1, len(ACTIVITY_NAMES)))


def timeline(
    owner: np.ndarray,
    timestamp: np.ndarray,
    event: np.ndarray,
    gap_ms: int,
    window_ms: int | None,
    period_ms: int,
    summarized: tuple[np.ndarray, np.ndarray] | None = None,
) -> Timeline:
    """The timelines of journeys whose events are rows sorted by (``owner``, ``timestamp``).

    ``summarized`` is, per journey, the shape (n, 4) its summaries count and the time
    (n,) of its last summarized event (-1: none; see :mod:`ampelios.core.journeys`, no
    window). The summaries add their shape to each of the journey's groups, and stand as
    one group of their own in the period of their last event, with no activity: the
    groups of older periods, once summarized, never change again, and this one leaves
    where the journey's first group of events comes, whenever that is.

    Vectorized: cumulative counts over the rows, one row per (journey, period) group.
    """
    events = _event_groups(owner, timestamp, event, gap_ms, window_ms, period_ms, summarized)
    if summarized is None or not (summarized[1] >= 0).any():
        return events
    base, last = summarized
    journeys = np.flatnonzero(last >= 0)
    first = np.full(len(last), np.iinfo(np.int64).max)  # the period of each journey's first event
    if len(owner):
        heads = np.ones(len(owner), dtype=bool)
        heads[1:] = owner[1:] != owner[:-1]
        first[owner[heads]] = timestamp[heads] // period_ms
    p, until, shapes = last[journeys] // period_ms, first[journeys], base[journeys]
    leaves = until != np.iinfo(np.int64).max
    ones = np.ones(len(journeys), dtype=np.int64)
    return Timeline(
        events.population
        + Rows(
            np.column_stack([np.concatenate([p, until[leaves]]), np.concatenate([shapes, shapes[leaves]])]),
            np.concatenate([ones, -ones[leaves]]),
        ),
        events.visitors + Rows(np.column_stack([p, shapes]), ones),
        events.activity,
    )


def _event_groups(
    owner: np.ndarray,
    timestamp: np.ndarray,
    event: np.ndarray,
    gap_ms: int,
    window_ms: int | None,
    period_ms: int,
    summarized: tuple[np.ndarray, np.ndarray] | None,
) -> Timeline:
    """The timelines' (journey, period) groups of events (see :func:`timeline`)."""
    n = len(owner)
    if n == 0:
        return Timeline.empty()
    period = timestamp // period_ms
    new_owner = np.ones(n, dtype=bool)
    new_owner[1:] = owner[1:] != owner[:-1]
    starts_session = new_owner.copy()
    starts_session[1:] |= np.diff(timestamp) > gap_ms
    counts = np.column_stack([event == VIEW, event == ADDTOCART, event == TRANSACTION, starts_session])
    cum = np.vstack([np.zeros((1, 4), dtype=np.int64), np.cumsum(counts, axis=0, dtype=np.int64)])
    first_of_owner = np.maximum.accumulate(np.where(new_owner, np.arange(n), 0))

    group_end = np.ones(n, dtype=bool)  # the last row of each (journey, period)
    group_end[:-1] = new_owner[1:] | (period[1:] != period[:-1])
    ends = np.flatnonzero(group_end)
    group_start = np.concatenate([[0], ends[:-1] + 1])
    p = period[ends]

    if window_ms is None:
        shapes = cum[ends + 1] - cum[first_of_owner[ends]]
    else:  # the events after (latest - window), their first one starting a session
        span = int(timestamp.max() - timestamp.min()) + window_ms + 1
        ordered = (timestamp - timestamp.min()) + owner.astype(np.int64) * span  # increasing
        first = np.searchsorted(ordered, ordered[ends] - window_ms, side="right")
        shapes = cum[ends + 1] - cum[first]
        shapes[:, 3] = cum[ends + 1, 3] - cum[first + 1, 3] + 1
    if summarized is not None:
        shapes = shapes + summarized[0][owner[ends]]

    last_group = np.ones(len(ends), dtype=bool)
    last_group[:-1] = owner[ends[1:]] != owner[ends[:-1]]
    until = np.full(len(ends), np.iinfo(np.int64).max)  # the period the shape leaves in
    until[~last_group] = p[1:][~last_group[:-1]]
    if window_ms is not None:  # inactive from the first period whose end is D after the event
        inactive = -((-(timestamp[ends] + window_ms)) // period_ms) - 1
        until = np.minimum(until, inactive)
    counted = until > p
    leaves = counted & (until != np.iinfo(np.int64).max)
    population = Rows(
        np.column_stack(
            [np.concatenate([p[counted], until[leaves]]), np.concatenate([shapes[counted], shapes[leaves]])]
        ),
        np.concatenate([np.ones(int(counted.sum()), dtype=np.int64), -np.ones(int(leaves.sum()), dtype=np.int64)]),
    )
    own = cum[ends + 1, :3] - cum[group_start, :3]
    activity = np.column_stack([np.ones(len(ends), dtype=np.int64), own[:, 2] > 0, own]).astype(np.int64)
    ones = np.ones(len(ends), dtype=np.int64)
    return Timeline(population, Rows(np.column_stack([p, shapes]), ones), Rows(p[:, None], activity))


@dataclass(frozen=True)
class PeriodDelta:
    """What a batch of events changed in the period tables (see :class:`Timeline`):
    net changes, keys distinct."""

    population: Rows
    visitors: Rows
    activity: Rows

    @classmethod
    def between(cls, old: Timeline, new: Timeline) -> PeriodDelta:
        """What replacing the timelines ``old`` by ``new`` changes."""
        return cls(new.population - old.population, new.visitors - old.visitors, new.activity - old.activity)

    def __len__(self) -> int:
        return len(self.population) + len(self.visitors) + len(self.activity)

    def to_json(self) -> dict[str, list]:  # type: ignore[type-arg]
        return {
            "periods": self.population.to_json(),
            "period_visitors": self.visitors.to_json(),
            "activity": self.activity.to_json(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, list]) -> PeriodDelta:  # type: ignore[type-arg]
        return cls(
            Rows.from_json(obj["periods"], 5),
            Rows.from_json(obj["period_visitors"], 5),
            Rows.from_json(obj["activity"], 1, len(ACTIVITY_NAMES)),
        )


def batch_delta(batch: JourneyBatch, gap_ms: int, window_ms: int | None, period_ms: int) -> PeriodDelta:
    """What merging a batch of events into its journeys changed in the period populations."""
    old, new = batch.old_rows, batch.rows
    return PeriodDelta.between(
        timeline(batch.old_owner, old["timestamp"], old["event"], gap_ms, window_ms, period_ms, batch.old_summarized),
        timeline(batch.owner, new["timestamp"], new["event"], gap_ms, window_ms, period_ms, batch.summarized),
    )


def periods_of(events: EventBatch, gap_ms: int, window_ms: int | None, period_ms: int) -> PeriodPopulations:
    """The period tables of a whole file of events at once: what any replay of it, in any
    packing or order, ends with (for benchmarks and tests)."""
    visitors, owner = np.unique(events.visitorid, return_inverse=True)
    batch = merge_journeys([None] * len(visitors), events, owner, gap_ms, window_ms)
    periods = PeriodPopulations()
    periods.apply(batch_delta(batch, gap_ms, window_ms, period_ms))
    return periods


class PeriodPopulations:
    """A source's period tables: the net changes of each period's population
    (``changes[p][shape]``), the visitors with events in each period by shape
    (``visitors[p][shape]``) and each period's activity (``activity[p]``, 5 counts).

    Once :meth:`fold` ed, the tables start at ``base``: the changes of every earlier
    period are summed into ``base``'s (so every population from ``base`` on is what it
    was) and their visitors and activity are dropped. A delta's rows of periods before
    ``base`` are treated the same way when applied, so folding and applying commute.
    ``origin`` is the first period the tables had before their first fold: alerts count
    their periods from it.

    >>> periods = PeriodPopulations()
    >>> rows = Rows(np.array([[0, 1, 0, 0, 1], [3, 2, 0, 0, 1]]), np.array([1, 1]))
    >>> _ = periods.apply(PeriodDelta(rows, rows, Rows.empty(1, len(ACTIVITY_NAMES))))
    >>> _ = periods.fold(keep=2)  # keep periods 2 and 3
    >>> sorted(periods.changes), sorted(periods.visitors), periods.base, periods.origin
    ([2, 3], [3], 2, 0)
    >>> dict(periods.population(3).counts)
    {(1, 0, 0, 1): 1, (2, 0, 0, 1): 1}
    """

    def __init__(
        self,
        changes: dict[int, dict[Shape, int]] | None = None,
        visitors: dict[int, dict[Shape, int]] | None = None,
        activity: dict[int, np.ndarray] | None = None,
        base: int | None = None,
        origin: int | None = None,
    ) -> None:
        self.changes: dict[int, dict[Shape, int]] = changes or {}
        self.visitors: dict[int, dict[Shape, int]] = visitors or {}
        self.activity: dict[int, np.ndarray] = activity or {}
        self.base = base  # the first period kept apart (None: never folded)
        self.origin = origin  # the first period before the first fold

    def apply(self, delta: PeriodDelta) -> PeriodChanges:
        """Add a delta (its rows before ``base`` folded into it); return what it set, to
        store."""
        population, visitors, activity = delta.population, delta.visitors, delta.activity
        if self.base is not None:
            keys = population.keys.copy()
            keys[:, 0] = np.maximum(keys[:, 0], self.base)
            population = Rows(keys, population.values).net()
            visitors, activity = visitors.since(self.base), activity.since(self.base)
        changes = _add(self.changes, population), _add(self.visitors, visitors)
        return PeriodChanges(*changes, self._add_activity(activity))

    def _add_activity(self, rows: Rows) -> list[int]:
        for (p,), row in zip(rows.keys.tolist(), rows.values):
            self.activity[p] = self.activity.get(p, np.zeros(len(ACTIVITY_NAMES), dtype=np.int64)) + row
        return rows.keys[:, 0].tolist()

    def fold(self, keep: int) -> PeriodChanges | None:
        """Keep the newest ``keep`` periods of :meth:`span` apart and fold the older ones
        into the first of them; what changed, to store (value 0 and periods no longer in
        ``activity``: deleted), or ``None`` when nothing was old enough."""
        span = self.span()
        base = span.stop - keep
        if not span or base <= span.start:
            return None
        if self.origin is None:
            self.origin = span.start
        self.base = base
        population: list[tuple[int, Shape, int]] = []
        folded: dict[Shape, int] = dict(self.changes.get(base, {}))
        for p in sorted(q for q in self.changes if q < base):
            for shape, change in self.changes.pop(p).items():
                folded[shape] = folded.get(shape, 0) + change
                population.append((p, shape, 0))
        self.changes[base] = {shape: n for shape, n in folded.items() if n}
        population += [(base, shape, n) for shape, n in folded.items()]
        if not self.changes[base]:
            del self.changes[base]
        old = sorted(q for q in self.visitors if q < base)
        visitors = [(p, shape, 0) for p in old for shape in self.visitors.pop(p)]
        activity = sorted(q for q in self.activity if q < base)
        for p in activity:
            del self.activity[p]
        return PeriodChanges(population, visitors, activity)

    def span(self) -> range:
        """The periods from the first with events (or ``base``) to the last with events
        (the population of a later period only loses visitors going inactive, until
        events come)."""
        known = list(self.activity) or list(self.changes)
        if not known:
            return range(0)
        first = min(known) if self.base is None else min(self.base, *known)
        return range(first, max(known) + 1)

    @property
    def first(self) -> int:
        """The index, in the source's whole history, of the first period of :meth:`span`."""
        span = self.span()
        return 0 if self.origin is None or not span else span.start - self.origin

    def population(self, period: int) -> Population:
        """The population at the end of ``period``."""
        counts: dict[Shape, int] = {}
        for p in sorted(q for q in self.changes if q <= period):
            for shape, change in self.changes[p].items():
                counts[shape] = counts.get(shape, 0) + change
        return Population({shape: n for shape, n in counts.items() if n})

    def sizes(self, assign: Callable[[np.ndarray], np.ndarray], k: int) -> tuple[range, np.ndarray, np.ndarray]:
        """Per period of :meth:`span`, the population's visitors per segment at its end
        and the segments of its visitors with events, both (periods, k), where
        ``assign(shapes (m, 4)) -> segment (m,)`` places a shape."""
        span = self.span()
        tables = (self.changes, self.visitors)
        shapes = sorted({shape for table in tables for of_period in table.values() for shape in of_period})
        index = {shape: i for i, shape in enumerate(shapes)}
        segment = assign(np.array(shapes, dtype=np.int64).reshape(-1, 4)) if shapes else np.empty(0, dtype=np.int64)
        counts = np.zeros((2, len(span), k), dtype=np.int64)
        for t, table in enumerate(tables):
            for row, p in enumerate(span):
                of_period = table.get(p)
                if of_period:
                    at = segment[[index[shape] for shape in of_period]]
                    counts[t, row] = np.bincount(at, weights=list(of_period.values()), minlength=k).astype(np.int64)
        return span, np.cumsum(counts[0], axis=0), counts[1]

    def activity_table(self) -> tuple[range, np.ndarray]:
        """Activity of each period of :meth:`span`, (periods, 5); zeros where none."""
        span = self.span()
        table = np.zeros((len(span), len(ACTIVITY_NAMES)), dtype=np.int64)
        for p, row in self.activity.items():
            table[p - span.start] = row
        return span, table


@dataclass(frozen=True)
class PeriodChanges:
    """What a delta set: (period, shape, new value) of the population changes and of the
    visitors, and the periods whose activity changed."""

    population: list[tuple[int, Shape, int]]
    visitors: list[tuple[int, Shape, int]]
    activity: list[int]


def _add(table: dict[int, dict[Shape, int]], rows: Rows) -> list[tuple[int, Shape, int]]:
    """Add (period, *shape) -> change rows to ``table``, dropping zeros; the new values."""
    changed: list[tuple[int, Shape, int]] = []
    for (p, v, c, b, s), change in zip(rows.keys.tolist(), rows.values.tolist()):
        of_period = table.setdefault(p, {})
        shape = (v, c, b, s)
        value = of_period.get(shape, 0) + change
        if value:
            of_period[shape] = value
        else:
            of_period.pop(shape, None)
            if not of_period:
                del table[p]
        changed.append((p, shape, value))
    return changed


@dataclass(frozen=True)
class PeriodTables:
    """A source's periods under one model: their starts (ms), population per segment at
    each end (``sizes``), visitors with events per segment (``visitors``) and activity;
    ``first`` is the index of the first of them in the source's whole history (more than
    0 once older periods were folded, see :meth:`PeriodPopulations.fold`)."""

    starts: list[int]
    sizes: np.ndarray
    visitors: np.ndarray
    activity: np.ndarray
    first: int = 0

    @classmethod
    def of(cls, periods: PeriodPopulations, model: SegmentModel, period_ms: int) -> PeriodTables:
        span, sizes, visitors = periods.sizes(lambda shapes: model.assign(features_from_shapes(shapes)), model.k)
        _, activity = periods.activity_table()
        return cls([p * period_ms for p in span], sizes, visitors, activity, periods.first)

    @property
    def closed(self) -> int:
        """The periods before the last one with events (that one is still open)."""
        with_events = np.flatnonzero(self.activity[:, 0])
        return int(with_events[-1]) if len(with_events) else 0
