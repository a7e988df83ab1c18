"""Tracking calls in Segment's HTTP API shape -> Ampelios events (the collector's pure half).

A site instrumented with a Segment-style tracker (Segment, RudderStack, Jitsu, PostHog
share the API) sends *calls*: JSON objects with a ``type`` (``track``, ``page``,
``identify``, ...), who (``userId`` and/or ``anonymousId``), when (``timestamp``,
``sentAt``) and what (``event`` and ``properties`` of a ``track``). :func:`collect` turns
the calls of one request into :class:`Collected`: the events, the calls it rejected (with
the reason) and how many it ignored.

**Event names** are looked up in the event codes (``AMPELIOS_EVENT_MAP`` over
:data:`SEGMENT_EVENTS`, Segment's e-commerce spec): ``Product Viewed`` is a view,
``Product Added`` an add-to-cart, ``Order Completed`` a transaction (one per product of
``properties.products``, as Retailrocket has one row per item bought). A ``page`` call is
looked up as :data:`PAGE` (``AMPELIOS_EVENT_MAP=page=view`` counts pages as views). Any
other name, and ``screen``, ``group`` and ``alias`` calls, are ignored and counted.

**Who**: ``userId`` if the call has one, else ``anonymousId`` (numbers are read as their
text). Each becomes a visitor id (:func:`visitor_id`): the same string always gives the
same visitor, and a user id and an anonymous id never share one. A call that carries both
(an ``identify``, or any call of a browser tracker after one) *links* the anonymous id to
the user: from then on, calls with only that anonymous id are the user's. What the
anonymous id did before stays with its own visitor (a journey is never split or moved).
Every visitor's *original id* (``user:<userId>`` or ``anonymous:<anonymousId>``) is kept
the first time it is seen (:attr:`Collected.names`), so that webhooks can name it; a call
whose original id hashes to a visitor that another original id already has (a collision:
about n**2 / 2**64 for n ids) is rejected, so that no journey mixes two people.

**When** (Segment's rule, made repeatable): the call's ``timestamp`` (ISO 8601; RudderStack's
``originalTimestamp`` is the same), else its
``sentAt``, else when it was received. When the sender's clock is off by more than
:data:`CLOCK_SKEW_MS` (its ``sentAt`` against the time received), the timestamp is moved
by that difference, rounded to the minute, so that a retried call gives the same time.

**Ids of things**: ``product_id`` and ``order_id`` are kept when they are integers below
2**63 written in decimal, else hashed to such an integer (:func:`thing_id`).

A call sent twice (a tracker's retry: the same ``messageId`` and content) gives the same
event twice, which the journeys count once (they hold distinct events).

>>> calls = [{"type": "track", "event": "Product Viewed", "userId": "ada", "timestamp": "2015-06-01T10:00:00Z",
...           "properties": {"product_id": "355908"}}]
>>> got = collect(calls, 1, event_codes(SEGMENT_EVENTS), received_ms=1_433_152_800_000)
>>> got.events.itemid.tolist(), got.events.visitorid.tolist() == [visitor_id("user", "ada")]
([355908], True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ampelios.core.events import (
    IGNORED,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    TRANSACTION,
    EventBatch,
    Rejection,
    event_codes,
)

MAX_CALL_BYTES = 32 * 1024  # Segment's limit per call (and per call of a batch)
MAX_BATCH_BYTES = 500 * 1024  # Segment's limit per batch request
CLOCK_SKEW_MS = 5 * 60_000  # a sender's clock further off than this is corrected
SEGMENT_EVENTS: dict[str, str] = {
    "Product Viewed": "view",
    "Product Added": "addtocart",
    "Order Completed": "transaction",
}
PAGE = "page"  # the name page calls are looked up under; ignored unless AMPELIOS_EVENT_MAP maps it
IGNORED_TYPES = frozenset({"screen", "group", "alias"})
_ID_LIMIT = 2**63


def collector_codes(event_map: Mapping[str, str]) -> dict[str, int]:
    """The event codes of collected calls: Segment's e-commerce names, then the site's map."""
    return event_codes({**SEGMENT_EVENTS, **event_map})


def visitor_id(kind: str, value: str) -> int:
    """The visitor of a ``userId`` (kind ``user``) or ``anonymousId`` (kind ``anonymous``):
    the first 63 bits of BLAKE2b over ``kind:value``. Two ids meet on one visitor with
    probability n**2 / 2**64 for n ids: one in a million for six million ids."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def thing_id(value: Any) -> int:
    """A product or order id as Ampelios's integer: a decimal integer below 2**63 as
    itself, any other value hashed (as :func:`visitor_id`); ``None`` is unknown (-1)."""
    if value is None:
        return -1
    text = str(value)
    if _decimal(text) and int(text) < _ID_LIMIT:
        return int(text)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _decimal(text: str) -> bool:
    """Whether ``text`` is an integer's canonical decimal form (``42``, not ``042``, ``+42`` or ``٤٢``)."""
    return text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


def parse_time(value: Any) -> int:
    """An ISO 8601 time (``2015-06-01T10:00:00.123Z``; no zone means UTC) as Unix ms."""
    if not isinstance(value, str):
        raise ValueError(f"a time must be an ISO 8601 string, got {orjson.dumps(value)[:40].decode()}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        return round(datetime.fromisoformat(value + "+00:00").timestamp() * 1000)
    return round(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Collected:
    """What the calls of one request give: ``events``, ``rejections`` (one per call,
    ``position`` its index), ``ignored`` calls, the ``links`` (anonymous id, user id)
    that calls carrying both made, and the ``names`` (visitor, original id) of visitors
    not named before; new ones only, in order."""

    events: EventBatch
    rejections: list[Rejection]
    ignored: int
    links: list[tuple[str, str]]
    names: list[tuple[int, str]]


def collect(
    calls: Sequence[Any],
    source_id: int,
    codes: Mapping[str, int],
    received_ms: int,
    sent_at: Any = None,
    kind: str | None = None,
    linked: Callable[[str], str | None] = lambda anonymous: None,
    named: Callable[[int], str | None] = lambda visitor: None,
) -> Collected:
    """The events of ``calls`` of one request (see the module docstring), received at
    ``received_ms``; ``sent_at`` is the request's ``sentAt`` (a batch's), ``kind`` the
    type every call has (``/v1/track`` etc.; ``None``: each call says, as in a batch),
    ``linked(anonymous id)`` the user id an earlier call linked it to, if any, and
    ``named(visitor)`` the original id an earlier call named it with, if any."""
    columns: list[list[int]] = [[], [], [], [], []]  # timestamp, visitor, event, item, transaction
    rejections: list[Rejection] = []
    ignored = 0
    links: dict[str, str] = {}  # made by these calls
    names: dict[int, str] = {}  # visitors these calls named first
    for index, call in enumerate(calls):
        try:
            call_type, user, anonymous = _who(call, kind)
            if user is not None and anonymous is not None and (links.get(anonymous) or linked(anonymous)) != user:
                links[anonymous] = user
            if user is None and anonymous is not None:
                user = links.get(anonymous) or linked(anonymous)
            original = f"user:{user}" if user is not None else f"anonymous:{anonymous}"
            visitor = visitor_id(*original.split(":", 1))
            known = names.get(visitor) or named(visitor)
            if known is not None and known != original:
                raise ValueError(f"{original[:80]!r} has the visitor id of {known[:80]!r} (a hash collision)")
            rows = _rows(call, call_type, visitor, codes, received_ms, sent_at)
            if known is None:
                names[visitor] = original
        except ValueError as exc:
            raw = orjson.dumps(call)[:200].decode(errors="replace") if _dumpable(call) else repr(call)[:200]
            rejections.append(Rejection(str(index), str(exc), raw))
            continue
        ignored += not rows and call_type != "identify"
        for row in rows:
            for column, value in zip(columns, row):
                column.append(value)
    events = EventBatch.from_columns([source_id] * len(columns[0]), *columns)
    return Collected(events, rejections, ignored, list(links.items()), list(names.items()))


def _dumpable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _text_id(call: Mapping[str, Any], key: str) -> str | None:
    value = call.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{key} must be a string or a number")
    return str(value)


def _who(call: Any, kind: str | None) -> tuple[str, str | None, str | None]:
    """A valid call's type, user id and anonymous id."""
    if not isinstance(call, dict):
        raise ValueError("a call must be a JSON object")
    if not _dumpable(call):
        raise ValueError("a call must be plain JSON (integers within 64 bits)")
    if len(orjson.dumps(call)) > MAX_CALL_BYTES:
        raise ValueError(f"a call must be at most {MAX_CALL_BYTES // 1024} KB")
    call_type = kind or call.get("type")
    if call_type not in ("track", "page", "identify", *IGNORED_TYPES):
        raise ValueError(f"unknown call type {str(call_type)[:40]!r}")
    user, anonymous = _text_id(call, "userId"), _text_id(call, "anonymousId")
    if user is None and anonymous is None:
        raise ValueError("a call needs a userId or an anonymousId")
    return call_type, user, anonymous


def _rows(
    call: Mapping[str, Any], call_type: str, visitor: int, codes: Mapping[str, int], received_ms: int, sent_at: Any
) -> list[tuple[int, int, int, int, int]]:
    """The event rows (timestamp, visitor, code, item, transaction) of one valid call."""
    if call_type == "track":
        name = call.get("event")
        if not isinstance(name, str) or not name:
            raise ValueError("a track call needs an event name")
    elif call_type == "page":
        name = PAGE
    else:
        return []  # identify, screen, group, alias
    code = codes.get(name)
    if code is None or code == IGNORED:
        return []
    at = _event_time(call, received_ms, sent_at)
    properties = call.get("properties") or {}
    if not isinstance(properties, dict):
        raise ValueError("properties must be a JSON object")
    if code != TRANSACTION:
        return [(at, visitor, code, thing_id(properties.get("product_id")), -1)]
    order = thing_id(properties.get("order_id"))
    products = properties.get("products") or [{}]
    if not isinstance(products, list) or not all(isinstance(p, dict) for p in products):
        raise ValueError("properties.products must be a list of objects")
    return [(at, visitor, code, thing_id(p.get("product_id")), order) for p in products]


def _event_time(call: Mapping[str, Any], received_ms: int, batch_sent_at: Any) -> int:
    sent_raw = call.get("sentAt", batch_sent_at)
    sent = parse_time(sent_raw) if sent_raw is not None else None
    stamped = call.get("timestamp", call.get("originalTimestamp"))  # RudderStack's name for it
    if stamped is not None:
        at = parse_time(stamped)
    elif sent is not None:
        at = sent
    else:
        at = received_ms
    if sent is not None and abs(received_ms - sent) > CLOCK_SKEW_MS:
        at += round((received_ms - sent) / 60_000) * 60_000
    if not MIN_TIMESTAMP_MS <= at < MAX_TIMESTAMP_MS:
        raise ValueError("the time must be between 2000-01-01 and 2100-01-01")
    return at
