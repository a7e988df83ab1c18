"""Drift alerts: steps are found where they are, in their direction, and recovered."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.core.drift import (
    MAX_BLOCK,
    SHARE_BURN_IN,
    WARMUP_PERIODS,
    alerts_of,
    block_size,
    count_shifts,
    shifts,
    source_alerts,
)


def stepped(levels: list[tuple[int, float]], visitors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binomial successes per period: ``levels`` of (periods, rate)."""
    rng = np.random.default_rng(seed)
    rates = np.concatenate([np.full(n, rate) for n, rate in levels])
    den = np.full(len(rates), visitors)
    return rng.binomial(den, rates), den


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), at=st.integers(WARMUP_PERIODS + 5, 60), length=st.integers(14, 30))
def test_a_tenfold_drop_is_found_where_it_began_and_recovered_where_it_ended(seed, at, length):
    num, den = stepped([(at, 0.02), (length, 0.002), (40, 0.02)], 5_000, seed)
    alerts = alerts_of("purchase_rate", None, shifts(num, den, binomial=True))
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.shift.direction == "down" and abs(alert.shift.started - at) <= 1
    assert alert.shift.detected - at <= 3 and alert.shift.after < 0.3 * alert.shift.before
    assert alert.recovered is not None and alert.recovered.direction == "up"
    assert abs(alert.recovered.started - (at + length)) <= 1 and alert.recovered.detected - (at + length) <= 3


def test_a_constant_signal_never_shifts_however_small_its_counts():
    for visitors, rate in ((10_000, 0.01), (100, 0.01), (5, 0.5), (0, 0.0)):
        num = np.full(120, round(visitors * rate))
        assert shifts(num, np.full(120, visitors), binomial=True) == []


def test_rare_outcomes_are_judged_in_blocks_of_several_periods():
    den = np.full(60, 100)
    assert block_size(np.full(60, 20), den, binomial=True) == 1
    assert block_size(np.full(60, 1), den, binomial=True) == 10
    assert block_size(np.full(60, 99), den, binomial=True) == 10  # the rarer outcome: not buying
    assert block_size(np.zeros(60), den, binomial=True) == MAX_BLOCK


def test_a_rare_signal_is_judged_on_its_counts_and_a_three_week_tenfold_drop_shows_within_ten_days():
    # about three purchases a day among 100 visitors: a block would span 4 days
    for seed in range(20):
        num, den = stepped([(60, 0.03), (21, 0.003), (60, 0.03)], 100, seed)
        assert block_size(num, den, binomial=True) > 1
        assert shifts(num, den, binomial=True) == count_shifts(num, den)
        alerts = alerts_of("purchase_rate", None, shifts(num, den, binomial=True))
        assert len(alerts) == 1, seed
        drop = alerts[0].shift
        assert drop.direction == "down" and abs(drop.started - 60) <= 4 and drop.detected - 60 <= 10, (seed, drop)
        assert alerts[0].recovered is not None and alerts[0].recovered.direction == "up", seed


def test_steady_rare_signals_raise_nothing():
    for seed in range(20):
        for rate in (0.005, 0.02, 0.05):
            num, den = stepped([(140, rate)], 100, 1000 + seed)
            assert shifts(num, den, binomial=True) == [], (seed, rate)


def test_a_shift_that_goes_on_opens_a_new_alert_and_an_opposite_one_closes_it():
    alerts = alerts_of("conversion", None, shifts(*stepped([(40, 0.2), (30, 0.1), (30, 0.02)], 5_000, 1), True))
    assert [(a.shift.direction, a.recovered) for a in alerts] == [("down", None), ("down", None)]


def test_a_source_s_alerts_name_their_signal_and_segment():
    num, den = stepped([(50, 0.02), (30, 0.002)], 5_000, 2)
    activity = np.column_stack([den, num, den, den // 10, num])  # visitors, buyers, views, carts, buys
    visitors = np.column_stack([den - num, num])  # segment 1: the buyers
    found = {(a.signal, a.segment, a.shift.direction) for a in source_alerts(activity, visitors, closed=80)}
    assert {("purchase_rate", None, "down"), ("conversion", None, "down"), ("share", 1, "down")} <= found
    assert source_alerts(activity, visitors, closed=45) == []  # only the closed periods count


def test_segment_shares_are_not_judged_on_the_first_weeks_of_a_history():
    # Under all-time journeys the first weeks hold few visitors with history (few repeat
    # buyers, say): a share that rises as the history fills is not a change of behaviour.
    num, den = stepped([(SHARE_BURN_IN, 0.005), (100, 0.02)], 5_000, 3)
    activity = np.column_stack([den, num, den, den // 10, num])  # visitors, buyers, views, carts, buys
    visitors = np.column_stack([den - num, num])  # segment 1: the buyers
    found = {(a.signal, a.segment, a.shift.direction, a.shift.started) for a in source_alerts(activity, visitors, 128)}
    assert found == {("purchase_rate", None, "up", SHARE_BURN_IN), ("conversion", None, "up", SHARE_BURN_IN)}


def test_a_history_whose_old_periods_were_folded_names_its_alerts_as_the_whole_one_did():
    # The owner keeps HISTORY_PERIODS apart and folds the older ones: the alerts of what is
    # left keep their ids (counted from the history's first period), and the shares are
    # judged at once (the burn-in was the history's start, long gone).
    num, den = stepped([(90, 0.02), (30, 0.002)], 5_000, 4)
    activity = np.column_stack([den, num, den, den // 10, num])
    visitors = np.column_stack([den - num, num])
    whole = {a.key for a in source_alerts(activity, visitors, closed=120)}
    folded = source_alerts(activity[40:], visitors[40:], closed=80, first=40)
    assert {"purchase_rate::down:90", "share:1:down:90"} <= whole
    assert whole == {a.key for a in folded}
    assert {a.shift.started for a in folded} == {50}  # periods of what is left
