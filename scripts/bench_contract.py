"""What a typed answer costs on the hot answers (``/visitors/{id}``, the collector's).

Times, per answer, building and encoding it three ways: a plain dict encoded by orjson
(what the API did before its answers were typed), the contract's msgspec structs
(:mod:`ampelios.api.contract`, what it does), and the same shapes as pydantic models,
validated and dumped (when pydantic is installed; it is not a dependency). Run:

    .venv/bin/python scripts/bench_contract.py [--sessions 20]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from ampelios.api.contract import CollectorAnswer, Session, Visitor
from ampelios.api.http import encode

START = 1_433_000_000_000
WHY = {
    "segment": 2,
    "distances": [{"segment": s, "label": f"segment {s}", "distance": 0.5 * s} for s in range(5)],
    "nearest_other": {"segment": 1, "label": "segment 1"},
    "reasons": [
        {"feature": "views", "visitor": 3.0, "segment_mean": 2.0, "other_mean": 5.0, "share": 0.4, "says": "fewer"}
    ]
    * 3,
}


def visitor_dict(sessions: int) -> dict[str, Any]:
    return {
        "visitorid": 123456,
        "source_id": 1,
        "sessions": [
            {"start": START + i * 3_600_000, "end": START + i * 3_600_000 + 600_000, "state": [3, 1, 0]}
            for i in range(sessions)
        ],
        "state": [3 * sessions, sessions, 0],
        "features": [3.0 * sessions, float(sessions), 0.0, float(sessions), 3.0, 0.0],
        "segment": 2,
        "active": True,
        "label": "cart abandoners",
        "why": WHY,
        "transitions": [],
    }


def plain(sessions: int) -> Callable[[], bytes]:
    def answer() -> bytes:
        return orjson.dumps(visitor_dict(sessions), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_UTC_Z)

    return answer


def typed(sessions: int) -> Callable[[], bytes]:
    def answer() -> bytes:
        return encode(
            Visitor(
                visitorid=123456,
                source_id=1,
                sessions=[
                    Session(start=START + i * 3_600_000, end=START + i * 3_600_000 + 600_000, state=[3, 1, 0])
                    for i in range(sessions)
                ],
                state=[3 * sessions, sessions, 0],
                features=[3.0 * sessions, float(sessions), 0.0, float(sessions), 3.0, 0.0],
                segment=2,
                active=True,
                label="cart abandoners",
                why=WHY,
                transitions=[],
            )
        )

    return answer


def pydantic_models(sessions: int) -> tuple[Callable[[], bytes], Callable[[], bytes]] | None:
    try:
        import pydantic
    except ImportError:
        return None

    class PSession(pydantic.BaseModel):
        start: int
        end: int
        state: list[int]

    class PVisitor(pydantic.BaseModel):
        visitorid: int
        source_id: int
        sessions: list[PSession]
        state: list[int]
        features: list[float]
        segment: int | None
        active: bool
        label: str | None
        why: dict[str, Any] | None
        transitions: list[dict[str, Any]] | None

    class PCollected(pydantic.BaseModel):
        success: bool
        accepted: int
        ignored: int
        rejected: list[dict[str, Any]]

    def visitor() -> bytes:
        return PVisitor(**visitor_dict(sessions)).model_dump_json().encode()

    def collected() -> bytes:
        return PCollected(success=True, accepted=100, ignored=0, rejected=[]).model_dump_json().encode()

    return visitor, collected


def best_us(fn: Callable[[], Any], number: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions of the visitor shown")
    args = parser.parse_args()
    rows = [
        ("/visitors/{id}", "dict + orjson", plain(args.sessions)),
        ("/visitors/{id}", "msgspec (contract)", typed(args.sessions)),
        (
            "collector",
            "dict + orjson",
            lambda: orjson.dumps({"success": True, "accepted": 100, "ignored": 0, "rejected": []}),
        ),
        (
            "collector",
            "msgspec (contract)",
            lambda: encode(CollectorAnswer(success=True, accepted=100, ignored=0, rejected=[])),
        ),
    ]
    models = pydantic_models(args.sessions)
    if models is not None:
        rows.insert(2, ("/visitors/{id}", "pydantic (validated)", models[0]))
        rows.append(("collector", "pydantic", models[1]))
    assert orjson.loads(typed(args.sessions)()) == orjson.loads(plain(args.sessions)())  # the same answer
    print(f"{'answer':16} {'built and encoded with':24} {'us per answer':>13}")
    for answer, how, fn in rows:
        print(f"{answer:16} {how:24} {best_us(fn):13.2f}")


if __name__ == "__main__":
    main()
