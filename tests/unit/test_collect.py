"""Segment-style calls -> events: who, when, what; every call accounted for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from ampelios.core.collect import CLOCK_SKEW_MS, collect, collector_codes, parse_time, thing_id, visitor_id
from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW

CODES = collector_codes({"page": "view", "Checkout Started": "ignore"})
AT = datetime(2015, 6, 1, 10, 0, tzinfo=UTC)
MS = int(AT.timestamp() * 1000)


def track(name: str, **fields: object) -> dict[str, object]:
    return {"type": "track", "event": name, "userId": "ada", "timestamp": AT.isoformat(), **fields}


@given(st.text(max_size=30), st.text(max_size=30))
def test_a_visitor_id_is_stable_in_range_and_kinds_never_share_one(a, b):
    assert visitor_id("user", a) == visitor_id("user", a)
    assert 0 <= visitor_id("user", a) < 2**63
    assert visitor_id("user", a) != visitor_id("anonymous", a)
    if a != b:
        assert visitor_id("user", a) != visitor_id("user", b)  # 2**-63 apart: never in a test


@given(st.integers(0, 2**63 - 1) | st.text(max_size=20) | st.none())
@example("None")  # the text, not the absence: hashed (an earlier oracle read it as None)
@example("042")
@example(str(2**63))
def test_thing_ids_keep_integers_and_hash_the_rest_into_range(value):
    got = thing_id(value)
    text = str(value)
    if value is None:
        assert got == -1
    elif text.isascii() and text.isdigit() and str(int(text)) == text and int(text) < 2**63:
        assert got == int(text)
    else:
        assert 0 <= got < 2**63 and got == thing_id(value)


def test_e_commerce_names_become_events_and_an_order_one_transaction_per_product():
    calls = [
        track("Product Viewed", properties={"product_id": "42"}),
        track("Product Added", properties={"product_id": "42"}),
        track("Order Completed", properties={"order_id": "7", "products": [{"product_id": "42"}, {"product_id": "x"}]}),
        {"type": "page", "anonymousId": "a-1", "timestamp": AT.isoformat()},  # page=view in this map
        track("Checkout Started"),  # mapped to ignore
        track("Signed Up"),  # not mapped: ignored
        {"type": "identify", "userId": "ada", "anonymousId": "a-1"},
        {"type": "group", "userId": "ada"},
    ]
    got = collect(calls, 3, CODES, received_ms=MS)
    assert got.events.event.tolist() == [VIEW, ADDTOCART, TRANSACTION, TRANSACTION, VIEW]
    assert got.events.itemid.tolist() == [42, 42, 42, thing_id("x"), -1]
    assert got.events.transactionid.tolist() == [-1, -1, 7, 7, -1]
    assert got.events.source_id.tolist() == [3] * 5
    assert got.events.timestamp.tolist() == [MS] * 5
    ada, anonymous = visitor_id("user", "ada"), visitor_id("anonymous", "a-1")
    assert got.events.visitorid.tolist() == [ada, ada, ada, ada, anonymous]
    assert (got.ignored, got.rejections, got.links) == (3, [], [("a-1", "ada")])


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["track", "page", "identify", "screen", "bogus"]),
                "event": st.sampled_from(["Product Viewed", "Order Completed", "Other", ""]),
                "userId": st.text(max_size=5) | st.integers() | st.none() | st.booleans(),
                "anonymousId": st.text(max_size=5),
                "timestamp": st.sampled_from([AT.isoformat(), "2015-06-01", "not a time", "1990-01-01T00:00:00Z"]),
                "properties": st.sampled_from([{}, {"products": "x"}, {"products": [{}, {}]}, []]),
            },
        )
        | st.integers(),
        max_size=20,
    )
)
def test_every_call_is_an_event_a_rejection_an_ignored_call_or_an_identify(calls):
    got = collect(calls, 1, CODES, received_ms=MS)
    rejected = {int(r.position) for r in got.rejections}
    kept = [c for i, c in enumerate(calls) if i not in rejected]
    identifies = sum(1 for c in kept if c.get("type") == "identify")
    assert len(got.events) >= len(kept) - got.ignored - identifies >= 0
    assert all(r.reason for r in got.rejections)
    assert all(anonymous and user for anonymous, user in got.links)


def test_an_anonymous_id_linked_to_a_user_is_the_user_s_from_then_on():
    view = {"type": "track", "event": "Product Viewed", "timestamp": AT.isoformat()}
    calls = [
        {**view, "anonymousId": "a-1"},  # before the link: the anonymous visitor
        {"type": "identify", "userId": "ada", "anonymousId": "a-1"},
        {**view, "anonymousId": "a-1"},  # after it, in the same request: ada
        {**view, "anonymousId": "a-2"},  # linked by an earlier request (``linked``)
        {**view, "anonymousId": "a-3"},
    ]
    got = collect(calls, 1, CODES, received_ms=MS, linked={"a-2": "bob"}.get)
    ada, bob = visitor_id("user", "ada"), visitor_id("user", "bob")
    expected = [visitor_id("anonymous", "a-1"), ada, bob, visitor_id("anonymous", "a-3")]
    assert got.events.visitorid.tolist() == expected
    assert (got.links, got.ignored) == ([("a-1", "ada")], 0)
    again = collect(calls[1:2], 1, CODES, received_ms=MS, linked={"a-1": "ada"}.get)
    assert again.links == []  # known already: nothing new to publish


def test_a_sender_s_clock_is_corrected_beyond_five_minutes_and_a_retry_gives_the_same_time():
    call = track("Product Viewed")
    ok = collect([{**call, "sentAt": (AT + timedelta(seconds=2)).isoformat()}], 1, CODES, received_ms=MS + 3_000)
    assert ok.events.timestamp.tolist() == [MS]  # a clock a second off: trusted
    slow = {**call, "sentAt": (AT - timedelta(hours=1)).isoformat()}  # its clock is an hour behind
    first = collect([slow], 1, CODES, received_ms=MS + 1_000)
    retry = collect([slow], 1, CODES, received_ms=MS + 9_000)
    assert first.events.timestamp.tolist() == retry.events.timestamp.tolist() == [MS + 3_600_000]
    assert CLOCK_SKEW_MS == 300_000


def test_rudderstack_s_original_timestamp_is_the_call_s_time():
    call = {k: v for k, v in track("Product Viewed").items() if k != "timestamp"}
    later = (AT + timedelta(seconds=30)).isoformat()
    rudder = collect([{**call, "originalTimestamp": AT.isoformat(), "sentAt": later}], 1, CODES, received_ms=MS)
    assert rudder.events.timestamp.tolist() == [MS]


def test_times_are_iso_8601_with_utc_when_no_zone_is_given():
    assert parse_time("2015-06-01T10:00:00Z") == parse_time("2015-06-01T10:00:00") == MS
    assert parse_time("2015-06-01T12:00:00+02:00") == MS
    for bad in ("yesterday", 1433152800000, None):
        try:
            parse_time(bad)
        except ValueError as exc:
            assert "ISO 8601" in str(exc)
        else:
            raise AssertionError(bad)


def test_a_visitor_is_named_once_and_a_colliding_original_id_is_rejected_not_mixed_in():
    calls = [track("Product Viewed"), track("Product Viewed", userId="bob"), track("Product Viewed")]
    got = collect(calls, 1, CODES, MS)
    assert got.names == [(visitor_id("user", "ada"), "user:ada"), (visitor_id("user", "bob"), "user:bob")]
    known = {visitor_id("user", "ada"): "user:ada"}
    assert collect(calls, 1, CODES, MS, named=known.get).names == [(visitor_id("user", "bob"), "user:bob")]

    # Another original id already has ada's visitor id: her calls are rejected, bob's kept.
    collided = {visitor_id("user", "ada"): "anonymous:someone-else"}
    got = collect(calls, 1, CODES, MS, named=collided.get)
    assert [r.position for r in got.rejections] == ["0", "2"]
    assert "hash collision" in got.rejections[0].reason
    assert got.events.visitorid.tolist() == [visitor_id("user", "bob")]
