"""The HTTP API's contract: every request and answer shape, as typed definitions.

Handlers (:mod:`ampelios.api.routes`) read their query and body into these types and
answer with them; :mod:`ampelios.api.openapi` generates ``/openapi.json`` from them, so a
field added here appears there by itself. Field order is the order of the JSON answer.

Constraints (``Meta``) are the contract a client may rely on; request readers
(:func:`ampelios.api.http.read_query`, :func:`~ampelios.api.http.read_body`) check types,
required fields and integer ranges, and the handler gives the reason for the rest (a path
that is not a file, a secret that is not base64). Parts of an answer that the core builds
(a visitor's ``why``, a job's figures) are described here and passed on as the core made
them: an answer is encoded, never validated, so serving costs no check per field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from ampelios.core.events import MAX_SOURCE_ID
from ampelios.core.labels import KINDS
from ampelios.core.rejections import MAX_REASONS

MAX_USER_LIMIT = 10_000  # visitor ids per segment that /view?verbose=true may list
MAX_MEMBERS = 10_000  # members per page of /segments/{segment}/members
MAX_BODY_BYTES = 64 * 1024  # request bodies (POST /trigger)
DEFAULT_USER_LIMIT = 100
DEFAULT_MEMBERS = 1000
DEFAULT_REASONS = 20

Int64 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Count = Annotated[int, Meta(ge=0)]
Share = Annotated[float, Meta(ge=0, le=1)]
Features = Annotated[
    list[float],
    Meta(
        min_length=6,
        max_length=6,
        description="views, add-to-carts, transactions, sessions, views per session, purchase ratio",
    ),
]
SourceId = Annotated[int, Meta(ge=0, le=MAX_SOURCE_ID, description="the site", examples=[1])]
AnySourceId = Annotated[
    int,
    Meta(ge=-1, le=MAX_SOURCE_ID, description="the site (-1: messages whose source could not be read)", examples=[1]),
]
Local = Annotated[
    bool,
    Meta(
        description="answer from this worker's partitions only "
        "(what workers ask each other; default false: every worker's)"
    ),
]
Lineage = Annotated[str, Meta(max_length=64)]
Moment = Annotated[datetime, Meta(tz=True)]  # RFC 3339, UTC


class Shape(Struct, kw_only=True):
    """Base of every request and answer shape (keyword fields, in the order of the JSON)."""


# ---- requests: query, path and body ----------------------------------------------------


class SegmentsQuery(Shape):
    source_id: SourceId
    verbose: Annotated[
        bool,
        Meta(
            description="list visitor ids instead of counts: the first `limit` of each segment (at most "
            f"{MAX_USER_LIMIT:,}); every member, with its features, is at /segments/{{id}}/members"
        ),
    ] = False
    limit: Annotated[
        int,
        Meta(ge=1, le=MAX_USER_LIMIT, description="visitor ids per segment with verbose=true (default 100)"),
    ] = DEFAULT_USER_LIMIT
    local: Local = False


class SourceQuery(Shape):
    source_id: SourceId


class MembersPath(Shape):
    segment: Annotated[int, Meta(ge=0, le=2**16 - 1, description="the segment's id, as in /view")]


class MembersQuery(Shape):
    source_id: SourceId
    format: Annotated[Literal["json", "csv", "ndjson"], Meta(description="a page (json) or the whole segment")] = "json"
    limit: Annotated[int, Meta(ge=1, le=MAX_MEMBERS, description="members per page (default 1000)")] = DEFAULT_MEMBERS
    after: Annotated[
        str,
        Meta(description="the `next` of the previous page (empty: the first page; one that names no page: 404)"),
    ] = ""
    local: Annotated[
        bool,
        Meta(description="the cursor's partition only, which this worker must hold (what workers ask each other)"),
    ] = False


class VisitorPath(Shape):
    visitorid: Annotated[
        str,
        Meta(
            description="a visitor id, or a collected visitor's original id: user:<userId> or anonymous:<anonymousId>",
            extra_json_schema={
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    {"type": "string", "pattern": "^(user|anonymous):.+$"},
                ]
            },
        ),
    ]


class HistoryQuery(Shape):
    source_id: SourceId
    clock: Annotated[Literal["event", "wall"], Meta(description="event time (default) or wall time")] = "event"
    basis: Annotated[
        Literal["current", "model"],
        Meta(
            description="event time: each period's population under the current model (default) or "
            "the segments of the model of the moment (always on wall time)"
        ),
    ] = "current"
    since: Annotated[Moment | None, Meta(description="first snapshot time")] = None
    until: Annotated[Moment | None, Meta(description="last snapshot time")] = None
    lineage: Annotated[
        Lineage | None, Meta(description="the model lineage (default: the current model's; `lineages` lists them)")
    ] = None


class AlertsQuery(Shape):
    source_id: SourceId
    since: Annotated[Moment | None, Meta(description="first detection time (event time)")] = None
    until: Annotated[Moment | None, Meta(description="last detection time (event time)")] = None
    lineage: Annotated[Lineage | None, Meta(description="the model lineage (default: the current model's)")] = None


class StatsQuery(Shape):
    source_id: AnySourceId
    local: Local = False


class RejectionsQuery(Shape):
    source_id: AnySourceId
    limit: Annotated[int, Meta(ge=1, le=MAX_REASONS, description="most frequent reasons to list (default 20)")] = (
        DEFAULT_REASONS
    )
    local: Local = False


class JobPath(Shape):
    job: str


class SubscriptionPath(Shape):
    subscription_id: str


class DeliveriesQuery(Shape):
    local: Local = False


class TriggerRequest(Shape):
    source_id: SourceId
    events_path: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=255,
            pattern="^[^/\\s\\x00][^\\x00]*\\.csv$",
            description="a regular .csv file under AMPELIOS_DATA_DIR, relative to it, with no '..' part "
            "(GET /files lists them)",
            examples=["events.csv"],
        ),
    ]


class NewSubscription(Shape, forbid_unknown_fields=True):
    url: Annotated[
        str,
        Meta(
            pattern="^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s]*)?$",
            description="http or https URL the deliveries are POSTed to",
        ),
    ]
    source_id: SourceId
    secret: Annotated[
        str,
        Meta(
            pattern="^whsec_([A-Za-z0-9+/]{4}){6,}$",
            description="whsec_ and base64 of at least 16 bytes (default: a new one)",
        ),
    ] = ""
    segments: (
        Annotated[
            list[Annotated[str, Meta(pattern=f"^({'|'.join(KINDS)})( .+)?$")]],
            Meta(min_length=1, description="labels or kinds, e.g. cart abandoners (null or left out: every segment)"),
        ]
        | None
    ) = None


SegmentCall = Annotated[
    dict[str, Any],
    Meta(description="a Segment call: userId or anonymousId, event, properties, timestamp"),
]

BROWSER_CALLS = {"t": "track", "p": "page", "i": "identify", "a": "alias", "g": "group", "s": "screen", "b": "batch"}


class BrowserCallPath(Shape):
    call: Annotated[
        Literal["t", "p", "i", "a", "g", "s", "b"],
        Meta(
            description="the first letter of the call's type, as analytics.js posts it: t(rack), p(age), "
            "i(dentify), a(lias), g(roup), s(creen), b(atch)"
        ),
    ]


class Dropped(Shape):
    success: bool


class SourceConfigQuery(Shape):
    writeKey: Annotated[str, Meta(description="one of AMPELIOS_WRITE_KEYS (else the Basic auth user)")] = ""


class RudderSource(Shape):
    id: str
    name: str
    writeKey: str
    workspaceId: str
    enabled: bool
    config: dict[str, Any]
    destinations: list[Any]


class SourceConfig(Shape):
    """What RudderStack's JavaScript SDK fetches as its source's configuration: no device-mode
    destination, every call to the data plane (this worker)."""

    isHosted: bool
    source: RudderSource


class WriteKeyPath(Shape):
    write_key: Annotated[str, Meta(description="one of AMPELIOS_WRITE_KEYS")]


class BundlePath(Shape):
    bundle: Annotated[str, Meta(description="a chunk of the library's build, as the library names it")]


class SegmentIntegration(Shape):
    apiKey: str
    apiHost: Annotated[str, Meta(description="host and /v1 of the worker the settings came from")]
    protocol: Literal["http", "https"]
    unbundledIntegrations: list[str]
    addBundledMetadata: bool


class LibrarySettings(Shape):
    """The settings analytics.js fetches from its CDN: the Segment.io destination pointed
    at this worker, every call enabled, the library's own metrics off."""

    integrations: dict[str, SegmentIntegration]
    plan: dict[str, Any]
    edgeFunction: dict[str, Any]
    analyticsNextEnabled: bool
    middlewareSettings: dict[str, Any]
    enabledMiddleware: dict[str, Any]
    metrics: dict[str, Any]
    legacyVideoPluginsEnabled: bool
    remotePlugins: list[Any]


class SegmentBatch(Shape):
    batch: list[SegmentCall]


# ---- answers ------------------------------------------------------------------------------


class Error(Shape):
    error: str


class Health(Shape):
    status: Literal["ok", "recovering"]


class Segment(Shape):
    id: Count
    label: str
    users: Annotated[Count | list[Int64], Meta(description="visitors in the segment, or their ids with verbose=true")]
    share: Share
    centroid: Features
    summary: Annotated[str, Meta(description="what the mean member did, in plain words")]
    advice: Annotated[str, Meta(description="what a marketer may do with the segment")]
    action: Annotated[Literal["keep", "target", "nurture", "ignore", "none"], Meta(description="the advice in a word")]


class Quality(Shape):
    k: int
    inertia: Annotated[float, Meta(description="mean squared distance to the centroid")]
    davies_bouldin: Annotated[float, Meta(description="lower: segments better apart")]
    smallest_share: Share
    kinds: Annotated[int, Meta(description="different kinds of name among the segments")]
    labels: list[str]
    actionable: Annotated[bool, Meta(description="the rule's test")]


class KQuality(Shape):
    source_id: int
    visitors: Count
    k: Annotated[int | None, Meta(description="the k of the current model")]
    setting: Annotated[int | Literal["auto"], Meta(description="AMPELIOS_K for the source")]
    chosen: Annotated[int, Meta(description="the k the rule chooses for this population")]
    rule: str
    qualities: list[Quality]


class Member(Shape):
    visitorid: Int64
    features: Features


class Members(Shape):
    source_id: int
    segment: int
    label: str
    model_version: Annotated[int, Meta(description="the model every page of this listing uses")]
    members: list[Member]
    next: Annotated[str | None, Meta(description="pass as after for the next page; null: no more")]


class Session(Shape):
    start: Annotated[int, Meta(description="Unix milliseconds")]
    end: Annotated[int, Meta(description="Unix milliseconds")]
    state: Annotated[list[Count], Meta(min_length=3, max_length=3, description="views, add-to-carts, transactions")]


class Distance(Shape):
    segment: int
    label: str
    distance: Annotated[float, Meta(ge=0)]


class Nearest(Shape):
    segment: int
    label: str


class Reason(Shape):
    feature: str
    visitor: Annotated[float, Meta(description="the visitor's value")]
    segment_mean: Annotated[float, Meta(description="its segment's mean member")]
    other_mean: Annotated[float, Meta(description="the nearest other segment's mean member")]
    share: Share
    says: Annotated[str, Meta(description="the same in words")]


class Why(Shape):
    segment: int
    distances: Annotated[
        list[Distance], Meta(description="distance to every segment with members in the model's space, nearest first")
    ]
    nearest_other: Nearest | None
    reasons: Annotated[
        list[Reason],
        Meta(
            max_length=3,
            description="the features that place the visitor here rather than in the nearest other segment",
        ),
    ]


class Visitor(Shape):
    visitorid: Int64
    source_id: int
    original_id: Annotated[
        str | None,
        Meta(
            description="a collected visitor's original id (user:<userId> or anonymous:<anonymousId>); "
            "null for a visitor of a file or producer"
        ),
    ]
    sessions: list[Session]
    state: Annotated[list[int], Meta(min_length=3, max_length=3)]
    features: Features
    segment: int | None
    active: bool
    label: str | None
    why: Annotated[Why | None, Meta(description="why the visitor is in its segment (null when it is in none)")]
    transitions: list[dict[str, Any]] | None
    transitions_error: str | UnsetType = UNSET


class ModelChange(Shape):
    at: Moment
    model_version: int
    before: list[str]
    after: list[str]


class LineageSpan(Shape):
    lineage: str
    first_seen: Moment
    last_seen: Moment


class History(Shape, kw_only=True):
    source_id: int
    clock: Literal["event", "wall"]
    basis: Annotated[
        Literal["current", "model"],
        Meta(
            description="current: every period's population under one model (model_version); "
            "model: each snapshot under the model of its moment"
        ),
    ]
    lineage: Annotated[str, Meta(description="the model lineage of these snapshots")]
    lineages: Annotated[
        list[LineageSpan],
        Meta(description="every model lineage of the source, oldest first (segment ids mean one thing in one)"),
    ]
    model_version: Annotated[int | UnsetType | None, Meta(description="with basis current: the model's version")] = (
        UNSET
    )
    model_changes: Annotated[
        list[ModelChange] | UnsetType,
        Meta(description="with basis current: settlings that renamed segments (never drawn as a shift)"),
    ] = UNSET
    snapshots: list[dict[str, Any]]


class Alert(Shape):
    id: str
    signal: Annotated[
        Literal["purchase_rate", "conversion", "events_per_visitor", "share"],
        Meta(
            description="buyers / visitors, transactions / add-to-carts, events / visitors, "
            "or a segment's share of the visitors (of one period)"
        ),
    ]
    segment: Annotated[int | None, Meta(description="for share: the segment")]
    label: str | None
    direction: Literal["up", "down"]
    before: Annotated[float, Meta(description="the signal's level before the shift")]
    after: Annotated[float, Meta(description="its level after, until detected")]
    started_at: Annotated[Moment, Meta(description="event time")]
    detected_at: Annotated[Moment, Meta(description="event time")]
    recovered_at: Moment | None
    recovery_detected_at: Moment | None


class Alerts(Shape):
    source_id: int
    lineage: str
    alerts: list[Alert]


class Counts(Shape):
    events: Count
    visitors: Count
    rejected: Count
    ignored: Annotated[Count, Meta(description="events whose name AMPELIOS_EVENT_MAP ignores")]
    forwarded: Annotated[
        Count, Meta(description="events that arrived on a partition not owning their visitor, forwarded to the owner")
    ]
    late: Annotated[
        Count,
        Meta(
            description="events AMPELIOS_ACTIVE_DAYS (or AMPELIOS_LATENESS_DAYS) or more older than their partition's "
            "newest: not applied; and the summarized events of visitors linked to another"
        ),
    ]


class Stats(Counts):
    model_version: int | None
    lag: Count
    sink_lag: Count
    sink_error: str | None


class LocalStats(Counts):
    """with local=true: the counts of this worker's partitions only"""

    partitions: list[Count]


class Example(Shape):
    position: Annotated[str, Meta(description="file:line, or topic:partition:offset")]
    raw: Annotated[str, Meta(description="what the row or message held (its first 200 characters)")]


class RejectionReason(Shape):
    reason: str
    count: Annotated[int, Meta(ge=1)]
    examples: Annotated[
        list[Example], Meta(max_length=3, description="the first rows or messages rejected for this reason")
    ]


class Rejections(Shape):
    source_id: int
    rejected: Count
    reasons: list[RejectionReason]


class JobStarted(Shape):
    job: str
    status_url: str


class Job(Shape):
    job: str
    source_id: int
    events_path: str
    state: Literal["running", "done", "failed"]
    rows: int
    rows_sent: int
    rows_rejected: int
    rows_ignored: Annotated[int, Meta(description="rows whose event AMPELIOS_EVENT_MAP ignores")]
    rejections: Annotated[list[RejectionReason], Meta(description="the 10 most frequent reasons")]
    events: int
    error: str | None
    started_at: float
    finished_at: float | None


class DataFile(Shape):
    name: str
    bytes: Count


class Files(Shape):
    files: list[DataFile]


class RejectedCall(Shape):
    index: int
    reason: str


class CollectorAnswer(Shape):
    success: bool
    accepted: Annotated[int, Meta(description="events sent to the broker")]
    ignored: Annotated[int, Meta(description="calls that are not e-commerce events")]
    rejected: list[RejectedCall]


class Subscription(Shape):
    id: str
    url: str
    source_id: int
    segments: list[str] | None
    defined_in: Literal["AMPELIOS_WEBHOOKS", "POST /webhooks"]
    deliveries_url: str


class NewlySubscribed(Subscription):
    secret: str


class Subscriptions(Shape):
    subscriptions: list[Subscription]


class Deleted(Shape):
    deleted: str


class Delivery(Shape):
    id: Annotated[str, Meta(description="the webhook-id (idempotency key) every attempt carried")]
    type: Literal["members", "changes"]
    size: Annotated[int, Meta(description="members, or enters and exits, it holds")]
    created: Moment
    attempts: int
    status: Annotated[int | None, Meta(description="the receiver's last answer (null: none)")]
    error: str | None
    delivered: Moment | None
    worker: str


class Deliveries(Shape):
    subscription: str
    deliveries: list[Delivery]
