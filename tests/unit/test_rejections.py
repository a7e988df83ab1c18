"""Rejections summed up: every rejection counted once, bounded however many there are."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ampelios.core.events import IGNORED, Rejection, decode_run, event_codes, parse_csv_lines
from ampelios.core.rejections import EXAMPLES, MAX_REASONS, OTHER, RejectionSummary

rejections = st.lists(
    st.builds(Rejection, st.text(max_size=8), st.sampled_from([f"reason {i}" for i in range(80)]), st.text(max_size=5)),
    max_size=300,
)


@given(rejections, rejections)
def test_every_rejection_is_counted_once_in_bounded_space(first: list[Rejection], second: list[Rejection]):
    one, other, both = RejectionSummary(), RejectionSummary(), RejectionSummary()
    one.add(first)
    other.add(second)
    both.add(first + second)
    merged = RejectionSummary.from_bytes(one.to_bytes())
    merged.merge(RejectionSummary.from_report(other.report()))
    assert merged.total == both.total == len(first) + len(second)
    for summary in (merged, both):
        assert len(summary.reasons) <= MAX_REASONS + 1 and all(len(r["examples"]) <= EXAMPLES for r in summary.report())
        counts = [r["count"] for r in summary.report()]
        assert counts == sorted(counts, reverse=True)
    kept = [r.reason for r in first + second if r.reason in both.reasons]
    assert len(both.reasons) <= MAX_REASONS or both.reasons[OTHER]["count"] == len(first) + len(second) - len(kept)
    if first:  # the first examples are the first rejections of their reason
        reason = first[0].reason if first[0].reason in both.reasons else OTHER
        assert both.reasons[reason]["examples"][0] == {"position": first[0].position, "raw": first[0].raw}


def test_names_mapped_to_ignore_are_counted_apart_from_rejections():
    codes = event_codes({"page_view": "ignore"})
    assert codes["page_view"] == IGNORED
    lines = [
        b"timestamp,visitorid,event",
        b"1433221332117,1,view",
        b"1433221332118,1,page_view",
        b"1433221332119,1,tap",
    ]
    parsed = parse_csv_lines(iter(lines), 1, "f.csv", codes)
    assert (len(parsed.events), parsed.ignored, [r.position for r in parsed.rejections]) == (1, 1, ["f.csv:4"])
    messages = [
        b'{"source_id": 1, "timestamp": 1433221332117, "visitorid": 7, "event": "page_view"}',
        b'{"source_id": 2, "timestamp": [1433221332117, 1433221332118], "visitorid": [7, 7],'
        b' "event": ["page_view", "view"]}',
        b'{"source_id": 2, "timestamp": 1433221332119, "visitorid": 8, "event": "view"}',
    ]
    run = decode_run(messages, ["e:0:0", "e:0:1", "e:0:2"], codes)
    assert run.events.visitorid.tolist() == [7, 8] and run.message.tolist() == [1, 2] and not run.rejections
    assert run.ignored_in(0, 3) == {1: 1, 2: 1} and run.ignored_in(1, 2) == {2: 1} and run.ignored_in(2, 3) == {}
