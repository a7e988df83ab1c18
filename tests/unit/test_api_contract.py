"""The HTTP contract: requests read into their types, and the OpenAPI document generated
from the routes' declarations and those types."""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ampelios.api.contract import (
    MAX_USER_LIMIT,
    HistoryQuery,
    Segment,
    SegmentsQuery,
    Shape,
    StatsQuery,
    TriggerRequest,
    Visitor,
)
from ampelios.api.http import HttpError, Routes, encode, read_body, read_text
from ampelios.api.openapi import openapi_document
from ampelios.api.routes import OPERATIONS
from ampelios.core.events import MAX_SOURCE_ID


def refused(read: typing.Callable[[], object]) -> str:
    with pytest.raises(HttpError) as caught:
        read()
    assert caught.value.status == 400
    return str(caught.value)


def test_a_query_is_read_with_its_defaults_and_every_refusal_names_the_parameter():
    assert read_text(SegmentsQuery, {"source_id": "1"}) == SegmentsQuery(source_id=1)
    read = read_text(SegmentsQuery, {"source_id": "7.0", "verbose": "TRUE", "limit": "5", "other": "x"})
    assert (read.source_id, read.verbose, read.limit, read.local) == (7, True, 5, False)
    assert refused(lambda: read_text(SegmentsQuery, {})) == "source_id is required, e.g. ?source_id=1"
    assert "source_id must be an integer, got 'abc'" in refused(lambda: read_text(SegmentsQuery, {"source_id": "abc"}))
    limit = refused(lambda: read_text(SegmentsQuery, {"source_id": "1", "limit": str(MAX_USER_LIMIT + 1)}))
    assert f"limit must be an integer in 1..{MAX_USER_LIMIT}" in limit
    assert "verbose must be true or false" in refused(
        lambda: read_text(SegmentsQuery, {"source_id": "1", "verbose": "maybe"})
    )
    assert "clock must be one of event, wall" in refused(
        lambda: read_text(HistoryQuery, {"source_id": "1", "clock": "sun"})
    )
    assert "since must be an ISO 8601 time" in refused(
        lambda: read_text(HistoryQuery, {"source_id": "1", "since": "99999999999999999999"})
    )
    assert read_text(StatsQuery, {"source_id": "-1"}).source_id == -1  # messages of no source


def test_moments_are_iso_8601_or_unix_milliseconds_in_utc():
    june = datetime(2015, 6, 1, tzinfo=UTC)
    for raw in ("2015-06-01", "2015-06-01T00:00Z", "2015-06-01T02:00:00+02:00", "1433116800000"):
        assert read_text(HistoryQuery, {"source_id": "1", "since": raw}).since == june, raw


@given(source_id=st.integers(0, MAX_SOURCE_ID), limit=st.integers(1, MAX_USER_LIMIT), verbose=st.booleans())
def test_any_query_within_the_documented_ranges_is_read_as_sent(source_id: int, limit: int, verbose: bool):
    query = {"source_id": str(source_id), "limit": str(limit), "verbose": str(verbose).lower()}
    assert read_text(SegmentsQuery, query) == SegmentsQuery(source_id=source_id, limit=limit, verbose=verbose)


def test_a_body_needs_json_integers_in_range_and_strings():
    assert read_body(TriggerRequest, {"source_id": 1.0, "events_path": "a.csv"}) == TriggerRequest(
        source_id=1, events_path="a.csv"
    )
    for wrong in ("1", 1.5, True, None):
        message = refused(lambda wrong=wrong: read_body(TriggerRequest, {"source_id": wrong, "events_path": "a.csv"}))
        assert message.startswith("source_id must be a JSON integer, e.g. 1"), message
    assert "source_id must be an integer in 0.." in refused(
        lambda: read_body(TriggerRequest, {"source_id": -1, "events_path": "a.csv"})
    )
    assert refused(lambda: read_body(TriggerRequest, {"source_id": 1})).startswith("events_path is required")
    assert "events_path must be a string" in refused(
        lambda: read_body(TriggerRequest, {"source_id": 1, "events_path": 3})
    )


def test_answers_encode_in_field_order_with_unset_fields_left_out():
    visitor = Visitor(
        visitorid=1,
        source_id=1,
        original_id=None,
        sessions=[],
        state=[0, 0, 0],
        features=[0.0] * 6,
        segment=None,
        active=False,
        label=None,
        why=None,
        transitions=None,
    )
    assert list(msgspec.json.decode(encode(visitor))) == [
        f for f in Visitor.__struct_fields__ if f != "transitions_error"
    ]
    visitor.transitions_error = "Postgres is unavailable"
    assert msgspec.json.decode(encode(visitor))["transitions_error"] == "Postgres is unavailable"


def test_a_field_added_to_an_answer_type_appears_in_the_document_by_itself():
    class Wider(Shape):
        visitors: int
        newly_added: typing.Annotated[str, msgspec.Meta(description="a field no one documented by hand")]

    routes = Routes()
    routes.get("/wider", "A route of a test", answers={200: ("wider", Wider)})(lambda api, request: None)
    document = openapi_document(routes.operations, token_required=False)
    schema = document["components"]["schemas"]["Wider"]
    assert schema["required"] == ["visitors", "newly_added"]
    assert schema["properties"]["newly_added"]["description"] == "a field no one documented by hand"
    answer = document["paths"]["/wider"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Wider"}


@pytest.mark.parametrize("token_required,visitors_protected", [(False, False), (True, False), (True, True)])
def test_every_operation_documents_its_parameters_answers_and_errors(token_required: bool, visitors_protected: bool):
    document = openapi_document(OPERATIONS, token_required, visitors_protected)
    assert set(document["paths"]) == {op.path for op in OPERATIONS}
    for op in OPERATIONS:
        documented = document["paths"][op.path][op.method]
        in_path = {p["name"] for p in documented.get("parameters", []) if p["in"] == "path"}
        assert in_path == set(re.findall(r"\{(\w+)\}", op.path)), op.path
        responses = documented["responses"]
        assert {str(s) for s in op.answers} | {str(s) for s in op.errors} <= set(responses)
        guarded = (op.guard == "writes" and token_required) or (
            op.guard in ("visitors", "verbose") and visitors_protected
        )
        assert ("401" in responses) == (guarded or 401 in op.errors), (op.method, op.path)
    segment = document["components"]["schemas"]["Segment"]
    assert segment["required"] == list(Segment.__struct_fields__)  # every field, in the answer's order
