"""Webhook subscriptions and deliveries: what a receiver is sent and how it verifies it."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ampelios.config import ConfigError, Settings
from ampelios.core.labels import KINDS
from ampelios.core.webhooks import (
    Subscription,
    SubscriptionRefused,
    delivery_id,
    membership_changes,
    new_secret,
    read_subscriptions,
    signed_headers,
)

SECRET = new_secret()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"
LABELS = [*KINDS, "returning browsers with more visits"]


def sub(**fields: object) -> Subscription:
    return Subscription.from_json({"url": "https://crm.example/hook", "source_id": 1, **fields}, id="s", secret=SECRET)


records = st.lists(
    st.fixed_dictionaries(
        {
            "source_id": st.sampled_from([1, 2]),
            "visitorid": st.integers(0, 5),
            "from": st.integers(0, len(LABELS) - 1),
            "to": st.none() | st.integers(0, len(LABELS) - 1),  # none: a linked visitor's exit
            "at": st.integers(0, 10**12),
            "model_version": st.integers(1, 9),
        }
    ).map(
        lambda r: {**r, "from_label": LABELS[r["from"]], "to_label": LABELS[r["to"]] if r["to"] is not None else None}
    ),
    max_size=30,
)


@given(records, st.none() | st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
def test_changes_keep_the_records_order_and_only_the_segments_asked_for(rs, segments):
    s = sub(segments=segments)
    changes = membership_changes(rs, s)
    mine = [r for r in rs if r["source_id"] == 1]
    expected = [
        (r["visitorid"], action, label)
        for r in mine
        for action, label in (("exit", r["from_label"]), ("enter", r["to_label"]))
        if label is not None and (segments is None or any(label == k or label.startswith(k + " ") for k in segments))
    ]
    assert [(c["visitorid"], c["action"], c["label"]) for c in changes] == expected
    if segments is None:
        assert len(changes) == sum(2 if r["to"] is not None else 1 for r in mine)


def test_a_kind_names_every_segment_of_that_kind():
    s = sub(segments=["returning browsers"])
    assert s.wants("returning browsers with more visits") and s.wants("returning browsers")
    assert not s.wants("returning browsersX") and not s.wants("cart abandoners")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"url": "ftp://x", "source_id": 1}, "url"),
        ({"url": "https://x", "source_id": "1"}, "source_id"),
        ({"url": "https://x", "source_id": 1, "segments": ["vips"]}, "no segment label"),
        ({"url": "https://x", "source_id": 1, "segments": []}, "segments"),
        ({"url": "https://x", "source_id": 1, "secret": "hunter2"}, "secret"),
        ({"url": "https://x", "source_id": 1, "secret": "whsec_c2hvcnQ="}, "16 bytes"),
        ({"url": "https://x", "source_id": 1, "colour": "red"}, "unknown fields: colour"),
        ([], "JSON object"),
    ],
)
def test_a_wrong_subscription_is_refused_with_its_reason(raw, reason):
    with pytest.raises(SubscriptionRefused, match=reason):
        Subscription.from_json(raw, id="s", secret=SECRET)


def test_a_delivery_verifies_with_the_standard_webhooks_library_and_only_with_its_secret():
    s = sub()
    body = json.dumps({"type": "changes", "changes": []}).encode()
    headers = signed_headers(s, delivery_id(s, "changes", [(0, 1, 2)]), body)
    assert headers["webhook-id"] == headers["idempotency-key"]
    assert Webhook(SECRET).verify(body, headers) == {"type": "changes", "changes": []}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)
    stale = signed_headers(s, headers["webhook-id"], body, datetime(2015, 6, 1, tzinfo=UTC))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, stale)


def test_a_retry_carries_the_same_delivery_id_and_another_delivery_another():
    s = sub()
    assert delivery_id(s, "changes", [(0, 1, 2)]) == delivery_id(s, "changes", [(0, 1, 2)])
    assert delivery_id(s, "changes", [(0, 1, 2)]) != delivery_id(s, "changes", [(0, 3, 4)])


def test_the_webhooks_file_is_read_at_start_and_a_wrong_one_stops_it(tmp_path: Path):
    good = tmp_path / "hooks.json"
    good.write_text(json.dumps([{"id": "crm", "url": "https://crm.example", "source_id": 1, "secret": SECRET}]))
    assert [s.id for s in read_subscriptions(good)] == ["crm"]
    assert Settings.from_env({"AMPELIOS_WEBHOOKS": str(good)}).webhooks == good
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "crm", "url": "https://crm.example", "source_id": 1}]))
    with pytest.raises(ConfigError, match=r"AMPELIOS_WEBHOOKS: .*subscription 0 needs its id and its secret"):
        Settings.from_env({"AMPELIOS_WEBHOOKS": str(bad)})
    with pytest.raises(ConfigError, match="AMPELIOS_WEBHOOKS"):
        Settings.from_env({"AMPELIOS_WEBHOOKS": str(tmp_path / "missing.json")})


def test_the_documented_receiver_verifies_a_delivery_with_the_standard_library_alone():
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    s = sub()
    body = json.dumps({"type": "changes", "changes": []}).encode()
    headers = signed_headers(s, delivery_id(s, "changes", [(0, 1, 2)]), body)
    assert example.verify(SECRET, headers, body) == {"type": "changes", "changes": []}
    with pytest.raises(ValueError, match="no signature"):
        example.verify(new_secret(), headers, body)
    stale = signed_headers(s, headers["webhook-id"], body, datetime(2015, 6, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="too far"):
        example.verify(SECRET, stale, body)
