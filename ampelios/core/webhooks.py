"""Webhook subscriptions and what they are sent: pure parts, no I/O.

A :class:`Subscription` asks for the segment membership of one source, all segments or
those named (a label, e.g. ``"returning browsers with more visits"``, or a kind, e.g.
``"cart abandoners"``, which names every segment of that kind). It is first sent the
current members, then every move of a visitor out of or into a segment it asks for, as
:func:`membership_changes` reads them from the ``segment-changes`` records:

>>> sub = Subscription.from_json({"url": "https://crm.example/hook", "source_id": 1,
...                               "segments": ["cart abandoners"]}, id="wh_1", secret=SECRET)
>>> record = {"source_id": 1, "visitorid": 42, "from": 0, "to": 2, "from_label": "one-view bouncers",
...           "to_label": "cart abandoners", "at": 1433221332117, "model_version": 7}
>>> [(c["visitorid"], c["action"], c["label"]) for c in membership_changes([record], sub)]
[(42, 'enter', 'cart abandoners')]

Every delivery is signed as the Standard Webhooks specification says (the headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``: HMAC-SHA256 of
``id.timestamp.body`` with the subscription's secret, base64), so that receivers can
verify it with the ``standardwebhooks`` library or a few lines of their own.
``webhook-id`` (also sent as ``Idempotency-Key``) is the same for every retry of the
same delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from standardwebhooks.webhooks import Webhook

from ampelios.core.events import MAX_SOURCE_ID
from ampelios.core.labels import KINDS

SECRET = "whsec_" + base64.b64encode(b"an example secret, never use it").decode()  # for the doctest
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 16
ID_PREFIX = "wh_"
MAX_ID = 64
MEMBERS_PAGE = 1000  # members per initial delivery


class SubscriptionRefused(ValueError):
    """A subscription that cannot be kept, with the reason."""


def new_secret() -> str:
    """A random secret in the Standard Webhooks form (``whsec_`` and base64 of 24 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(8)


def _secret(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.startswith(SECRET_PREFIX):
        raise SubscriptionRefused(f"secret must be {SECRET_PREFIX} followed by base64 (leave it out to get one)")
    try:
        key = base64.b64decode(raw[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SubscriptionRefused(f"secret must be {SECRET_PREFIX} followed by base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise SubscriptionRefused(f"secret must hold at least {MIN_SECRET_BYTES} bytes")
    return raw


def _segment_names(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(name, str) for name in raw):
        raise SubscriptionRefused("segments must be a non-empty list of segment labels or kinds, or left out")
    for name in raw:
        if not any(name == kind or name.startswith(kind + " ") for kind in KINDS):
            kinds = ", ".join(KINDS)
            raise SubscriptionRefused(f"segments: {name!r:.80} is no segment label; labels begin with: {kinds}")
    return tuple(raw)


@dataclass(frozen=True)
class Subscription:
    """Who receives a source's membership changes: ``url`` (http or https), ``secret``
    (signs every delivery), ``segments`` (labels or kinds; ``None``: every segment)."""

    id: str
    url: str
    secret: str
    source_id: int
    segments: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, raw: Any, *, id: str | None = None, secret: str | None = None) -> Subscription:
        """The subscription a JSON object asks for; ``id`` and ``secret`` when it has none.
        SubscriptionRefused says what is wrong."""
        if not isinstance(raw, dict):
            raise SubscriptionRefused("a subscription is a JSON object with url and source_id")
        unknown = set(raw) - {"id", "url", "secret", "source_id", "segments"}
        if unknown:
            raise SubscriptionRefused(f"unknown fields: {', '.join(sorted(unknown))}")
        sub_id = raw.get("id", id)
        if not isinstance(sub_id, str) or not 0 < len(sub_id) <= MAX_ID or not sub_id.replace("-", "_").isidentifier():
            raise SubscriptionRefused(f"id must be 1 to {MAX_ID} letters, digits, - or _")
        url = raw.get("url")
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
        except ValueError:  # e.g. an unclosed [ of an IPv6 address
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise SubscriptionRefused("url must be an http or https URL")
        source_id = raw.get("source_id")
        if isinstance(source_id, float) and source_id.is_integer():  # 7.0 is an integer in JSON
            source_id = int(source_id)
        if not isinstance(source_id, int) or isinstance(source_id, bool) or not 0 <= source_id <= MAX_SOURCE_ID:
            raise SubscriptionRefused(f"source_id must be an integer from 0 to {MAX_SOURCE_ID}")
        return cls(sub_id, url, _secret(raw.get("secret", secret)), source_id, _segment_names(raw.get("segments")))

    def to_json(self, *, with_secret: bool = False) -> dict[str, Any]:
        shown = {"id": self.id, "url": self.url, "source_id": self.source_id, "segments": self.segments}
        return {**shown, "secret": self.secret} if with_secret else shown

    def wants(self, label: str) -> bool:
        """Whether the segment labelled ``label`` is one the subscription asks for."""
        return self.segments is None or any(label == n or label.startswith(n + " ") for n in self.segments)


def read_subscriptions(path: Path) -> list[Subscription]:
    """The subscriptions of an ``AMPELIOS_WEBHOOKS`` file: a JSON list of objects, each
    with its ``id`` and ``secret``. SubscriptionRefused names the first wrong one."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SubscriptionRefused(f"{path}: {exc}") from None
    if not isinstance(raw, list):
        raise SubscriptionRefused(f"{path}: a JSON list of subscriptions is expected")
    subs: list[Subscription] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "id" not in item or "secret" not in item:
            raise SubscriptionRefused(f"{path}: subscription {i} needs its id and its secret")
        try:
            subs.append(Subscription.from_json(item))
        except SubscriptionRefused as exc:
            raise SubscriptionRefused(f"{path}: subscription {i}: {exc}") from None
    if len({s.id for s in subs}) < len(subs):
        raise SubscriptionRefused(f"{path}: two subscriptions have the same id")
    return subs


def membership_changes(records: list[dict[str, Any]], sub: Subscription) -> list[dict[str, Any]]:
    """The exits and entries that ``segment-changes`` records (in their order) make in the
    segments ``sub`` asks for: an exit before the entry of the same move."""
    changes: list[dict[str, Any]] = []
    for r in records:
        if r["source_id"] != sub.source_id:
            continue
        for action, segment, label in (("exit", r["from"], r["from_label"]), ("enter", r["to"], r["to_label"])):
            if segment is not None and sub.wants(label):  # no "to": the visitor joined its person's journey
                changes.append(
                    {
                        "visitorid": r["visitorid"],
                        "action": action,
                        "segment": segment,
                        "label": label,
                        "at": r["at"],
                        "model_version": r["model_version"],
                    }
                )
    return changes


def delivery_id(sub: Subscription, *parts: object) -> str:
    """The idempotency key of a delivery: the same for the same subscription and parts
    (what the delivery holds, e.g. partition and offsets), so every retry carries it."""
    digest = hashlib.blake2b(repr((sub.id, *parts)).encode(), digest_size=12).hexdigest()
    return f"msg_{digest}"


def signed_headers(sub: Subscription, message_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of a delivery of ``body`` signed at ``now``."""
    at = now or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "idempotency-key": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(sub.secret).sign(message_id, at, body.decode()),
    }
