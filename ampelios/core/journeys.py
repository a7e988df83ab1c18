"""Journeys: a visitor's distinct events, their sessions and the six features.

Definitions (the seed's, kept exactly):

- A visitor's events are ordered by timestamp; a new **session** starts when the gap to
  the previous event of that visitor is more than ``gap_ms`` (20 minutes by default).
- The **state** is (views, addtocarts, transactions) over the whole journey.
- The six **features**, in this order: views, addtocarts, transactions, session count,
  views per session (mean over sessions of the session's views), purchase ratio
  (mean buys per session / mean views per session, or mean buys per session when the
  mean views per session is 0).

Streaming equals batch: a journey stores the *distinct* events of the visitor, so the
result depends only on the set of events seen, never on their arrival order or on how
often one was delivered. Two events are the same event when visitor, timestamp, event
name, itemid and transactionid are all equal.

The six features depend only on four counts, the journey's **shape**: (views, addtocarts,
transactions, sessions). Many visitors share a shape, which is what lets the segment model
hold the whole population exactly (:mod:`ampelios.core.population`).

A journey is stored as bytes: a 1-byte format version, a 1-byte set of flags (1: active)
and its events as packed little-endian records sorted by (timestamp, event, itemid,
transactionid).

**Summaries.** Without a window, a journey may keep its older sessions as **summaries**
(:data:`SESSION`: first and last event time, views, addtocarts, transactions) instead of
their events (:meth:`JourneyBatch.summarize`, ``AMPELIOS_LATENESS_DAYS``): its shape is
the summaries' counts plus those of its events. A summary is cut at an event-time
boundary that no later event can precede (events older than the allowed lateness are not
applied) and more than ``gap_ms`` after the last summarized event, so its sessions are
whole, a later event starts a session of its own and can never be one already counted.
Then the value has flag 8, a little-endian u32 count and the summaries after its header.

>>> import numpy as np
>>> sessions = sessionize(np.array([0, 60_000, 3_600_000]), np.array([0, 1, 0]), 20 * 60_000)
>>> [(s.views, s.addtocarts) for s in sessions]
[(1, 1), (1, 0)]
>>> features_of(sessions).tolist()
[2.0, 1.0, 0.0, 2.0, 1.0, 0.0]
>>> features_from_shapes(np.array([[2, 1, 0, 2]])).tolist()
[[2.0, 1.0, 0.0, 2.0, 1.0, 0.0]]
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch

FEATURE_NAMES = (
    "views",
    "addtocarts",
    "transactions",
    "sessions",
    "views_per_session",
    "purchase_ratio",
)
N_FEATURES = len(FEATURE_NAMES)
SHAPE_NAMES = FEATURE_NAMES[:4]

JOURNEY_EVENT = np.dtype([("timestamp", "<i8"), ("event", "u1"), ("itemid", "<i8"), ("transactionid", "<i8")])
_FORMAT = 2
_HEADER = struct.Struct("<BB")  # format version, flags
_ACTIVE = 1  # flag: the journey counts in the population
CHUNKED = 2  # flag (second byte of a value): the head of a journey stored in chunks
MERGED = 4  # flag: no journey, but a link: the visitor's events belong to the visitor it names
SUMMARIZED = 8  # flag: summaries of older sessions come before the events
SESSION = np.dtype([("start", "<i8"), ("end", "<i8"), ("views", "<i4"), ("addtocarts", "<i4"), ("transactions", "<i4")])
NO_SESSIONS = np.empty(0, dtype=SESSION)
_COUNT = struct.Struct("<I")
_TARGET = struct.Struct("<q")
_CHUNK_HEAD = struct.Struct("<BBI")  # format version, flags, number of chunks
CHUNK_EVENTS = 65_536  # events per stored chunk of a long journey (1.6 MB)


@dataclass(frozen=True)
class Session:
    """One session: first and last event time (ms) and its state vector."""

    start: int
    end: int
    views: int
    addtocarts: int
    transactions: int

    def to_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "state": [self.views, self.addtocarts, self.transactions],
        }


def sessionize(timestamps: np.ndarray, events: np.ndarray, gap_ms: int) -> list[Session]:
    """Split one visitor's events (sorted by timestamp) into sessions at gaps > gap_ms."""
    if len(timestamps) == 0:
        return []
    cuts = np.flatnonzero(np.diff(timestamps) > gap_ms) + 1
    bounds = [0, *cuts.tolist(), len(timestamps)]
    return [
        Session(
            start=int(timestamps[a]),
            end=int(timestamps[b - 1]),
            views=int(np.count_nonzero(events[a:b] == VIEW)),
            addtocarts=int(np.count_nonzero(events[a:b] == ADDTOCART)),
            transactions=int(np.count_nonzero(events[a:b] == TRANSACTION)),
        )
        for a, b in pairwise(bounds)
    ]


def features_of(sessions: Sequence[Session]) -> np.ndarray:
    """The six features of one journey, written the way the module docstring defines them."""
    if not sessions:
        return np.zeros(N_FEATURES)
    views = sum(s.views for s in sessions)
    carts = sum(s.addtocarts for s in sessions)
    buys = sum(s.transactions for s in sessions)
    n = len(sessions)
    views_per_session = float(np.mean([s.views for s in sessions]))
    buys_per_session = float(np.mean([s.transactions for s in sessions]))
    ratio = buys_per_session / views_per_session if views_per_session else buys_per_session
    return np.array([views, carts, buys, n, views_per_session, ratio], dtype=np.float64)


def features_from_shapes(shapes: np.ndarray) -> np.ndarray:
    """The six features of journeys given their shapes (n, 4), shape (n, 6).

    Mean views per session is views / sessions and the purchase ratio (mean buys per
    session / mean views per session) is buys / views, or buys / sessions without views.
    Shapes without sessions (no events) get all-zero features.
    """
    views, carts, buys, sessions = (shapes[:, i].astype(np.float64) for i in range(4))
    per_session = np.maximum(sessions, 1.0)
    ratio = np.where(views > 0, buys / np.maximum(views, 1.0), buys / per_session)
    return np.column_stack([views, carts, buys, sessions, views / per_session, ratio])


def batch_shapes(owner: np.ndarray, timestamp: np.ndarray, event: np.ndarray, n: int, gap_ms: int) -> np.ndarray:
    """The shapes (views, addtocarts, transactions, sessions) of ``n`` journeys, (n, 4).

    Rows must be sorted by (owner, timestamp); ``owner`` is the journey index of each
    row. Equal to the counts of :func:`sessionize` for every journey, vectorized.
    """
    starts_session = np.ones(len(owner), dtype=bool)
    if len(owner) > 1:
        starts_session[1:] = (owner[1:] != owner[:-1]) | (np.diff(timestamp) > gap_ms)
    return np.column_stack(
        [
            np.bincount(owner, weights=event == VIEW, minlength=n),
            np.bincount(owner, weights=event == ADDTOCART, minlength=n),
            np.bincount(owner, weights=event == TRANSACTION, minlength=n),
            np.bincount(owner[starts_session], minlength=n),
        ]
    ).astype(np.int64)


def window_shapes(
    owner: np.ndarray, timestamp: np.ndarray, event: np.ndarray, n: int, gap_ms: int, window_ms: int | None
) -> np.ndarray:
    """Like :func:`batch_shapes`, counting only each journey's events of the ``window_ms``
    up to its own latest event (all of them when ``window_ms`` is ``None``)."""
    if window_ms is None or len(owner) == 0:
        return batch_shapes(owner, timestamp, event, n, gap_ms)
    ends = np.cumsum(np.bincount(owner, minlength=n)) - 1
    last = timestamp[np.maximum(ends, 0)]
    keep = timestamp > last[owner] - window_ms
    return batch_shapes(owner[keep], timestamp[keep], event[keep], n, gap_ms)


def summarized(summaries: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per journey, the shape (n, 4) its ``summaries`` count and the time (n,) of its
    last summarized event (-1: none)."""
    shapes, last = np.zeros((len(summaries), 4), dtype=np.int64), np.full(len(summaries), -1, dtype=np.int64)
    for i in [i for i, s in enumerate(summaries) if len(s)]:  # rare: journeys without a window, long kept
        shapes[i], last[i] = summary_shape(summaries[i]), int(summaries[i]["end"][-1])
    return shapes, last


def summary_shape(summary: np.ndarray) -> np.ndarray:
    """The shape (views, addtocarts, transactions, sessions) that summaries count."""
    return np.array(
        [summary["views"].sum(), summary["addtocarts"].sum(), summary["transactions"].sum(), len(summary)],
        dtype=np.int64,
    )


def _encode(active: bool, summary: np.ndarray, events: bytes) -> bytes:
    """A journey's value: header, summaries if any, events."""
    if not len(summary):
        return _HEADER.pack(_FORMAT, _ACTIVE if active else 0) + events
    flags = (_ACTIVE if active else 0) | SUMMARIZED
    return _HEADER.pack(_FORMAT, flags) + _COUNT.pack(len(summary)) + summary.tobytes() + events


@dataclass(frozen=True)
class JourneyState:
    """One visitor's stored journey: its distinct events, whether it is active (in the
    population the segments are fitted on; see ``AMPELIOS_ACTIVE_DAYS``) and the
    summaries of its older sessions, all before its events (see the module docstring)."""

    events: np.ndarray  # JOURNEY_EVENT records, sorted
    active: bool = True
    summary: np.ndarray = field(default_factory=lambda: NO_SESSIONS)  # SESSION records, in time order

    @classmethod
    def from_bytes(cls, value: bytes) -> JourneyState:
        """A whole journey's value (a chunked one joined by :func:`join_journey`).

        >>> summary = np.array([(0, 60_000, 2, 1, 0)], dtype=SESSION)
        >>> journey = JourneyState.from_bytes(JourneyState(np.zeros(1, JOURNEY_EVENT), True, summary).to_bytes())
        >>> len(journey.events), journey.summary.tolist(), journey.features(20 * 60_000)[:4].tolist()
        (1, [(0, 60000, 2, 1, 0)], [3.0, 1.0, 0.0, 2.0])
        """
        version, flags = _HEADER.unpack_from(value)
        if version != _FORMAT or flags & CHUNKED:
            raise ValueError(f"not a whole journey (format {version}, flags {flags})")
        offset, summary = _HEADER.size, NO_SESSIONS
        if flags & SUMMARIZED:
            (n,) = _COUNT.unpack_from(value, offset)
            summary = np.frombuffer(value, dtype=SESSION, count=n, offset=offset + _COUNT.size)
            offset += _COUNT.size + n * SESSION.itemsize
        return cls(np.frombuffer(value, dtype=JOURNEY_EVENT, offset=offset), bool(flags & _ACTIVE), summary)

    def to_bytes(self) -> bytes:
        return _encode(self.active, self.summary, self.events.tobytes())

    def sessions(self, gap_ms: int) -> list[Session]:
        """Every session, the summarized ones first."""
        summarized = [Session(*(int(x) for x in row)) for row in self.summary.tolist()]
        return summarized + sessionize(self.events["timestamp"], self.events["event"], gap_ms)

    def features(self, gap_ms: int, window_ms: int | None = None) -> np.ndarray:
        """The six features (of the events within ``window_ms`` of the latest, if given)."""
        ts, ev = self.events["timestamp"], self.events["event"]
        shape = window_shapes(np.zeros(len(ts), dtype=np.int64), ts, ev, 1, gap_ms, window_ms)
        return features_from_shapes(shape + summary_shape(self.summary))[0]


def merged_value(target: int) -> bytes:
    """What a visitor merged into visitor ``target`` stores instead of a journey.

    >>> merged_into(merged_value(42)), merged_into(JourneyState(np.zeros(1, dtype=JOURNEY_EVENT)).to_bytes())
    (42, None)
    """
    return _HEADER.pack(_FORMAT, MERGED) + _TARGET.pack(target)


def merged_into(value: bytes) -> int | None:
    """The visitor a stored value says its events belong to (``None``: a journey)."""
    return _TARGET.unpack_from(value, _HEADER.size)[0] if value[1] & MERGED else None


def stored_features(
    values: Sequence[bytes], gap_ms: int, window_ms: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The six features (n, 6) and active flags (n,) of ``n`` whole stored journeys, as
    :meth:`JourneyState.features` gives them one by one; vectorized (one join, the
    headers dropped by a mask, one decode), for reading many journeys at once.

    >>> one = JourneyState(np.zeros(2, dtype=JOURNEY_EVENT)).to_bytes()
    >>> features, active = stored_features([one, one], 20 * 60_000)
    >>> features[0].tolist(), active.tolist()
    ([2.0, 0.0, 0.0, 1.0, 2.0, 0.0], [True, True])
    """
    n = len(values)
    joined = np.frombuffer(b"".join(values), dtype=np.uint8)  # header, events, header, events, ...
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    starts = np.cumsum(lengths) - lengths
    version, flags = joined[starts], joined[starts + 1]
    if n and ((version != _FORMAT).any() or (flags & CHUNKED).any()):
        raise ValueError("not whole journeys of this format")
    if (flags & SUMMARIZED).any():  # rare: one by one
        journeys = [JourneyState.from_bytes(v) for v in values]
        features = np.array([j.features(gap_ms, window_ms) for j in journeys]).reshape(n, N_FEATURES)
        return features, np.array([j.active for j in journeys], dtype=bool)
    body = np.ones(len(joined), dtype=bool)
    body[starts], body[starts + 1] = False, False
    events = joined[body].view(JOURNEY_EVENT)
    owner = np.repeat(np.arange(n), (lengths - _HEADER.size) // JOURNEY_EVENT.itemsize)
    shapes = window_shapes(owner, events["timestamp"], events["event"], n, gap_ms, window_ms)
    return features_from_shapes(shapes), (flags & _ACTIVE).astype(bool)


@dataclass(frozen=True)
class JourneyBatch:
    """The journeys touched by one batch of events, before and after the batch.

    Journey ``i`` is the i-th visitor passed to :func:`merge_journeys`; its merged events
    are ``rows[starts[i]:starts[i + 1]]`` and its summaries ``summaries[i]``. A journey
    counts in the population while it is active; ``old_shapes`` are what it counted as
    before (zeros for new visitors).
    """

    rows: np.ndarray  # JOURNEY_EVENT, grouped by journey, sorted within
    starts: np.ndarray  # (n + 1,) row offsets
    existed: np.ndarray  # (n,) bool: the visitor had a journey before the batch
    was_active: np.ndarray  # (n,) bool: it counted in the population before the batch
    active: np.ndarray  # (n,) bool: it counts after the batch
    old_shapes: np.ndarray  # (n, 4)
    new_shapes: np.ndarray  # (n, 4)
    added: np.ndarray  # (n,) distinct events the batch added to each journey
    old_last_event: np.ndarray  # (n,) time (ms) of the latest event before the batch, -1 if none
    old_rows: np.ndarray  # JOURNEY_EVENT before the batch, grouped by journey, sorted within
    old_owner: np.ndarray  # (len(old_rows),) the journey of each of them
    summaries: list[np.ndarray]  # (n,) each journey's SESSION summaries after the batch
    old_summarized: tuple[np.ndarray, np.ndarray]  # (:func:`summarized`) before the batch
    summarized: tuple[np.ndarray, np.ndarray]  # ... and after it (none for a journey that left)

    @property
    def owner(self) -> np.ndarray:
        """The journey of each of ``rows``."""
        return np.repeat(np.arange(len(self)), np.diff(self.starts))

    def __len__(self) -> int:
        return len(self.existed)

    @property
    def last_event(self) -> np.ndarray:
        """Time (ms) of each journey's latest event after the batch (-1: none left)."""
        return _last_events(self.rows, self.starts, self.summaries)

    @property
    def changed(self) -> np.ndarray:
        """Journeys whose events or activity changed (the others only saw duplicates)."""
        return (self.added > 0) | (self.was_active != self.active)

    def first_kept(self, keep_ms: int | None) -> np.ndarray:
        """The first row of each journey that is kept when only the events of the
        ``keep_ms`` up to its latest are (all of them when ``None``)."""
        if keep_ms is None or not len(self.rows):
            return self.starts[:-1]
        owner = self.owner
        dropped = self.rows["timestamp"] <= (self.last_event - keep_ms)[owner]  # a prefix of each journey
        return self.starts[:-1] + np.bincount(owner[dropped], minlength=len(self))

    def summarize(self, cut_ms: int, gap_ms: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """The first row each journey keeps and its summaries when its events before
        ``cut_ms`` become summaries of their sessions (see the module docstring): only
        when none of its events falls in the ``gap_ms`` before the cut (its sessions end
        before it).

        >>> rows = np.zeros(3, dtype=JOURNEY_EVENT)
        >>> rows["timestamp"] = [0, 60_000, 7_200_000]
        >>> batch = merge_journeys([None], EventBatch.from_columns([1] * 3, rows["timestamp"], [5] * 3, [0] * 3,
        ...                                                         [1, 2, 3], [-1] * 3), np.zeros(3, int), 1_200_000)
        >>> first, summaries = batch.summarize(3_600_000, 1_200_000)
        >>> first.tolist(), summaries[0].tolist()
        ([2], [(0, 60000, 2, 0, 0)])
        """
        n, rows, owner = len(self), self.rows, self.owner
        ts = rows["timestamp"]
        before = ts < cut_ms  # a prefix of each journey
        taken = np.bincount(owner[before], minlength=n)
        blocked = np.bincount(owner[before & (ts >= cut_ms - gap_ms)], minlength=n) > 0
        taken[blocked] = 0
        first = self.starts[:-1] + taken
        if not taken.any():
            return first, self.summaries
        at = np.flatnonzero(before & (taken > 0)[owner])
        o, t, e = owner[at], ts[at], rows["event"][at]
        new = np.ones(len(at), dtype=bool)
        new[1:] = (o[1:] != o[:-1]) | (np.diff(t) > gap_ms)
        heads = np.flatnonzero(new)
        sessions = np.empty(len(heads), dtype=SESSION)
        sessions["start"], sessions["end"] = t[heads], t[np.append(heads[1:], len(at)) - 1]
        for name, code in (("views", VIEW), ("addtocarts", ADDTOCART), ("transactions", TRANSACTION)):
            sessions[name] = np.add.reduceat((e == code).astype(np.int32), heads)
        bounds = np.searchsorted(o[heads], np.arange(n + 1))
        summaries = [
            np.concatenate([s, sessions[a:b]]) if b > a else s
            for s, a, b in zip(self.summaries, bounds[:-1].tolist(), bounds[1:].tolist())
        ]
        return first, summaries

    def encode(
        self, indices: np.ndarray, first: np.ndarray | None = None, summaries: list[np.ndarray] | None = None
    ) -> list[bytes]:
        """The stored value of journeys ``indices`` after the batch (from row ``first[i]``
        of each, as :meth:`first_kept` or :meth:`summarize` gives them, with ``summaries``;
        all rows and the batch's summaries when ``None``)."""
        starts = (self.starts[:-1] if first is None else first)[indices].tolist()
        ends = self.starts[indices + 1].tolist()
        rows = self.rows
        summaries = self.summaries if summaries is None else summaries
        return [
            _encode(a, summaries[i], rows[b:c].tobytes())
            for i, a, b, c in zip(indices.tolist(), self.active[indices].tolist(), starts, ends)
        ]


def _last_events(rows: np.ndarray, starts: np.ndarray, summaries: Sequence[np.ndarray]) -> np.ndarray:
    """The time of the last event of each journey: of ``rows[starts[i]:starts[i + 1]]``,
    else of its ``summaries[i]`` (-1: none)."""
    ends = starts[1:] - 1
    last = np.full(len(ends), -1, dtype=np.int64)
    if len(rows):
        last = np.where(ends >= starts[:-1], rows["timestamp"][np.maximum(ends, 0)], -1)
    for i in [i for i, s in enumerate(summaries) if len(s)]:  # rare, and only when no row is kept
        last[i] = max(last[i], int(summaries[i]["end"][-1]))
    return last


def merge_journeys(
    old: Sequence[bytes | None],
    events: EventBatch,
    owner: np.ndarray,
    gap_ms: int,
    window_ms: int | None = None,
    active_after: int | None = None,
    leaving: np.ndarray | None = None,
) -> JourneyBatch:
    """Merge a batch of events into the journeys of their visitors.

    ``old[i]`` is the stored journey of visitor ``i`` (``None`` if new) and ``owner[j]``
    the visitor index of event ``j``. Events already in a journey, or repeated within
    the batch, are dropped. Shapes count the events of ``window_ms`` up to each journey's
    latest event (all when ``None``), and its summaries; a journey is active when its
    latest event is after ``active_after`` (always when ``None``). A journey of
    ``leaving`` (a mask) gives up its events (they move to another visitor's) and its
    summaries: it ends empty and inactive. Vectorized: one sort, no per-event Python.
    """
    n = len(old)
    old_states = [JourneyState.from_bytes(v) if v is not None else None for v in old]
    existed = np.fromiter((s is not None for s in old_states), dtype=bool, count=n)
    was_active = np.fromiter((s is not None and s.active for s in old_states), dtype=bool, count=n)
    old_counts = np.fromiter((len(s.events) if s is not None else 0 for s in old_states), np.int64, n)
    old_rows = (
        np.concatenate([s.events for s in old_states if s is not None])
        if existed.any()
        else np.empty(0, dtype=JOURNEY_EVENT)
    )
    stored = [s.summary if s is not None else NO_SESSIONS for s in old_states]
    summaries = stored
    if leaving is not None:
        summaries = [NO_SESSIONS if gone else s for s, gone in zip(stored, leaving.tolist())]
    old_summarized, new_summarized = summarized(stored), summarized(summaries)
    old_base, base = old_summarized[0], new_summarized[0]
    old_owner = np.repeat(np.arange(n), old_counts)
    old_starts = np.concatenate([[0], np.cumsum(old_counts)])
    old_last_event = _last_events(old_rows, old_starts, stored)
    old_shapes = window_shapes(old_owner, old_rows["timestamp"], old_rows["event"], n, gap_ms, window_ms) + old_base

    new_rows = np.empty(len(events), dtype=JOURNEY_EVENT)
    new_rows["timestamp"] = events.timestamp
    new_rows["event"] = events.event
    new_rows["itemid"] = events.itemid
    new_rows["transactionid"] = events.transactionid
    kept = np.ones(len(old_rows), dtype=bool) if leaving is None else ~leaving[old_owner]
    rows = np.concatenate([old_rows[kept], new_rows])
    row_owner = np.concatenate([old_owner[kept], np.asarray(owner, dtype=np.int64)])
    order = np.lexsort((rows["transactionid"], rows["itemid"], rows["event"], rows["timestamp"], row_owner))
    rows, row_owner = rows[order], row_owner[order]
    distinct = np.ones(len(rows), dtype=bool)
    if len(rows) > 1:
        distinct[1:] = (row_owner[1:] != row_owner[:-1]) | (rows[1:] != rows[:-1])
    rows, row_owner = rows[distinct], row_owner[distinct]

    counts = np.bincount(row_owner, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    last_event = _last_events(rows, starts, summaries)
    return JourneyBatch(
        rows=rows,
        starts=starts,
        existed=existed,
        was_active=was_active,
        active=((counts > 0) | base.any(axis=1)) if active_after is None else last_event > active_after,
        old_shapes=old_shapes,
        new_shapes=window_shapes(row_owner, rows["timestamp"], rows["event"], n, gap_ms, window_ms) + base,
        added=counts - old_counts,
        old_last_event=old_last_event,
        old_rows=old_rows,
        old_owner=old_owner,
        summaries=summaries,
        old_summarized=old_summarized,
        summarized=new_summarized,
    )


# Long journeys in chunks. A journey's value grows with its events (25 bytes each); one
# visitor with a million events would be a 25 MB value, more than a changelog record
# may hold, rewritten whole by every batch. Past CHUNK_EVENTS events a journey is stored
# as a head under the visitor's key (flags, number of chunks) and chunks of CHUNK_EVENTS
# events under ``chunk_key(key, i)``; a batch rewrites only the chunks it changed (events
# arriving in time order change the last one). Everything else sees whole values.


def chunk_key(key: bytes, i: int) -> bytes:
    """The key of chunk ``i`` of the journey stored under ``key``."""
    return b"%s#%d" % (key, i)


def chunk_count(value: bytes) -> int:
    """The number of chunks a stored value is the head of (0: a whole journey)."""
    return _CHUNK_HEAD.unpack_from(value)[2] if value[1] & CHUNKED else 0


def join_journey(head: bytes, chunks: Sequence[bytes]) -> bytes:
    """The whole journey from its head and its chunks, in order."""
    return _HEADER.pack(head[0], head[1] & ~CHUNKED) + b"".join(chunks)


def store_journey(old: bytes | None, new: bytes, chunk_events: int = CHUNK_EVENTS) -> list[tuple[int, bytes | None]]:
    """What to store when a journey's whole value goes from ``old`` to ``new``:
    ``(-1, value)`` for the visitor's key, ``(i, chunk)`` for each chunk that is not
    already stored as it is and ``(i, None)`` for each chunk of ``old`` that ``new``,
    shorter (its oldest events dropped), no longer has.

    >>> whole = bytes([2, 1]) + bytes(3 * JOURNEY_EVENT.itemsize)  # three events
    >>> [i for i, _ in store_journey(None, whole, chunk_events=2)]
    [-1, 0, 1]
    >>> [i for i, _ in store_journey(whole, whole, chunk_events=2)]  # nothing changed
    [-1]
    """
    size = JOURNEY_EVENT.itemsize * chunk_events
    body = memoryview(new)[_HEADER.size :]
    chunked_before = old is not None and len(old) - _HEADER.size > size
    before = memoryview(old)[_HEADER.size :] if chunked_before else memoryview(b"")
    n_before = -(-len(before) // size)
    if len(body) <= size:
        return [(-1, new), *((i, None) for i in range(n_before))]
    n = -(-len(body) // size)
    stored: list[tuple[int, bytes | None]] = [(-1, _CHUNK_HEAD.pack(new[0], new[1] | CHUNKED, n))]
    for i in range(n):
        piece = body[i * size : (i + 1) * size]
        if before[i * size : (i + 1) * size] != piece:
            stored.append((i, bytes(piece)))
    return stored + [(i, None) for i in range(n, n_before)]
