"""What a webhook receiver must have got, judged against the ``segment-changes`` records
of the same run: pure, so that the judge itself is tested (tests/unit).

>>> change = {"visitorid": 7, "action": "enter", "segment": 2, "at": 1, "model_version": 3}
>>> body = {"type": "changes", "changes": [change]}
>>> judge_deliveries([change], [Attempt("msg_1", 503, body), Attempt("msg_1", 200, body)])
[]
>>> judge_deliveries([change], [Attempt("msg_1", 503, body)])
['visitor 7: 1 of its 1 changes never accepted, the first: enter segment 2 at 1 (model 3)']
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

Change = tuple[int, str, int, int, int]  # visitorid, action, segment, at, model_version


@dataclass(frozen=True)
class Attempt:
    """One request a receiver got: its ``webhook-id``, the status it answered, the body."""

    id: str
    status: int
    body: dict[str, Any]


def identity(change: dict[str, Any]) -> Change:
    return (change["visitorid"], change["action"], change["segment"], change["at"], change["model_version"])


def _shown(change: Change) -> str:
    _, action, segment, at, version = change
    return f"{action} segment {segment} at {at} (model {version})"


def judge_deliveries(expected: list[dict[str, Any]], attempts: list[Attempt]) -> list[str]:
    """What is wrong with ``attempts`` (in arrival order) as deliveries of ``expected``
    (the changes the topic's records make, in each partition's order), at least once:

    - every expected change is in a body the receiver accepted (2xx);
    - nothing else is: no change the records do not make, no ``members`` delivery (the
      subscription began before any event);
    - a visitor's changes in order: none is accepted before every earlier one of that
      visitor was (one delivered again after later ones, from a last commit, is fine);
    - one ``webhook-id``, one body: a retry carries what the first attempt did.
    """
    problems: list[str] = []
    bodies: dict[str, dict[str, Any]] = {}
    for attempt in attempts:
        if bodies.setdefault(attempt.id, attempt.body) != attempt.body:
            problems.append(f"webhook-id {attempt.id} carried two different bodies")
    order: dict[int, list[Change]] = defaultdict(list)
    for change in expected:
        if identity(change) not in order[change["visitorid"]]:  # a record sent twice: one change
            order[change["visitorid"]].append(identity(change))
    accepted: dict[int, list[Change]] = defaultdict(list)
    for attempt in attempts:
        if attempt.status >= 300:
            continue
        if attempt.body["type"] != "changes":
            problems.append(f"a {attempt.body['type']} delivery ({attempt.id}), none was due")
            continue
        for change in attempt.body["changes"]:
            accepted[change["visitorid"]].append(identity(change))
    for visitor in sorted(set(order) | set(accepted)):
        due, got = order.get(visitor, []), accepted.get(visitor, [])
        position = {change: i for i, change in enumerate(due)}
        unknown = [c for c in got if c not in position]
        if unknown:
            problems.append(f"visitor {visitor}: {_shown(unknown[0])} accepted, no record makes it")
            continue
        reached = -1  # the latest of the visitor's changes accepted so far
        for change in got:
            if position[change] > reached + 1:
                skipped = due[reached + 1]
                problems.append(f"visitor {visitor}: {_shown(change)} accepted before {_shown(skipped)}")
                break
            reached = max(reached, position[change])
        missing = [c for c in due if c not in set(got)]
        if missing:
            problems.append(
                f"visitor {visitor}: {len(missing)} of its {len(due)} changes never accepted, "
                f"the first: {_shown(missing[0])}"
            )
    return problems


def retried_under_the_same_id(attempts: list[Attempt]) -> tuple[int, int]:
    """(ids that failed at least once and were accepted later, ids that failed)."""
    failed: set[str] = set()
    retried: set[str] = set()
    for attempt in attempts:
        if attempt.status >= 300:
            failed.add(attempt.id)
        elif attempt.id in failed:
            retried.add(attempt.id)
    return len(retried), len(failed)
