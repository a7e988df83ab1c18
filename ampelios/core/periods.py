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

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW
from ampelios.core.journeys import JourneyBatch
from ampelios.core.population import Population, Shape

ACTIVITY_NAMES = ("visitors", "buyers", "views", "addtocarts", "transactions")


@dataclass(frozen=True)
class Timeline:
    """Rows of population changes (``periods`` (m,), ``shapes`` (m, 4), ``signs`` (m,)
    of +1/-1) and of activity (``activity_periods`` (a,), ``activity`` (a, 5) in the
    order of ACTIVITY_NAMES)."""

    periods: np.ndarray
    shapes: np.ndarray
    signs: np.ndarray
    activity_periods: np.ndarray
    activity: np.ndarray

    @classmethod
    def empty(cls) -> Timeline:
        none = np.empty(0, dtype=np.int64)
        return cls(none, np.empty((0, 4), dtype=np.int64), none, none, np.empty((0, 5), dtype=np.int64))


def timeline(
    owner: np.ndarray,
    timestamp: np.ndarray,
    event: np.ndarray,
    gap_ms: int,
    window_ms: int | None,
    period_ms: int,
) -> Timeline:
    """The timelines of journeys whose events are rows sorted by (``owner``, ``timestamp``).

    Vectorized: cumulative counts over the rows, one row per (journey, period) group.
    """
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

    last_group = np.ones(len(ends), dtype=bool)
    last_group[:-1] = owner[ends[1:]] != owner[ends[:-1]]
    until = np.full(len(ends), np.iinfo(np.int64).max)  # the period the shape leaves in
    until[~last_group] = p[1:][~last_group[:-1]]
    if window_ms is not None:  # inactive from the first period whose end is D after the event
        inactive = -((-(timestamp[ends] + window_ms)) // period_ms) - 1
        until = np.minimum(until, inactive)
    counted = until > p
    leaves = counted & (until != np.iinfo(np.int64).max)
    periods = np.concatenate([p[counted], until[leaves]])
    signs = np.concatenate([np.ones(int(counted.sum()), dtype=np.int64), -np.ones(int(leaves.sum()), dtype=np.int64)])

    own = cum[ends + 1, :3] - cum[group_start, :3]
    activity = np.column_stack([np.ones(len(ends), dtype=np.int64), own[:, 2] > 0, own]).astype(np.int64)
    return Timeline(periods, np.concatenate([shapes[counted], shapes[leaves]]), signs, p, activity)


def _net(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``keys`` (m, j) made distinct, ``values`` (m, ...) summed; rows whose
    values are all zero dropped. Sorted by key."""
    if len(keys) == 0:
        return keys, values
    order = np.lexsort(keys.T[::-1])
    keys, values = keys[order], values[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    sums = np.add.reduceat(values, np.flatnonzero(first), axis=0)
    keep = sums != 0 if sums.ndim == 1 else (sums != 0).any(axis=1)
    return keys[first][keep], sums[keep]


@dataclass(frozen=True)
class PeriodDelta:
    """Net changes of period populations (``periods`` (m,), ``shapes`` (m, 4),
    ``changes`` (m,)) and of period activity (``activity_periods`` (a,), ``activity``
    (a, 5)): what a batch of events changed."""

    periods: np.ndarray
    shapes: np.ndarray
    changes: np.ndarray
    activity_periods: np.ndarray
    activity: np.ndarray

    @classmethod
    def between(cls, old: Timeline, new: Timeline) -> PeriodDelta:
        """What replacing the timelines ``old`` by ``new`` changes."""
        keys, changes = _net(
            np.column_stack([np.concatenate([old.periods, new.periods]), np.concatenate([old.shapes, new.shapes])]),
            np.concatenate([-old.signs, new.signs]),
        )
        periods, activity = _net(
            np.concatenate([old.activity_periods, new.activity_periods])[:, None],
            np.concatenate([-old.activity, new.activity]),
        )
        return cls(keys[:, 0], keys[:, 1:], changes, periods[:, 0], activity)

    def __len__(self) -> int:
        return len(self.changes) + len(self.activity_periods)

    def to_json(self) -> dict[str, list]:  # type: ignore[type-arg]
        return {
            "periods": np.column_stack([self.periods, self.shapes, self.changes]).tolist(),
            "activity": np.column_stack([self.activity_periods, self.activity]).tolist(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, list]) -> PeriodDelta:  # type: ignore[type-arg]
        rows = np.asarray(obj["periods"], dtype=np.int64).reshape(-1, 6)
        activity = np.asarray(obj["activity"], dtype=np.int64).reshape(-1, 6)
        return cls(rows[:, 0], rows[:, 1:5], rows[:, 5], activity[:, 0], activity[:, 1:])


def batch_delta(batch: JourneyBatch, gap_ms: int, window_ms: int | None, period_ms: int) -> PeriodDelta:
    """What merging a batch of events into its journeys changed in the period populations."""
    old, new = batch.old_rows, batch.rows
    return PeriodDelta.between(
        timeline(batch.old_owner, old["timestamp"], old["event"], gap_ms, window_ms, period_ms),
        timeline(batch.owner, new["timestamp"], new["event"], gap_ms, window_ms, period_ms),
    )


class PeriodPopulations:
    """A source's period populations, as the net changes of each period
    (``changes[p][shape]``), and each period's activity (``activity[p]``, 5 counts)."""

    def __init__(
        self, changes: dict[int, dict[Shape, int]] | None = None, activity: dict[int, np.ndarray] | None = None
    ) -> None:
        self.changes: dict[int, dict[Shape, int]] = changes or {}
        self.activity: dict[int, np.ndarray] = activity or {}

    def apply(self, delta: PeriodDelta) -> tuple[list[tuple[int, Shape, int]], list[int]]:
        """Add a delta; return the (period, shape, new net change) it set and the periods
        whose activity it changed."""
        changed: list[tuple[int, Shape, int]] = []
        for p, v, c, b, s, change in np.column_stack([delta.periods, delta.shapes, delta.changes]).tolist():
            of_period = self.changes.setdefault(p, {})
            shape = (v, c, b, s)
            net = of_period.get(shape, 0) + change
            if net:
                of_period[shape] = net
            else:
                of_period.pop(shape, None)
                if not of_period:
                    del self.changes[p]
            changed.append((p, shape, net))
        for p, row in zip(delta.activity_periods.tolist(), delta.activity):
            self.activity[p] = self.activity.get(p, np.zeros(5, dtype=np.int64)) + row
        return changed, delta.activity_periods.tolist()

    def span(self) -> range:
        """The periods from the first with a change or activity to the last."""
        known = [*self.changes, *self.activity]
        return range(min(known), max(known) + 1) if known else range(0)

    def population(self, period: int) -> Population:
        """The population at the end of ``period``."""
        counts: dict[Shape, int] = {}
        for p in self.span():
            if p > period:
                break
            for shape, change in self.changes.get(p, {}).items():
                counts[shape] = counts.get(shape, 0) + change
        return Population({shape: n for shape, n in counts.items() if n})

    def sizes(self, assign: Callable[[np.ndarray], np.ndarray], k: int) -> tuple[range, np.ndarray]:
        """Visitors per segment at the end of each period of :meth:`span`, (periods, k),
        where ``assign(shapes (m, 4)) -> segment (m,)`` places a shape."""
        span = self.span()
        shapes = sorted({shape for of_period in self.changes.values() for shape in of_period})
        index = {shape: i for i, shape in enumerate(shapes)}
        segment = assign(np.array(shapes, dtype=np.int64).reshape(-1, 4)) if shapes else np.empty(0, dtype=np.int64)
        sizes = np.zeros((len(span), k), dtype=np.int64)
        for row, p in enumerate(span):
            of_period = self.changes.get(p)
            if of_period:
                at = segment[[index[shape] for shape in of_period]]
                sizes[row] = np.bincount(at, weights=list(of_period.values()), minlength=k).astype(np.int64)
        return span, np.cumsum(sizes, axis=0)

    def activity_table(self) -> tuple[range, np.ndarray]:
        """Activity of each period of :meth:`span`, (periods, 5); zeros where none."""
        span = self.span()
        table = np.zeros((len(span), 5), dtype=np.int64)
        for p, row in self.activity.items():
            table[p - span.start] = row
        return span, table
