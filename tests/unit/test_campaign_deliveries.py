"""The fault campaign's judge of webhook deliveries: at least once, in each visitor's
order, one body per idempotency key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.campaign.deliveries import Attempt, judge_deliveries, retried_under_the_same_id


def moves(visitor: int, n: int) -> list[dict]:
    """A visitor's ``n`` changes: an exit then an entry per move, a minute apart."""
    return [
        {"visitorid": visitor, "action": ("exit", "enter")[i % 2], "segment": i, "at": 60_000 * i, "model_version": 1}
        for i in range(n)
    ]


def changes(*batch: dict, id: str = "msg", status: int = 200) -> Attempt:
    return Attempt(id, status, {"type": "changes", "changes": list(batch)})


@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.data())
def test_deliveries_again_from_any_earlier_commit_are_at_least_once_in_order(lengths, data):
    expected = [c for visitor, n in enumerate(lengths) for c in moves(visitor, n)]
    attempts, commit, lost = [], 0, 0
    while commit < len(expected):  # each fetch from the last commit, a few never committed
        end = data.draw(st.integers(commit + 1, len(expected)))
        attempts.append(changes(*expected[commit:end], id=f"msg_{commit}_{end}"))
        if lost < 3 and data.draw(st.booleans()):
            lost += 1
        else:
            commit = end
    assert judge_deliveries(expected, attempts) == []


def test_a_change_missed_out_of_order_invented_or_a_key_reused_is_named():
    a, b, c = moves(7, 3)
    assert judge_deliveries([a, b, c], [changes(a, b)]) == [
        "visitor 7: 1 of its 3 changes never accepted, the first: exit segment 2 at 120000 (model 1)"
    ]
    assert judge_deliveries([a, b, c], [changes(a, c, id="1"), changes(b, c, id="2")]) == [
        "visitor 7: exit segment 2 at 120000 (model 1) accepted before enter segment 1 at 60000 (model 1)"
    ]
    other = {**b, "segment": 5}
    assert judge_deliveries([a], [changes(a, other)]) == [
        "visitor 7: enter segment 5 at 60000 (model 1) accepted, no record makes it"
    ]
    assert judge_deliveries([a, b], [changes(a, id="k"), changes(a, b, id="k")]) == [
        "webhook-id k carried two different bodies"
    ]
    members = Attempt("m", 200, {"type": "members", "visitors": [7]})
    assert judge_deliveries([a], [members, changes(a)]) == ["a members delivery (m), none was due"]


def test_a_failed_attempt_counts_only_once_accepted():
    a, b = moves(7, 2)
    refused = changes(a, b, id="k", status=503)
    assert judge_deliveries([a, b], [refused]) != []
    assert judge_deliveries([a, b], [refused, changes(a, b, id="k")]) == []
    assert retried_under_the_same_id([refused, changes(a, b, id="k"), changes(a, id="j", status=500)]) == (1, 2)
