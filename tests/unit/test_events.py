"""Parsing, validation and the wire format of events."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.events import (
    ADDTOCART,
    TRANSACTION,
    VIEW,
    CsvError,
    DecodedRun,
    EventBatch,
    InvalidMessage,
    decode_events,
    decode_run,
    encode_events,
    event_codes,
    parse_csv_lines,
    write_csv,
)

HEADER = b"timestamp,visitorid,event,itemid,transactionid\n"
T = 1433221332117


def parse(body: bytes, header: bytes = HEADER):
    return parse_csv_lines(iter((header + body).splitlines(keepends=True)), source_id=1, name="f.csv")


def test_good_rows_are_kept_in_file_order_with_codes():
    parsed = parse(b"%d,257598,view,355908,\n%d,1,addtocart,5,\n%d,1,transaction,5,11\n" % (T, T + 1, T + 2))
    assert parsed.rows == 3 and parsed.rejections == []
    e = parsed.events
    assert e.visitorid.tolist() == [257598, 1, 1]
    assert e.event.tolist() == [VIEW, ADDTOCART, TRANSACTION]
    assert e.transactionid.tolist() == [-1, -1, 11]
    assert e.source_id.tolist() == [1, 1, 1]


def test_seed_header_without_itemid_and_any_column_order():
    parsed = parse(b"view,%d,7,\n" % T, header=b"event,timestamp,visitorid,transactionid\n")
    assert parsed.events.itemid.tolist() == [-1] and parsed.events.visitorid.tolist() == [7]


def test_bom_and_crlf_are_accepted():
    parsed = parse(b"%d,1,view,2,\r\n" % T, header=b"\xef\xbb\xbf" + HEADER.replace(b"\n", b"\r\n"))
    assert len(parsed.events) == 1 and parsed.rejections == []


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b"\n", "empty line"),
        (b"%d,1,view,2\n" % T, "expected 5 fields, got 4"),
        (b"%d,1,view,2,,9\n" % T, "expected 5 fields, got 6"),
        (b"%d,abc,view,2,\n" % T, "visitorid is not an integer: 'abc'"),
        (b"%d,-5,view,2,\n" % T, "visitorid"),
        (b"%d,1,click,2,\n" % T, "unknown event 'click'"),
        (b"433221332117,1,view,2,\n", "timestamp outside"),
        (b"%d,1,view,2,-3\n" % T, "itemid and transactionid"),
        (b"%d,1,vi\xffew,2,\n" % T, "unknown event"),
        (b"%d,99999999999999999999,view,2,\n" % T, "visitorid"),
    ],
)
def test_bad_rows_are_rejected_with_line_and_reason_and_the_rest_kept(row, reason):
    parsed = parse(b"%d,1,view,2,\n" % T + row + b"%d,2,view,3,\n" % T)
    assert parsed.events.visitorid.tolist() == [1, 2]
    assert parsed.rows == 3
    (rejection,) = parsed.rejections
    assert rejection.position == "f.csv:3"
    assert reason in rejection.reason


def test_header_only_gives_no_events_and_an_empty_file_is_an_error():
    assert len(parse(b"").events) == 0
    with pytest.raises(CsvError, match="empty"):
        parse_csv_lines(iter([]), 1)


def test_header_without_required_columns_is_an_error():
    with pytest.raises(CsvError, match="missing visitorid"):
        parse(b"", header=b"timestamp,event\n")


event_rows = st.tuples(
    st.integers(946_684_800_000, 4_102_444_799_999),
    st.integers(0, 2**63 - 1),
    st.sampled_from([VIEW, ADDTOCART, TRANSACTION]),
    st.integers(-1, 2**40),
    st.integers(-1, 2**40),
)
events_strategy = st.lists(
    event_rows,
    max_size=50,
)


def batch_of(rows, source_id=3) -> EventBatch:
    cols = list(zip(*rows)) if rows else [[], [], [], [], []]
    return EventBatch.from_columns(np.full(len(rows), source_id), *cols)


def same(a: EventBatch, b: EventBatch) -> bool:
    return all(
        np.array_equal(getattr(a, c), getattr(b, c))
        for c in ("source_id", "timestamp", "visitorid", "event", "itemid", "transactionid")
    )


@given(events_strategy)
def test_wire_format_round_trips(rows):
    batch = batch_of(rows)
    source, decoded, rejections = decode_events(encode_events(batch), "events:0:0")
    assert rejections == [] and same(decoded, batch) and source == (3 if rows else 0)


@given(events_strategy)
def test_csv_round_trips(rows):
    import io

    batch = batch_of(rows, source_id=1)
    out = io.BytesIO()
    write_csv(batch, out)
    parsed = parse_csv_lines(iter(out.getvalue().splitlines(keepends=True)), 1)
    assert parsed.rejections == [] and same(parsed.events, batch)


def test_one_event_message():
    msg = orjson.dumps(
        {"source_id": 2, "timestamp": T, "visitorid": 9, "event": "addtocart", "itemid": 4, "transactionid": None}
    )
    _, batch, rejections = decode_events(msg, "events:1:7")
    assert rejections == [] and batch.event.tolist() == [ADDTOCART] and batch.source_id.tolist() == [2]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"source_id": 1, "timestamp": 1, "visitorid": 1}', "missing 'event'"),
        (b'{"source_id": "1", "timestamp": 1, "visitorid": 1, "event": "view"}', "source_id"),
        (b'{"source_id": 1, "timestamp": "x", "visitorid": 1, "event": "view"}', "'timestamp' must hold integers"),
        (b'{"source_id": 1, "timestamp": 1.5, "visitorid": 1, "event": "view"}', "'timestamp' must hold integers"),
        (
            b'{"source_id": 1, "timestamp": [1, 2], "visitorid": [1], "event": ["view", "view"]}',
            "'visitorid' has 1 values",
        ),
        (b'{"source_id": 1, "timestamp": 1, "visitorid": 18446744073709551615, "event": "view"}', "beyond 64 bits"),
        (
            b'{"source_id": 1, "timestamp": 1, "visitorid": 99999999999999999999999, "event": "view"}',
            "must hold integers",
        ),
    ],
)
def test_unreadable_messages_raise_with_a_reason(value, reason):
    with pytest.raises(InvalidMessage, match=reason):
        decode_events(value, "events:0:1")


def test_bad_rows_of_a_column_message_are_rejected_alone():
    msg = orjson.dumps(
        {
            "source_id": 1,
            "timestamp": [T, 5, T],
            "visitorid": [1, 2, 3],
            "event": ["view", "view", "fly"],
            "itemid": [1, 1, 1],
            "transactionid": [None, None, None],
        }
    )
    source, batch, rejections = decode_events(msg, "events:0:9")
    assert source == 1
    assert batch.visitorid.tolist() == [1]
    assert [r.position for r in rejections] == ["events:0:9#1", "events:0:9#2"]
    assert "timestamp" in rejections[0].reason and "unknown event" in rejections[1].reason


SITE_NAMES = event_codes({"product_view": "view", "add_to_cart": "addtocart", "purchase": "transaction"})


def test_a_sites_event_names_are_mapped_and_unmapped_names_rejected():
    body = b"%d,1,product_view,2,\n%d,1,purchase,2,9\n%d,1,click,2,\n%d,1,view,2,\n" % (T, T, T, T)
    parsed = parse_csv_lines(iter((HEADER + body).splitlines(keepends=True)), 1, "f.csv", SITE_NAMES)
    assert parsed.events.event.tolist() == [VIEW, TRANSACTION, VIEW]  # Ampelios's own names still read
    assert [(r.position, r.reason) for r in parsed.rejections] == [("f.csv:4", "unknown event 'click'")]
    assert parse(body).events.event.tolist() == [VIEW]  # without the map only 'view' is known
    message = orjson.dumps({"source_id": 1, "timestamp": [T, T], "visitorid": [1, 2], "event": ["add_to_cart", "x"]})
    _, batch, rejections = decode_events(message, "events:0:3", SITE_NAMES)
    assert batch.event.tolist() == [ADDTOCART] and [r.position for r in rejections] == ["events:0:3#1"]


def test_events_map_only_onto_ampelios_names():
    with pytest.raises(ValueError, match="not buy"):
        event_codes({"purchase": "buy"})


def test_a_10_mb_line_is_one_rejected_row():
    huge = b"%d,1,view,2," % T + b"7" * 10_000_000 + b"\n"
    parsed = parse(b"%d,1,view,2,\n" % T + huge + b"%d,2,view,3,\n" % T)
    assert parsed.events.visitorid.tolist() == [1, 2]
    (rejection,) = parsed.rejections
    assert rejection.position == "f.csv:3"
    assert rejection.reason == "transactionid is not an integer: '77777777777777777777' (10000000 characters)"
    assert len(rejection.raw) <= 200  # the dead letter keeps a preview, not the line


# A fixed alphabet: st.text() of any character first builds Hypothesis's Unicode tables,
# which takes longer than its health check allows on a fresh clone.
single_values = st.one_of(
    st.integers(-(2**64), 2**64), st.none(), st.text(alphabet="view", max_size=3), st.floats(allow_nan=False)
)
one_event_messages = st.fixed_dictionaries(
    {
        "source_id": st.one_of(st.integers(-1, 3), st.none()),
        "timestamp": st.one_of(st.integers(T - 10, T + 10), single_values),
        "visitorid": st.one_of(st.integers(0, 5), single_values),
        "event": st.one_of(st.sampled_from(["view", "addtocart", "transaction", "click"]), single_values),
    },
    optional={"itemid": single_values, "transactionid": single_values},
).map(lambda message: json.dumps(message).encode())  # json: integers beyond 64 bits too
run_messages = st.lists(
    st.one_of(
        one_event_messages,
        st.lists(event_rows, max_size=5).map(lambda rows: encode_events(batch_of(rows))),
        st.sampled_from([b"not json", b"[1, 2]", b"{}", b""]),
    ),
    max_size=8,
)


@given(run_messages)
def test_a_run_decodes_as_its_messages_one_by_one(values):
    positions = [f"events:0:{i}" for i in range(len(values))]
    run = decode_run(values, positions)
    expected_events, expected_rejections, expected_message = [], [], []
    for i, value in enumerate(values):
        try:
            source, batch, rejections = decode_events(value, positions[i])
        except InvalidMessage as exc:
            expected_rejections.append((-1, positions[i], str(exc)))
            continue
        expected_events.append(batch)
        expected_message += [i] * len(batch)
        expected_rejections += [(source, r.position, r.reason) for r in rejections]
    assert same(run.events, EventBatch.concat(expected_events))
    assert run.message.tolist() == expected_message
    assert sorted((s, r.position, r.reason) for s, r in run.rejections) == sorted(expected_rejections)


@given(st.lists(st.lists(st.integers(0, 5), max_size=4), max_size=15), st.integers(1, 6), st.sampled_from([0, 2]))
def test_groups_cover_the_run_in_order_within_limits(days_per_message, max_events, period_days):
    day = 86_400_000
    times = [d * day for days in days_per_message for d in days]
    message = [i for i, days in enumerate(days_per_message) for _ in days]
    n = len(times)
    run = DecodedRun(
        EventBatch.from_columns([1] * n, times, [1] * n, [0] * n, [-1] * n, [-1] * n), np.array(message), []
    )
    groups = run.groups(len(days_per_message), max_events, period_days * day)
    counts = [len(days) for days in days_per_message]
    assert [i for start, end in groups for i in range(start, end)] == list(range(len(days_per_message)))
    for start, end in groups:
        assert end - start == 1 or sum(counts[start:end]) <= max_events
        if period_days:  # within a group, only the first message with events may open the group's latest period
            latest = [max(d) // period_days for d in days_per_message[start:end] if d]
            assert all(later <= max(latest[: i + 1]) for i, later in enumerate(latest[1:])) or len(latest) <= 1


def test_a_merge_row_must_link_its_visitor_to_another():
    body = b"%d,1,$merge,2,\n%d,1,$merge,1,\n%d,1,$merge,,\n" % (T, T, T)
    parsed = parse_csv_lines(iter((HEADER + body).splitlines(keepends=True)), 1, "f.csv", event_codes({}))
    assert parsed.events.itemid.tolist() == [2]  # visitor 1 is visitor 2
    assert [r.position for r in parsed.rejections] == ["f.csv:3", "f.csv:4"]
    assert all("another visitor to link to" in r.reason for r in parsed.rejections)
