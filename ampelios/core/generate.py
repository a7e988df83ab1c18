"""Look-alike data: events with the Retailrocket schema and its published marginals.

The Retailrocket data set (2,756,101 events of 1,407,580 visitors) is not
redistributable, so Ampelios generates data that looks like it: about 96.7% views, 2.5%
add-to-carts and 0.8% transactions; about 1.96 events per visitor with a heavy tail (most
visitors have one event, a few have thousands); sessions separated by gaps longer than 20
minutes; a transaction always follows an add-to-cart of the same item by the same
visitor; times in 2015-05-03 .. 2015-09-18, steady from day to day but the last (a
journey that would run past the end starts earlier, rather than being squeezed into the
last days); rows shuffled out of time order. Every (visitor, timestamp, event, item,
transaction) row is distinct, and each visitor's timestamps are distinct. The same
``seed`` gives the same rows.

>>> events = generate_events(10_000, seed=1)
>>> len(events)
10000

A :class:`Scenario` gives the site a life instead: traffic that grows, a weekly rhythm,
one-day spikes, and drops in buying of any factor and length. Traffic moves the days
visitors *arrive* on (a journey's later sessions follow hours to days after), so a day's
visitors follow it closely but not exactly:

>>> grows = Scenario(growth=10.0, weekend=0.5)
>>> days = (generate_events(50_000, seed=1, scenario=grows).timestamp - WINDOW_START_MS) // DAY_MS
>>> bool(np.sum(days >= 119) > 5 * np.sum(days < 20))  # the last 20 days against the first
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW, EventBatch

WINDOW_START_MS = 1_430_611_200_000  # 2015-05-03T00:00:00Z
WINDOW_END_MS = 1_442_620_800_000  # 2015-09-19T00:00:00Z (exclusive)
EVENTS_PER_VISITOR = 1.96
SHARE_ADDTOCART = 0.025
SHARE_TRANSACTION = 0.008
N_ITEMS = 235_061
MAX_EVENTS_PER_VISITOR = 8_000
_MINUTE_MS = 60_000
DAY_MS = 86_400_000
WINDOW_DAYS = (WINDOW_END_MS - WINDOW_START_MS) // DAY_MS  # 139


@dataclass(frozen=True)
class Drop:
    """Visitors who put something in their cart buy ``factor`` times as often from
    ``start`` to ``end`` (Unix ms, end excluded): cart-to-purchase conversion and the
    purchase rate fall by ``factor``, add-to-carts stay (a payment incident)."""

    start: int
    end: int
    factor: float = 0.1


@dataclass(frozen=True)
class Scenario:
    """How a generated site's traffic and buying move over the window.

    - ``growth``: visitors arriving on the last day / on the first (exponential between;
      1: steady);
    - ``weekend``: visitors arriving on a Saturday or a Sunday / on a weekday (1: no rhythm);
    - ``spikes``: (day, factor) pairs: on day ``day`` of the window (0 is 2015-05-03),
      ``factor`` times the visitors arrive (a campaign's one-day burst);
    - ``drops``: :class:`Drop` s.

    The events are ``n_events`` in all whatever the traffic: growth moves them later."""

    growth: float = 1.0
    weekend: float = 1.0
    spikes: tuple[tuple[int, float], ...] = ()
    drops: tuple[Drop, ...] = ()

    @property
    def flat(self) -> bool:
        return self.growth == 1.0 and self.weekend == 1.0 and not self.spikes

    def arrivals(self) -> np.ndarray:
        """Each day's share of the arrivals (sums to 1)."""
        day = np.arange(WINDOW_DAYS)
        weight = self.growth ** (day / max(WINDOW_DAYS - 1, 1))
        weekday = (WINDOW_START_MS // DAY_MS + day + 3) % 7  # 1970-01-01 was a Thursday (3)
        weight = np.where(weekday >= 5, weight * self.weekend, weight)
        for at, factor in self.spikes:
            weight[at] *= factor
        return weight / weight.sum()


def _events_per_visitor(rng: np.random.Generator, n_events: int) -> np.ndarray:
    """Heavy-tailed counts (discrete Pareto, most visitors have one) summing to n_events."""
    n_visitors = max(1, round(n_events / EVENTS_PER_VISITOR))
    # alpha 1.75 puts ~70% of visitors at one event and gives a mean near 1.96.
    u = rng.random(n_visitors)
    counts = np.minimum(np.floor(u ** (-1 / 1.75)), MAX_EVENTS_PER_VISITOR).astype(np.int64)
    # Scale the tail (not the single-event visitors) until the total matches exactly.
    diff = n_events - int(counts.sum())
    if diff > 0:
        extra = rng.choice(n_visitors, size=diff, p=counts / counts.sum())
        counts += np.bincount(extra, minlength=n_visitors)
    while diff < 0:
        multi = np.flatnonzero(counts > 1)
        if len(multi) == 0:  # fewer events than visitors: drop visitors instead
            counts = counts[:n_events]
            break
        take = rng.choice(multi, size=min(-diff, len(multi)), replace=False)
        counts[take] -= 1
        diff = n_events - int(counts.sum())
    return counts


def generate_events(n_events: int, seed: int = 0, source_id: int = 1, scenario: Scenario | None = None) -> EventBatch:
    """``n_events`` look-alike events of one source, rows in shuffled order; steady
    traffic and buying unless a ``scenario`` says how they move."""
    if n_events < 1:
        raise ValueError("n_events must be at least 1")
    scenario = scenario or Scenario()
    rng = np.random.default_rng(seed)
    counts = _events_per_visitor(rng, n_events)
    n_visitors = len(counts)
    visitor = np.repeat(np.arange(n_visitors), counts)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(visitor)) - first[visitor]  # position of the event in its journey

    # Time: each visitor starts somewhere in the window; within a session the next event
    # comes after ~1 minute (always < 20 min); a new session starts after hours to days.
    n = len(visitor)
    new_session = (rank > 0) & (rng.random(n) < 0.12)
    gap = np.where(
        new_session,
        (25 + rng.exponential(2 * 24 * 60, n)) * _MINUTE_MS,
        np.minimum(rng.exponential(1.2, n), 19.0) * _MINUTE_MS + 1,
    ).astype(np.int64)
    gap[rank == 0] = 0
    offset = np.cumsum(gap) - np.repeat(np.cumsum(gap)[first], counts)
    if scenario.flat:
        start = rng.integers(WINDOW_START_MS, WINDOW_END_MS - MAX_EVENTS_PER_VISITOR, n_visitors)
    else:
        arrival_day = rng.choice(WINDOW_DAYS, size=n_visitors, p=scenario.arrivals())
        start = WINDOW_START_MS + arrival_day * DAY_MS + rng.integers(0, DAY_MS - MAX_EVENTS_PER_VISITOR, n_visitors)
    span = np.maximum(offset[first + counts - 1], 1)
    # A journey that would run past the window's end starts earlier instead (one longer
    # than the window is squeezed into it), so that no day gets journeys compressed into
    # it (the last day still gets the end of those journeys); adding the rank keeps each
    # visitor's timestamps distinct.
    window = WINDOW_END_MS - WINDOW_START_MS
    squeeze = np.minimum(1.0, (window - 1 - counts) / span)
    length = (span * squeeze).astype(np.int64) + counts
    start = np.maximum(WINDOW_START_MS, np.minimum(start, WINDOW_END_MS - 1 - length))
    timestamp = start[visitor] + (offset * squeeze[visitor]).astype(np.int64) + rank

    # Purchase propensity: heavy visitors buy more; buyers are rare.
    propensity = rng.beta(0.35, 12.0, n_visitors) * (1 + np.log1p(counts) / 2)
    single = counts[visitor] == 1
    has_next = rank < counts[visitor] - 1
    p_single = SHARE_ADDTOCART / 3
    p_cart = propensity[visitor] * has_next
    p_cart *= (SHARE_ADDTOCART * n - p_single * single.sum()) / max(p_cart.sum(), 1e-12)
    is_cart = rng.random(n) < np.where(single, p_single, p_cart)
    # A transaction is the event right after an add-to-cart, converted with a probability
    # that hits the target share of transactions overall.
    after_cart = np.zeros(n, dtype=bool)
    after_cart[1:] = is_cart[:-1] & (visitor[1:] == visitor[:-1]) & ~is_cart[1:]
    p_buy = min(1.0, SHARE_TRANSACTION * n / max(1, after_cart.sum()))
    for drop in scenario.drops:
        p_buy = np.where((timestamp >= drop.start) & (timestamp < drop.end), p_buy * drop.factor, p_buy)
    is_buy = after_cart & (rng.random(n) < p_buy)
    event = np.full(n, VIEW, dtype=np.uint8)
    event[is_cart] = ADDTOCART
    event[is_buy] = TRANSACTION

    item = (rng.zipf(1.6, n) % N_ITEMS).astype(np.int64)
    item[1:][is_buy[1:]] = item[:-1][is_buy[1:]]  # buy what was put in the cart
    transaction = np.full(n, -1, dtype=np.int64)
    transaction[is_buy] = np.arange(int(is_buy.sum()))

    events = EventBatch.from_columns(np.full(n, source_id), timestamp, visitor, event, item, transaction)
    return events.take(rng.permutation(n))
