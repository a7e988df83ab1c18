"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``.

It is the contract :mod:`ampelios.api.views` keeps (the test suite runs schemathesis
against a live worker with it): every documented status, every field of every answer.
"""

from __future__ import annotations

from typing import Any

from ampelios import __version__
from ampelios.core.events import MAX_SOURCE_ID
from ampelios.core.labels import KINDS
from ampelios.core.rejections import MAX_REASONS

MAX_USER_LIMIT = 10_000  # visitor ids per segment that /view?verbose=true may list
MAX_MEMBERS = 10_000  # members per page of /segments/{segment}/members
MAX_BODY_BYTES = 64 * 1024  # request bodies (POST /trigger)

_INT64 = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_SEGMENT = {"type": "integer", "minimum": 0, "maximum": 2**16 - 1}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_FEATURES = {
    "type": "array",
    "items": {"type": "number"},
    "minItems": 6,
    "maxItems": 6,
    "description": "views, add-to-carts, transactions, sessions, views per session, purchase ratio",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "a parameter or the body is not valid",
        401: "AMPELIOS_API_TOKEN is set and the request does not carry it as a bearer token",
        403: "a write from a web page of another origin (AMPELIOS_CORS_ORIGINS does not list it)",
        404: "unknown source, visitor, job, file or webhook subscription",
        408: "the body did not arrive in time",
        409: "the subscription is defined in AMPELIOS_WEBHOOKS: remove it there",
        413: f"the body is larger than {MAX_BODY_BYTES} bytes",
        415: "the body is not sent as Content-Type: application/json",
        503: (
            "the worker is recovering its state, a rebalance is under way, another worker did not answer, "
            "or Postgres is unavailable: retry"
        ),
    }
    return {str(s): _answer(meaning[s], _ref("Error")) for s in statuses}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_LOCAL = _query(
    "local",
    {"type": "boolean"},
    "answer from this worker's partitions only (what workers ask each other; default false: every worker's)",
)


_SOURCE = _query("source_id", {"type": "integer", "minimum": 0, "maximum": MAX_SOURCE_ID}, "the site", True)

_COUNTS = {  # of /stats, whether of every worker or of one
    "events": {"type": "integer", "minimum": 0},
    "visitors": {"type": "integer", "minimum": 0},
    "rejected": {"type": "integer", "minimum": 0},
    "ignored": {"type": "integer", "minimum": 0, "description": "events whose name AMPELIOS_EVENT_MAP ignores"},
    "forwarded": {
        "type": "integer",
        "minimum": 0,
        "description": "events that arrived on a partition not owning their visitor, forwarded to the owner",
    },
}

_SCHEMAS: dict[str, Any] = {
    "Reason": {
        "type": "object",
        "required": ["reason", "count", "examples"],
        "properties": {
            "reason": {"type": "string"},
            "count": {"type": "integer", "minimum": 1},
            "examples": {
                "type": "array",
                "maxItems": 3,
                "description": "the first rows or messages rejected for this reason",
                "items": {
                    "type": "object",
                    "required": ["position", "raw"],
                    "properties": {
                        "position": {"type": "string", "description": "file:line, or topic:partition:offset"},
                        "raw": {
                            "type": "string",
                            "description": "what the row or message held (its first 200 characters)",
                        },
                    },
                },
            },
        },
    },
    "Rejections": {
        "type": "object",
        "required": ["source_id", "rejected", "reasons"],
        "properties": {
            "source_id": {"type": "integer"},
            "rejected": {"type": "integer", "minimum": 0},
            "reasons": {"type": "array", "items": _ref("Reason")},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Segment": {
        "type": "object",
        "required": ["id", "label", "users", "share", "centroid", "summary", "advice", "action"],
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "label": {"type": "string"},
            "summary": {"type": "string", "description": "what the mean member did, in plain words"},
            "advice": {"type": "string", "description": "what a marketer may do with the segment"},
            "action": {"enum": ["keep", "target", "nurture", "ignore", "none"], "description": "the advice in a word"},
            "users": {
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "array", "items": _INT64},
                ],
                "description": "visitors in the segment, or their ids with verbose=true",
            },
            "share": {"type": "number", "minimum": 0, "maximum": 1},
            "centroid": _FEATURES,
        },
    },
    "KQuality": {
        "type": "object",
        "required": ["source_id", "visitors", "k", "setting", "chosen", "rule", "qualities"],
        "properties": {
            "source_id": {"type": "integer"},
            "visitors": {"type": "integer", "minimum": 0},
            "k": {"type": ["integer", "null"], "description": "the k of the current model"},
            "setting": {"oneOf": [{"type": "integer"}, {"const": "auto"}], "description": "AMPELIOS_K for the source"},
            "chosen": {"type": "integer", "description": "the k the rule chooses for this population"},
            "rule": {"type": "string"},
            "qualities": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "k",
                        "inertia",
                        "davies_bouldin",
                        "smallest_share",
                        "kinds",
                        "labels",
                        "actionable",
                    ],
                    "properties": {
                        "k": {"type": "integer"},
                        "inertia": {"type": "number", "description": "mean squared distance to the centroid"},
                        "davies_bouldin": {"type": "number", "description": "lower: segments better apart"},
                        "smallest_share": {"type": "number", "minimum": 0, "maximum": 1},
                        "kinds": {"type": "integer", "description": "different kinds of name among the segments"},
                        "labels": {"type": "array", "items": {"type": "string"}},
                        "actionable": {"type": "boolean", "description": "the rule's test"},
                    },
                },
            },
        },
    },
    "Members": {
        "type": "object",
        "required": ["source_id", "segment", "label", "model_version", "members", "next"],
        "properties": {
            "source_id": {"type": "integer"},
            "segment": {"type": "integer"},
            "label": {"type": "string"},
            "model_version": {"type": "integer", "description": "the model every page of this listing uses"},
            "members": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["visitorid", "features"],
                    "properties": {"visitorid": _INT64, "features": _FEATURES},
                },
            },
            "next": {"type": ["string", "null"], "description": "pass as after for the next page; null: no more"},
        },
    },
    "Session": {
        "type": "object",
        "required": ["start", "end", "state"],
        "properties": {
            "start": {"type": "integer", "description": "Unix milliseconds"},
            "end": {"type": "integer", "description": "Unix milliseconds"},
            "state": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": 3,
                "maxItems": 3,
                "description": "views, add-to-carts, transactions",
            },
        },
    },
    "Visitor": {
        "type": "object",
        "required": ["visitorid", "source_id", "sessions", "state", "features", "segment", "active", "label"],
        "properties": {
            "visitorid": _INT64,
            "source_id": {"type": "integer"},
            "sessions": {"type": "array", "items": _ref("Session")},
            "state": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
            "features": _FEATURES,
            "segment": {"type": ["integer", "null"]},
            "active": {"type": "boolean"},
            "label": {"type": ["string", "null"]},
            "why": {
                "oneOf": [_ref("Why"), {"type": "null"}],
                "description": "why the visitor is in its segment (null when it is in none)",
            },
            "transitions": {"type": ["array", "null"], "items": {"type": "object"}},
            "transitions_error": {"type": "string"},
        },
    },
    "Why": {
        "type": "object",
        "required": ["segment", "distances", "nearest_other", "reasons"],
        "properties": {
            "segment": {"type": "integer"},
            "distances": {
                "type": "array",
                "description": "distance to every segment with members in the model's space, nearest first",
                "items": {
                    "type": "object",
                    "required": ["segment", "label", "distance"],
                    "properties": {
                        "segment": {"type": "integer"},
                        "label": {"type": "string"},
                        "distance": {"type": "number", "minimum": 0},
                    },
                },
            },
            "nearest_other": {
                "type": ["object", "null"],
                "properties": {"segment": {"type": "integer"}, "label": {"type": "string"}},
            },
            "reasons": {
                "type": "array",
                "maxItems": 3,
                "description": "the features that place the visitor here rather than in the nearest other segment",
                "items": {
                    "type": "object",
                    "required": ["feature", "visitor", "segment_mean", "other_mean", "share", "says"],
                    "properties": {
                        "feature": {"type": "string"},
                        "visitor": {"type": "number", "description": "the visitor's value"},
                        "segment_mean": {"type": "number", "description": "its segment's mean member"},
                        "other_mean": {"type": "number", "description": "the nearest other segment's mean member"},
                        "share": {"type": "number", "minimum": 0, "maximum": 1},
                        "says": {"type": "string", "description": "the same in words"},
                    },
                },
            },
        },
    },
    "History": {
        "type": "object",
        "required": ["source_id", "clock", "basis", "lineage", "lineages", "snapshots"],
        "properties": {
            "source_id": {"type": "integer"},
            "clock": {"enum": ["event", "wall"]},
            "basis": {
                "enum": ["current", "model"],
                "description": "current: every period's population under one model (model_version); "
                "model: each snapshot under the model of its moment",
            },
            "model_version": {"type": ["integer", "null"], "description": "with basis current: the model's version"},
            "model_changes": {
                "type": "array",
                "description": "with basis current: settlings that renamed segments (never drawn as a shift)",
                "items": {
                    "type": "object",
                    "required": ["at", "model_version", "before", "after"],
                    "properties": {
                        "at": {"type": "string", "format": "date-time"},
                        "model_version": {"type": "integer"},
                        "before": {"type": "array", "items": {"type": "string"}},
                        "after": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "lineage": {"type": "string", "description": "the model lineage of these snapshots"},
            "lineages": {
                "type": "array",
                "description": "every model lineage of the source, oldest first (segment ids mean one thing in one)",
                "items": {
                    "type": "object",
                    "required": ["lineage", "first_seen", "last_seen"],
                    "properties": {
                        "lineage": {"type": "string"},
                        "first_seen": {"type": "string", "format": "date-time"},
                        "last_seen": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "snapshots": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Alerts": {
        "type": "object",
        "required": ["source_id", "lineage", "alerts"],
        "properties": {
            "source_id": {"type": "integer"},
            "lineage": {"type": "string"},
            "alerts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "id",
                        "signal",
                        "segment",
                        "label",
                        "direction",
                        "before",
                        "after",
                        "started_at",
                        "detected_at",
                        "recovered_at",
                        "recovery_detected_at",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "signal": {
                            "enum": ["purchase_rate", "conversion", "events_per_visitor", "share"],
                            "description": "buyers / visitors, transactions / add-to-carts, events / visitors, "
                            "or a segment's share of the visitors (of one period)",
                        },
                        "segment": {"type": ["integer", "null"], "description": "for share: the segment"},
                        "label": {"type": ["string", "null"]},
                        "direction": {"enum": ["up", "down"]},
                        "before": {"type": "number", "description": "the signal's level before the shift"},
                        "after": {"type": "number", "description": "its level after, until detected"},
                        "started_at": {"type": "string", "format": "date-time", "description": "event time"},
                        "detected_at": {"type": "string", "format": "date-time", "description": "event time"},
                        "recovered_at": {"type": ["string", "null"], "format": "date-time"},
                        "recovery_detected_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            },
        },
    },
    "Stats": {
        "type": "object",
        "required": [*_COUNTS, "model_version", "lag", "sink_lag", "sink_error"],
        "properties": {
            **_COUNTS,
            "model_version": {"type": ["integer", "null"]},
            "lag": {"type": "integer", "minimum": 0},
            "sink_lag": {"type": "integer", "minimum": 0},
            "sink_error": {"type": ["string", "null"]},
        },
    },
    "LocalStats": {
        "type": "object",
        "description": "with local=true: the counts of this worker's partitions only",
        "required": [*_COUNTS, "partitions"],
        "properties": {
            **_COUNTS,
            "partitions": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job", "source_id", "events_path", "state", "rows", "rows_sent", "rows_rejected", "error"],
        "properties": {
            "job": {"type": "string"},
            "source_id": {"type": "integer"},
            "events_path": {"type": "string"},
            "state": {"enum": ["running", "done", "failed"]},
            "rows": {"type": "integer"},
            "rows_sent": {"type": "integer"},
            "rows_rejected": {"type": "integer"},
            "rows_ignored": {"type": "integer", "description": "rows whose event AMPELIOS_EVENT_MAP ignores"},
            "rejections": {"type": "array", "items": _ref("Reason"), "description": "the 10 most frequent reasons"},
            "events": {"type": "integer"},
            "error": {"type": ["string", "null"]},
            "started_at": {"type": "number"},
            "finished_at": _NUMBER_OR_NULL,
        },
    },
}


def _collector_operation(kind: str) -> dict[str, Any]:
    """A Segment-style collector endpoint (:mod:`ampelios.ingest.collector`)."""
    call = {"type": "object", "description": "a Segment call: userId or anonymousId, event, properties, timestamp"}
    body = (
        call
        if kind != "batch"
        else {"type": "object", "required": ["batch"], "properties": {"batch": {"type": "array", "items": call}}}
    )
    answer = {
        "type": "object",
        "required": ["success", "accepted", "ignored", "rejected"],
        "properties": {
            "success": {"type": "boolean"},
            "accepted": {"type": "integer", "description": "events sent to the broker"},
            "ignored": {"type": "integer", "description": "calls that are not e-commerce events"},
            "rejected": {"type": "array", "items": {"type": "object", "required": ["index", "reason"]}},
        },
    }
    errors = _errors(400, 403, 408, 415)
    errors["400"]["description"] = "not JSON, a call over 32 KB or a batch over 500 KB, or the call was rejected"
    errors["401"] = _answer(
        "the write key (the Basic auth user, or writeKey) is not one of AMPELIOS_WRITE_KEYS", _ref("Error")
    )
    return {
        "summary": f"Segment-style {kind} call{'s' if kind == 'batch' else ''} from a site's tracker",
        "security": [{"writeKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": _answer("what became of each call, once the broker has the events", answer), **errors},
    }


_SUBSCRIPTION = {
    "type": "object",
    "required": ["id", "url", "source_id", "segments", "defined_in", "deliveries_url"],
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "source_id": {"type": "integer"},
        "segments": {"type": ["array", "null"], "items": {"type": "string"}},
        "defined_in": {"enum": ["AMPELIOS_WEBHOOKS", "POST /webhooks"]},
        "deliveries_url": {"type": "string"},
    },
}
_DELIVERY = {
    "type": "object",
    "required": ["id", "type", "size", "created", "attempts", "status", "error", "delivered", "worker"],
    "properties": {
        "id": {"type": "string", "description": "the webhook-id (idempotency key) every attempt carried"},
        "type": {"enum": ["members", "changes"]},
        "size": {"type": "integer", "description": "members, or enters and exits, it holds"},
        "created": {"type": "string", "format": "date-time"},
        "attempts": {"type": "integer"},
        "status": {"type": ["integer", "null"], "description": "the receiver's last answer (null: none)"},
        "error": {"type": ["string", "null"]},
        "delivered": {"type": ["string", "null"], "format": "date-time"},
        "worker": {"type": "string"},
    },
}
_SUBSCRIPTION_ID = {"name": "subscription_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _webhook_paths(token_required: bool) -> dict[str, Any]:
    """``/webhooks`` and its sub-resources (:mod:`ampelios.api.webhooks`)."""
    security = [{"bearer": []}] if token_required else []
    auth = (401,) if token_required else ()
    new = {
        "type": "object",
        "required": ["url", "source_id"],
        "additionalProperties": False,
        "properties": {
            "url": {
                "type": "string",
                "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s]*)?$",
                "description": "http or https URL the deliveries are POSTed to",
            },
            "source_id": {"type": "integer", "minimum": 0, "maximum": MAX_SOURCE_ID},
            "secret": {
                "type": "string",
                "pattern": "^whsec_([A-Za-z0-9+/]{4}){6,}$",
                "description": "whsec_ and base64 of at least 16 bytes (default: a new one)",
            },
            "segments": {
                "type": ["array", "null"],
                "minItems": 1,
                "items": {"type": "string", "pattern": f"^({'|'.join(KINDS)})( .+)?$"},
                "description": "labels or kinds, e.g. cart abandoners (null or left out: every segment)",
            },
        },
    }
    created = {**_SUBSCRIPTION, "required": [*_SUBSCRIPTION["required"], "secret"]}
    created = {**created, "properties": {**_SUBSCRIPTION["properties"], "secret": {"type": "string"}}}
    return {
        "/webhooks": {
            "get": {
                "summary": "Every webhook subscription (without its secret)",
                "security": security,
                "responses": {
                    "200": _answer(
                        "the file's and those made over HTTP",
                        {
                            "type": "object",
                            "required": ["subscriptions"],
                            "properties": {"subscriptions": {"type": "array", "items": _SUBSCRIPTION}},
                        },
                    ),
                    **_errors(*auth, 503),
                },
            },
            "post": {
                "summary": "Subscribe a URL to a source's segment membership: members, then enters and exits",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": new}}},
                "responses": {
                    "201": _answer("subscribed; the secret is shown this once", created),
                    **_errors(400, *auth, 403, 408, 413, 415, 503),
                },
            },
        },
        "/webhooks/{subscription_id}": {
            "get": {
                "summary": "One webhook subscription (without its secret)",
                "security": security,
                "parameters": [_SUBSCRIPTION_ID],
                "responses": {"200": _answer("the subscription", _SUBSCRIPTION), **_errors(*auth, 404, 503)},
            },
            "delete": {
                "summary": "Delete a subscription made with POST /webhooks",
                "security": security,
                "parameters": [_SUBSCRIPTION_ID],
                "responses": {
                    "200": _answer(
                        "deleted: its deliveries stop",
                        {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}},
                    ),
                    **_errors(*auth, 403, 404, 409, 503),
                },
            },
        },
        "/webhooks/{subscription_id}/deliveries": {
            "get": {
                "summary": "The last deliveries of a subscription, newest first (each worker keeps its last 100)",
                "security": security,
                "parameters": [_SUBSCRIPTION_ID, _LOCAL],
                "responses": {
                    "200": _answer(
                        "newest first",
                        {
                            "type": "object",
                            "required": ["subscription", "deliveries"],
                            "properties": {
                                "subscription": {"type": "string"},
                                "deliveries": {"type": "array", "items": _DELIVERY},
                            },
                        },
                    ),
                    **_errors(*auth, 404, 503),
                },
            }
        },
    }


def openapi_document(token_required: bool, visitors_protected: bool = False) -> dict[str, Any]:
    """The API's OpenAPI 3.1 document; ``token_required`` when AMPELIOS_API_TOKEN is set,
    ``visitors_protected`` when AMPELIOS_PROTECT_VISITORS is set too."""
    moment = {"type": "string", "format": "date-time", "description": "an RFC 3339 time (or Unix milliseconds)"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ampelios",
            "version": __version__,
            "description": "Behaviour-based customer segments from browser events.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "writeKey": {"type": "http", "scheme": "basic", "description": "the write key as the user"},
            },
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Whether the worker serves (its tables are recovered)",
                    "responses": {
                        "200": _answer("serving", {"type": "object", "required": ["status"]}),
                        "503": _answer("recovering", {"type": "object", "required": ["status"]}),
                    },
                }
            },
            "/view": {
                "get": {
                    "summary": "The segments of a source",
                    "parameters": [
                        _SOURCE,
                        _query(
                            "verbose",
                            {"type": "boolean"},
                            "list visitor ids instead of counts: the first `limit` of each segment (at most "
                            f"{MAX_USER_LIMIT:,}); every member, with its features, is at /segments/{{id}}/members",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_USER_LIMIT},
                            "visitor ids per segment with verbose=true (default 100)",
                        ),
                        _LOCAL,
                    ],
                    "responses": {
                        "200": _answer("one entry per segment", {"type": "array", "items": _ref("Segment")}),
                        **_errors(*((400, 401, 404, 503) if visitors_protected else (400, 404, 503))),
                    },
                }
            },
            "/segments/quality": {
                "get": {
                    "summary": "How well k = 2..10 segment a source's visitors, and the k AMPELIOS_K=auto chooses",
                    "description": (
                        "Each k is fitted on the source's current population as a seeding does; the worker "
                        "that owns the model answers (any worker forwards). See docs/segment-model.md."
                    ),
                    "parameters": [_SOURCE],
                    "responses": {
                        "200": _answer("the figures of each k", _ref("KQuality")),
                        **_errors(400, 404, 503),
                    },
                }
            },
            "/segments/{segment}/members": {
                "get": {
                    "summary": "Every member of a segment with its six features, page by page or whole",
                    "description": (
                        "format=json (default) answers a page of `limit` members and `next`, the cursor of the "
                        "following page (null after the last): pass it as `after`. Every page of one listing "
                        "classifies under the model of its first page (`model_version`), so no visitor appears "
                        "twice; the order is the store's (partition, then visitor id as text). format=csv or "
                        "ndjson streams every member of the segment (from `after`, when given) in one answer."
                    ),
                    "parameters": [
                        {
                            "name": "segment",
                            "in": "path",
                            "required": True,
                            "schema": _SEGMENT,
                            "description": "the segment's id, as in /view",
                        },
                        _SOURCE,
                        _query("format", {"enum": ["json", "csv", "ndjson"]}, "a page (json) or the whole segment"),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_MEMBERS},
                            "members per page (default 1000)",
                        ),
                        _query(
                            "after",
                            {"type": "string"},
                            "the `next` of the previous page (empty: the first page; one that names no page: 404)",
                        ),
                        _query(
                            "local",
                            {"type": "boolean"},
                            "the cursor's partition only, which this worker must hold (what workers ask each other)",
                        ),
                    ],
                    "security": [{"bearer": []}] if visitors_protected else [],
                    "responses": {
                        "200": {
                            "description": "a page of members (json), or every member (csv, ndjson)",
                            "content": {
                                "application/json": {"schema": _ref("Members")},
                                "text/csv": {"schema": {"type": "string"}},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(*((400, 401, 404, 503) if visitors_protected else (400, 404, 503))),
                    },
                }
            },
            "/visitors/{visitorid}": {
                "get": {
                    "summary": "One visitor's journey, features, segment, why it is there, and transitions",
                    "parameters": [
                        {
                            "name": "visitorid",
                            "in": "path",
                            "required": True,
                            "schema": {"anyOf": [_INT64, {"type": "string", "pattern": "^(user|anonymous):.+$"}]},
                            "description": "a visitor id, or a collected visitor's original id: "
                            "user:<userId> or anonymous:<anonymousId>",
                        },
                        _SOURCE,
                    ],
                    "security": [{"bearer": []}] if visitors_protected else [],
                    "responses": {
                        "200": _answer("the visitor", _ref("Visitor")),
                        **_errors(*((400, 401, 404, 503) if visitors_protected else (400, 404, 503))),
                    },
                }
            },
            "/history": {
                "get": {
                    "summary": "Snapshots of a source's segments over event or wall time",
                    "parameters": [
                        _SOURCE,
                        _query("clock", {"enum": ["event", "wall"]}, "event time (default) or wall time"),
                        _query(
                            "basis",
                            {"enum": ["current", "model"]},
                            "event time: each period's population under the current model (default) or "
                            "the segments of the model of the moment (always on wall time)",
                        ),
                        _query("since", moment, "first snapshot time"),
                        _query("until", moment, "last snapshot time"),
                        _query(
                            "lineage",
                            {"type": "string", "maxLength": 64},
                            "the model lineage (default: the current model's; `lineages` lists them)",
                        ),
                    ],
                    "responses": {"200": _answer("oldest first", _ref("History")), **_errors(400, 404, 503)},
                }
            },
            "/alerts": {
                "get": {
                    "summary": "Shifts of a source's per-day signals (drift alerts) and their recoveries",
                    "parameters": [
                        _SOURCE,
                        _query("since", moment, "first detection time (event time)"),
                        _query("until", moment, "last detection time (event time)"),
                        _query(
                            "lineage",
                            {"type": "string", "maxLength": 64},
                            "the model lineage (default: the current model's)",
                        ),
                    ],
                    "responses": {"200": _answer("oldest first", _ref("Alerts")), **_errors(400, 404, 503)},
                }
            },
            "/stats": {
                "get": {
                    "summary": "Events and visitors reflected, rows rejected, records still to process",
                    "parameters": [
                        _query(
                            "source_id",
                            {"type": "integer", "minimum": -1, "maximum": MAX_SOURCE_ID},
                            "the site (-1: messages whose source could not be read)",
                            True,
                        ),
                        _LOCAL,
                    ],
                    "responses": {
                        "200": _answer("the counts", {"anyOf": [_ref("Stats"), _ref("LocalStats")]}),
                        **_errors(400, 503),
                    },
                }
            },
            "/rejections": {
                "get": {
                    "summary": "Why rows and messages of a source were rejected, with examples",
                    "security": [{"bearer": []}] if visitors_protected else [],
                    "parameters": [
                        _query(
                            "source_id",
                            {"type": "integer", "minimum": -1, "maximum": MAX_SOURCE_ID},
                            "the site (-1: messages whose source could not be read)",
                            True,
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_REASONS},
                            "most frequent reasons to list (default 20)",
                        ),
                        _LOCAL,
                    ],
                    "responses": {
                        "200": _answer("the reasons, most frequent first", _ref("Rejections")),
                        **_errors(*((400, 401, 503) if visitors_protected else (400, 503))),
                    },
                }
            },
            **{f"/v1/{kind}": {"post": _collector_operation(kind)} for kind in ("track", "page", "identify", "batch")},
            **_webhook_paths(token_required),
            "/trigger": {
                "post": {
                    "summary": "Replay a CSV file of the data directory into the events topic",
                    "security": [{"bearer": []}] if token_required else [],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["source_id", "events_path"],
                                    "properties": {
                                        "source_id": {"type": "integer", "minimum": 0, "maximum": MAX_SOURCE_ID},
                                        "events_path": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": 255,
                                            "pattern": "^[^/\\s\\x00][^\\x00]*\\.csv$",
                                            "description": "a regular .csv file under AMPELIOS_DATA_DIR, "
                                            "relative to it, with no '..' part (GET /files lists them)",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _answer(
                            "the replay started",
                            {
                                "type": "object",
                                "required": ["job", "status_url"],
                                "properties": {"job": {"type": "string"}, "status_url": {"type": "string"}},
                            },
                        ),
                        **_errors(
                            *((400, 401, 403, 404, 408, 413, 415) if token_required else (400, 403, 404, 408, 413, 415))
                        ),
                    },
                }
            },
            "/trigger/{job}": {
                "get": {
                    "summary": "State and counts of one replay job",
                    "parameters": [{"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _answer("the job", _ref("Job")), **_errors(404)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this worker (text exposition format 0.0.4)",
                    "responses": {
                        "200": {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/files": {
                "get": {
                    "summary": "The CSV files of the data directory that POST /trigger can replay",
                    "responses": {
                        "200": _answer(
                            "by name",
                            {
                                "type": "object",
                                "required": ["files"],
                                "properties": {
                                    "files": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "bytes"],
                                            "properties": {
                                                "name": {"type": "string"},
                                                "bytes": {"type": "integer", "minimum": 0},
                                            },
                                        },
                                    }
                                },
                            },
                        )
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _answer("OpenAPI 3.1", {"type": "object"})},
                }
            },
        },
    }
