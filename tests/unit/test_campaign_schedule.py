"""The fault campaign's schedule: a seed gives one schedule, always."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.campaign.schedule import FAULT_KINDS, LASTING, WORKER_FAULTS, draw_schedule


@given(st.integers(0, 2**32), st.integers(0, 20), st.floats(1.0, 600.0), st.integers(1, 5))
def test_a_seed_gives_the_same_schedule_of_faults_in_the_span_in_time_order(seed, faults, span, workers):
    schedule = draw_schedule(seed, faults, span, workers)
    assert schedule == draw_schedule(seed, faults, span, workers)
    assert len(schedule) == faults and [f.at for f in schedule] == sorted(f.at for f in schedule)
    for fault in schedule:
        assert 0.0 <= fault.at <= round(span, 1) and fault.kind in FAULT_KINDS
        assert (0 <= fault.worker < workers) == (fault.kind in WORKER_FAULTS)
        low, high = LASTING.get(fault.kind, (0.0, 0.0))
        assert low <= fault.seconds <= high


def test_seeds_draw_every_kind_of_fault():
    drawn = {f.kind for seed in range(20) for f in draw_schedule(seed, 8, 90.0, 3)}
    assert drawn == set(FAULT_KINDS)
    assert draw_schedule(1, 8, 90.0, 3) != draw_schedule(2, 8, 90.0, 3)
