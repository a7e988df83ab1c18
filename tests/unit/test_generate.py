"""Generated sites with a life: growth, weekly rhythm, spikes and drops do what they say."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW
from ampelios.core.generate import DAY_MS, WINDOW_DAYS, WINDOW_START_MS, Drop, Scenario, generate_events

JULY = WINDOW_START_MS + 59 * DAY_MS  # 2015-07-01


def daily(events, kind: int | None = None) -> np.ndarray:
    chosen = events.timestamp if kind is None else events.timestamp[events.event == kind]
    return np.bincount((chosen - WINDOW_START_MS) // DAY_MS, minlength=WINDOW_DAYS)


@given(
    st.floats(0.1, 20.0),
    st.floats(0.2, 1.0),
    st.lists(st.tuples(st.integers(0, WINDOW_DAYS - 1), st.floats(1.0, 10.0)), max_size=3),
)
def test_arrivals_are_shares_of_days_that_grow_dip_on_weekends_and_spike(growth, weekend, spikes):
    scenario = Scenario(growth=growth, weekend=weekend, spikes=tuple(spikes))
    share = scenario.arrivals()
    assert share.shape == (WINDOW_DAYS,) and np.isclose(share.sum(), 1.0) and (share > 0).all()
    plain = Scenario(growth=growth).arrivals()
    ratio = plain[-1] / plain[0]
    assert np.isclose(ratio, growth)
    saturday, sunday, monday = 6, 7, 8  # 2015-05-03 (day 0) was a Sunday
    bare = Scenario(growth=growth, weekend=weekend).arrivals()
    assert np.isclose(bare[saturday] / bare[monday], weekend * growth ** (-2 / (WINDOW_DAYS - 1)))
    assert np.isclose(bare[sunday] / bare[monday], weekend * growth ** (-1 / (WINDOW_DAYS - 1)))
    for day, factor in spikes:
        if sum(d == day for d, _ in spikes) == 1:  # the day's share against the days with none
            assert np.isclose((share / bare)[day] / np.median(share / bare), factor)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**16))
def test_a_site_that_grows_tenfold_with_quiet_weekends_has_them_in_its_days(seed):
    events = generate_events(60_000, seed=seed, scenario=Scenario(growth=10.0, weekend=0.5))
    assert len(events) == 60_000
    days = daily(events)
    first, last = days[7:35].sum(), days[-35:-7].sum()  # four weeks each, away from the edges
    grown = 10.0 ** ((WINDOW_DAYS - 42) / (WINDOW_DAYS - 1))  # between their middles: about 5
    assert 0.7 * grown < last / first < 1.3 * grown
    weekday = (WINDOW_START_MS // DAY_MS + np.arange(WINDOW_DAYS) + 3) % 7
    quiet, busy = days[7:-7][weekday[7:-7] >= 5].sum() / 2, days[7:-7][weekday[7:-7] < 5].sum() / 5
    assert 0.4 < quiet / busy < 0.8  # later sessions of weekday arrivals fall on weekends too


def test_a_spike_brings_that_many_more_visitors_that_day():
    events = generate_events(100_000, seed=2, scenario=Scenario(spikes=((50, 5.0),)))
    days = daily(events)
    assert 3.5 < days[50] / np.median(days[10:-10]) < 6.0


@given(st.floats(0.05, 0.8))
@settings(max_examples=5, deadline=None)
def test_a_drop_lowers_conversion_by_its_factor_in_its_days_only(factor):
    drop = Drop(JULY, JULY + 21 * DAY_MS, factor)
    events = generate_events(300_000, seed=4, scenario=Scenario(drops=(drop,)))
    carts, buys = daily(events, ADDTOCART), daily(events, TRANSACTION)
    inside, outside = slice(60, 79), np.r_[10:55, 85:130]
    before = buys[outside].sum() / carts[outside].sum()
    assert 0.5 * factor < buys[inside].sum() / carts[inside].sum() / before < 1.5 * factor + 0.05
    assert daily(events, VIEW)[inside].mean() > 0.8 * daily(events, VIEW)[outside].mean()  # traffic stays


def test_a_steady_scenario_gives_the_rows_of_none():
    plain, steady = generate_events(5_000, seed=9), generate_events(5_000, seed=9, scenario=Scenario())
    assert np.array_equal(plain.timestamp, steady.timestamp) and np.array_equal(plain.event, steady.event)
