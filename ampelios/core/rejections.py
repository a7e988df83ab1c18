"""Rejections summed up for a person: how many rows were rejected for each reason, and the
first few of each as examples (where, what it held), in bounded space.

A summary keeps at most :data:`MAX_REASONS` distinct reasons (later new reasons count
under :data:`OTHER`) and :data:`EXAMPLES` examples per reason, so it fits one table value
however many rows a source sends. Summaries merge (partitions, workers): counts add up,
examples are kept in merge order.

>>> summary = RejectionSummary()
>>> summary.add([Rejection("events.csv:3", "empty line"), Rejection("events.csv:9", "empty line", "")])
>>> summary.total, summary.report()[0]["examples"][1]
(2, {'position': 'events.csv:9', 'raw': ''})
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ampelios.core.events import Rejection

MAX_REASONS = 50
EXAMPLES = 3
OTHER = "other reasons"


@dataclass
class RejectionSummary:
    """Counts and first examples per reason (see the module docstring)."""

    reasons: dict[str, dict[str, Any]] = field(default_factory=dict)  # reason -> {"count", "examples"}

    @property
    def total(self) -> int:
        return sum(r["count"] for r in self.reasons.values())

    def add(self, rejections: Iterable[Rejection]) -> None:
        for r in rejections:
            self._count(r.reason, 1, [{"position": r.position, "raw": r.raw}])

    def merge(self, other: RejectionSummary) -> None:
        for reason, entry in other.reasons.items():
            self._count(reason, entry["count"], entry["examples"])

    def _count(self, reason: str, count: int, examples: list[dict[str, str]]) -> None:
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS:
            reason = OTHER
        entry = self.reasons.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += count
        entry["examples"] = (entry["examples"] + examples)[:EXAMPLES]

    def report(self, limit: int = MAX_REASONS) -> list[dict[str, Any]]:
        """The ``limit`` most frequent reasons, most frequent first (then by reason)."""
        ranked = sorted(self.reasons.items(), key=lambda item: (-item[1]["count"], item[0]))
        return [{"reason": reason, **entry} for reason, entry in ranked[:limit]]

    @classmethod
    def from_report(cls, reasons: list[dict[str, Any]]) -> RejectionSummary:
        """The summary a :meth:`report` (of every reason) was made of."""
        return cls({r["reason"]: {"count": r["count"], "examples": r["examples"]} for r in reasons})

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.reasons)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> RejectionSummary:
        return cls(orjson.loads(raw)) if raw else cls()
