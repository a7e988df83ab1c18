"""Browser events: the schema, CSV parsing, validation and the wire format.

An event is one row of the Retailrocket ``events.csv`` schema plus the site it came from:

=============  ======================================================================
column         meaning and valid values
=============  ======================================================================
source_id      the site (one site = one source); integer, 0 <= id < 2**31
timestamp      Unix time in milliseconds, 2000-01-01 <= t < 2100-01-01
visitorid      integer, 0 <= id < 2**63
event          ``view``, ``addtocart`` or ``transaction``
itemid         integer >= 0; empty or absent means unknown (stored as -1)
transactionid  integer >= 0; empty or absent means none (stored as -1)
=============  ======================================================================

Events travel as columns (:class:`EventBatch`, numpy arrays of equal length), never as
one Python object per event. On Kafka a message is one JSON object with these keys,
holding either one event (scalars) or many (equal-length arrays)::

    {"source_id": 1, "timestamp": 1433221332117, "visitorid": 257598,
     "event": "view", "itemid": 355908, "transactionid": null}
    {"source_id": 1, "timestamp": [1433221332117, ...], "visitorid": [257598, ...],
     "event": ["view", ...], "itemid": [355908, ...], "transactionid": [null, ...]}

A bad row or message is never fatal: it becomes a :class:`Rejection` that says where it
was and why, and everything else goes on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

VIEW, ADDTOCART, TRANSACTION = 0, 1, 2
EVENT_NAMES: tuple[str, ...] = ("view", "addtocart", "transaction")
EVENT_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_NAMES)}
IGNORE = "ignore"  # what a site's event name maps to when Ampelios should skip it
IGNORED = 254  # the code of such an event: read, counted as ignored, never a journey's
# A link, never a journey's event: visitor ``visitorid`` is the same person as visitor
# ``itemid`` (an anonymous id linked to a user), whose journey takes in its events.
MERGE, MERGE_NAME = 253, "$merge"
MERGE_NEEDS_TARGET = "a $merge row needs another visitor to link to, in itemid"
_WIRE_NAMES = np.array([{**dict(enumerate(EVENT_NAMES)), MERGE: MERGE_NAME}.get(c) for c in range(256)], dtype=object)


def event_codes(event_map: Mapping[str, str]) -> dict[str, int]:
    """The event names Ampelios reads, with their codes: its own (``EVENT_NAMES``) and a
    site's names mapped onto them or onto ``ignore`` (``AMPELIOS_EVENT_MAP``); any other
    name is rejected.

    >>> codes = event_codes({"purchase": "transaction", "page_view": "ignore"})
    >>> codes["purchase"], codes["page_view"] == IGNORED
    (2, True)
    """
    unknown = sorted(set(event_map.values()) - {*EVENT_NAMES, IGNORE})
    if unknown:
        raise ValueError(f"events can map only to {', '.join(EVENT_NAMES)} or {IGNORE}, not {', '.join(unknown)}")
    targets = {**EVENT_CODES, IGNORE: IGNORED}
    return {**EVENT_CODES, MERGE_NAME: MERGE, **{name: targets[target] for name, target in event_map.items()}}


MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive)
MAX_SOURCE_ID = 2**31 - 1
REQUIRED_COLUMNS = ("timestamp", "visitorid", "event")
OPTIONAL_COLUMNS = ("itemid", "transactionid")
COLUMNS = ("source_id", *REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
_RAW_PREVIEW = 200  # characters of a rejected row kept for the dead-letter record


@dataclass(frozen=True)
class Rejection:
    """One row or message that could not be used: where it was, why, and what it held."""

    position: str
    reason: str
    raw: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"position": self.position, "reason": self.reason, "raw": self.raw}


class InvalidMessage(ValueError):
    """A whole Kafka message could not be decoded (not JSON, wrong shape or types)."""


@dataclass(frozen=True)
class EventBatch:
    """Events as equal-length numpy columns (see the module docstring for units)."""

    source_id: np.ndarray  # int64
    timestamp: np.ndarray  # int64, ms
    visitorid: np.ndarray  # int64
    event: np.ndarray  # uint8 code: VIEW, ADDTOCART, TRANSACTION
    itemid: np.ndarray  # int64, -1 = unknown
    transactionid: np.ndarray  # int64, -1 = none

    def __len__(self) -> int:
        return len(self.timestamp)

    @classmethod
    def empty(cls) -> EventBatch:
        return cls.from_columns([], [], [], [], [], [])

    @classmethod
    def from_columns(
        cls,
        source_id: Any,
        timestamp: Any,
        visitorid: Any,
        event: Any,
        itemid: Any,
        transactionid: Any,
    ) -> EventBatch:
        return cls(
            source_id=np.asarray(source_id, dtype=np.int64),
            timestamp=np.asarray(timestamp, dtype=np.int64),
            visitorid=np.asarray(visitorid, dtype=np.int64),
            event=np.asarray(event, dtype=np.uint8),
            itemid=np.asarray(itemid, dtype=np.int64),
            transactionid=np.asarray(transactionid, dtype=np.int64),
        )

    def take(self, index: Any) -> EventBatch:
        """The events at ``index`` (a slice, boolean mask or integer array), in that order."""
        return EventBatch(*(getattr(self, c)[index] for c in COLUMNS))

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        if not batches:
            return EventBatch.empty()
        return EventBatch(*(np.concatenate([getattr(b, c) for b in batches]) for c in COLUMNS))

    def time_order(self) -> np.ndarray:
        """Indices that sort the batch by timestamp (stable: ties keep file order)."""
        return np.argsort(self.timestamp, kind="stable")


def valid_rows(batch: EventBatch) -> tuple[np.ndarray, list[str | None]]:
    """Check every value against the schema; return a mask of good rows and, per row,
    the first reason it is bad (``None`` for good rows). Vectorized over the batch."""
    checks = (
        ((batch.source_id >= 0) & (batch.source_id <= MAX_SOURCE_ID), "source_id out of range"),
        (
            (batch.timestamp >= MIN_TIMESTAMP_MS) & (batch.timestamp < MAX_TIMESTAMP_MS),
            "timestamp outside 2000-01-01..2100-01-01 (expected Unix milliseconds)",
        ),
        (batch.visitorid >= 0, "visitorid is negative"),
        ((batch.event < len(EVENT_NAMES)) | (batch.event == IGNORED) | (batch.event == MERGE), "unknown event"),
        (batch.itemid >= -1, "itemid is negative"),
        (batch.transactionid >= -1, "transactionid is negative"),
        (
            (batch.event != MERGE) | ((batch.itemid >= 0) & (batch.itemid != batch.visitorid)),
            MERGE_NEEDS_TARGET,
        ),
    )
    good = np.ones(len(batch), dtype=bool)
    reasons: list[str | None] = [None] * len(batch)
    for ok, reason in checks:
        for i in np.flatnonzero(good & ~ok):
            reasons[i] = reason
        good &= ok
    return good, reasons


# --------------------------------------------------------------------------- CSV


@dataclass
class ParsedCsv:
    """The good rows of a CSV file (in file order) and every rejected row."""

    events: EventBatch
    rejections: list[Rejection]
    rows: int  # data rows seen (good + rejected + ignored), header excluded
    ignored: int = 0  # rows whose event name AMPELIOS_EVENT_MAP maps to ignore


class CsvError(ValueError):
    """The file as a whole is unusable (no header, or a header without the required
    columns). Row-level problems are :class:`Rejection` values, not this error."""


def _header(line: bytes) -> dict[str, int]:
    text = line.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n").decode("utf-8", "replace")
    names = [name.strip().lower() for name in text.split(",")]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise CsvError(
            f"the header must name the columns {', '.join(REQUIRED_COLUMNS)} "
            f"(optional: {', '.join(OPTIONAL_COLUMNS)}); missing {', '.join(missing)} "
            f"in {text[:_RAW_PREVIEW]!r}"
        )
    return {name: i for i, name in enumerate(names)}


def parse_csv_lines(
    lines: Iterator[bytes], source_id: int, name: str = "csv", codes: Mapping[str, int] = EVENT_CODES
) -> ParsedCsv:
    """Parse CSV lines (bytes, header first) into events of ``source_id``.

    Rows are positioned as ``name:line`` (1-based, the header is line 1). A row with the
    wrong number of fields, a value that is not an integer or out of range, an unknown
    event name (not in ``codes``, see :func:`event_codes`) or an empty line is rejected;
    a row whose event ``codes`` ignore is counted and skipped; the good rows are kept in
    file order.
    """
    if not 0 <= source_id <= MAX_SOURCE_ID:
        raise ValueError(f"source_id must be in 0..{MAX_SOURCE_ID}, got {source_id}")
    first = next(lines, None)
    if first is None:
        raise CsvError(f"{name} is empty: expected a header line")
    columns = _header(first)
    width = len(columns)
    i_ts, i_vid, i_ev = (columns[c] for c in REQUIRED_COLUMNS)
    i_item = columns.get("itemid")
    i_tx = columns.get("transactionid")
    byte_codes = {n.encode(): c for n, c in codes.items()}
    lo, hi, top = MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS, 2**63

    ts: list[int] = []
    vid: list[int] = []
    ev: list[int] = []
    item: list[int] = []
    tx: list[int] = []
    rejections: list[Rejection] = []
    rows = ignored = 0
    for number, line in enumerate(lines, start=2):
        rows += 1
        fields = line.rstrip(b"\r\n").split(b",")
        if len(fields) != width:
            reason = "empty line" if fields == [b""] else f"expected {width} fields, got {len(fields)}"
        else:
            try:
                t, v = int(fields[i_ts]), int(fields[i_vid])
                it = int(fields[i_item]) if i_item is not None and fields[i_item].strip() else -1
                tr = int(fields[i_tx]) if i_tx is not None and fields[i_tx].strip() else -1
            except ValueError:
                reason = _integer_problem(fields, columns)
            else:
                code = byte_codes.get(fields[i_ev].strip())
                if code is None:
                    reason = f"unknown event {fields[i_ev][:40].decode('utf-8', 'replace')!r}"
                elif code == IGNORED:
                    ignored += 1
                    continue
                elif not lo <= t < hi:
                    reason = "timestamp outside 2000-01-01..2100-01-01 (expected Unix milliseconds)"
                elif not 0 <= v < top:
                    reason = "visitorid must be in 0..2**63-1"
                elif not (-1 <= it < top and -1 <= tr < top):
                    reason = "itemid and transactionid must be in 0..2**63-1 or empty"
                elif code == MERGE and (it < 0 or it == v):
                    reason = MERGE_NEEDS_TARGET
                else:
                    ts.append(t)
                    vid.append(v)
                    ev.append(code)
                    item.append(it)
                    tx.append(tr)
                    continue
        raw = line[:_RAW_PREVIEW].decode("utf-8", "replace").rstrip("\r\n")
        rejections.append(Rejection(f"{name}:{number}", reason, raw))
    events = EventBatch.from_columns(np.full(len(ts), source_id), ts, vid, ev, item, tx)
    return ParsedCsv(events, rejections, rows, ignored)


def _integer_problem(fields: list[bytes], columns: dict[str, int]) -> str:
    """Why the integer columns of a row could not be read (the slow path of a bad row)."""
    for column in ("timestamp", "visitorid", "itemid", "transactionid"):
        i = columns.get(column)
        if i is None or (column in OPTIONAL_COLUMNS and not fields[i].strip()):
            continue
        text = fields[i].strip()
        if len(text) > 20 or not text.lstrip(b"-").isdigit():
            return f"{column} is not an integer: {text[:20].decode('utf-8', 'replace')!r}" + (
                f" ({len(text)} characters)" if len(text) > 20 else ""
            )
    return "not an integer"


def read_csv(path: Path | str, source_id: int, codes: Mapping[str, int] = EVENT_CODES) -> ParsedCsv:
    """Parse a whole CSV file (see :func:`parse_csv_lines`)."""
    path = Path(path)
    with path.open("rb") as f:
        return parse_csv_lines(iter(f), source_id, path.name, codes)


def write_csv(events: EventBatch, out: BinaryIO) -> None:
    """Write events in the Retailrocket schema (``source_id`` is not a CSV column)."""
    out.write(b"timestamp,visitorid,event,itemid,transactionid\n")
    names = np.array(EVENT_NAMES, dtype=object)[events.event]
    tx = np.where(events.transactionid >= 0, events.transactionid.astype(str), "")
    rows = zip(events.timestamp.tolist(), events.visitorid.tolist(), names, events.itemid.tolist(), tx)
    out.write("".join(f"{t},{v},{e},{i},{x}\n" for t, v, e, i, x in rows).encode())


# ------------------------------------------------------------------ wire format


def encode_events(events: EventBatch) -> bytes:
    """One Kafka message holding ``events`` (which must share one source) as columns."""
    sources = np.unique(events.source_id)
    if len(sources) > 1:
        raise ValueError("a message holds events of one source only")
    names = _WIRE_NAMES[events.event].tolist()
    tx = events.transactionid
    return orjson.dumps(
        {
            "source_id": int(sources[0]) if len(sources) else 0,
            "timestamp": events.timestamp,
            "visitorid": events.visitorid,
            "event": names,
            "itemid": events.itemid,
            "transactionid": [None if t < 0 else t for t in tx.tolist()],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_each_event(events: EventBatch) -> list[bytes]:
    """One message per event in the single-event form (see the module docstring), what
    most producers send.

    >>> encode_each_event(EventBatch.from_columns([1], [1433221332117], [7], [0], [-1], [-1]))
    [b'{"source_id":1,"timestamp":1433221332117,"visitorid":7,"event":"view","itemid":null,"transactionid":null}']
    """
    columns = (events.source_id, events.timestamp, events.visitorid, events.event, events.itemid, events.transactionid)
    return [
        orjson.dumps(
            {
                "source_id": s,
                "timestamp": t,
                "visitorid": v,
                "event": EVENT_NAMES[e],
                "itemid": i if i >= 0 else None,
                "transactionid": x if x >= 0 else None,
            }
        )
        for s, t, v, e, i, x in zip(*(c.tolist() for c in columns))
    ]


def _int_column(obj: dict[str, Any], key: str, n: int, *, optional: bool) -> np.ndarray:
    value = obj.get(key)
    if value is None:
        if optional:
            return np.full(n, -1, dtype=np.int64)
        raise InvalidMessage(f"missing {key!r}")
    values = value if isinstance(value, list) else [value]
    if len(values) != n:
        raise InvalidMessage(f"{key!r} has {len(values)} values, expected {n}")
    if optional and None in values:
        values = [-1 if x is None else x for x in values]
    if not all(type(x) is int for x in values):
        bad = next(x for x in values if type(x) is not int)
        raise InvalidMessage(f"{key!r} must hold integers, got {bad!r:.40}")
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise InvalidMessage(f"{key!r} holds an integer beyond 64 bits") from None


def decode_events(
    value: bytes, position: str, codes: Mapping[str, int] = EVENT_CODES
) -> tuple[int, EventBatch, list[Rejection]]:
    """Decode one Kafka message (see the module docstring) into its source, its good
    events and the rejections of its bad rows (positioned ``position#i`` when the message
    holds several). Raises :class:`InvalidMessage` when the message as a whole cannot be
    read. Event names are read with ``codes`` (see :func:`event_codes`)."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(obj).__name__}")
    events = obj.get("event")
    if events is None:
        raise InvalidMessage("missing 'event'")
    names = events if isinstance(events, list) else [events]
    n = len(names)
    source = obj.get("source_id")
    if type(source) is not int:
        raise InvalidMessage(f"'source_id' must be an integer, got {source!r:.40}")
    columns = {
        key: _int_column(obj, key, n, optional=key in OPTIONAL_COLUMNS)
        for key in ("timestamp", "visitorid", *OPTIONAL_COLUMNS)
    }
    code = np.fromiter((codes.get(e, 255) if isinstance(e, str) else 255 for e in names), np.uint8, n)
    batch = EventBatch(source_id=np.full(n, source, dtype=np.int64), event=code, **columns)
    good, reasons = valid_rows(batch)
    if good.all():
        return source, batch, []
    rejections = [
        Rejection(f"{position}#{i}" if n > 1 else position, reasons[i] or "invalid", _row_preview(names, i))
        for i in np.flatnonzero(~good)
    ]
    return source, batch.take(good), rejections


UNKNOWN_SOURCE = -1  # the source of a message whose source could not be read


@dataclass
class DecodedRun:
    """The messages of a run decoded together: their good events as one batch, in message
    order, the message each event came from, and every rejection with its source."""

    events: EventBatch
    message: np.ndarray  # (n,) index of each event's message, ascending
    rejections: list[tuple[int, Rejection]]
    ignored_source: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # per ignored event
    ignored_message: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # ascending

    def ignored_in(self, start: int, end: int) -> dict[int, int]:
        """Events of messages ``start <= i < end`` that were ignored, per source."""
        rows = slice(*np.searchsorted(self.ignored_message, [start, end]))
        sources, counts = np.unique(self.ignored_source[rows], return_counts=True)
        return dict(zip(sources.tolist(), counts.tolist(), strict=True))

    def groups(self, messages: int, max_events: int, period_ms: int) -> list[tuple[int, int]]:
        """Split the ``messages`` into consecutive groups ``[start, end)`` to apply as one
        batch each: at most ``max_events`` events (a larger message alone), and a message
        whose latest event falls in a later period of ``period_ms`` than every event of its
        source in the group so far starts a new one (0: no periods). Late events never
        split a group. (A message holds the events of one source.)

        >>> day = 86_400_000
        >>> run = DecodedRun(EventBatch.from_columns([1] * 4, [1, 2, day + 1, 3], [1] * 4, [0] * 4, [-1] * 4,
        ...                  [-1] * 4), np.array([0, 1, 2, 3]), [])
        >>> run.groups(5, 10, day), run.groups(5, 1, 0)
        ([(0, 2), (2, 5)], [(0, 1), (1, 2), (2, 3), (3, 5)])
        """
        bounds = np.searchsorted(self.message, np.arange(messages + 1))  # events of message i: bounds[i:i+2]
        latest = np.full(messages, -1, dtype=np.int64)  # each message's latest event (ms), -1 if none
        source = np.full(messages, -1, dtype=np.int64)
        nonempty = np.flatnonzero(bounds[1:] > bounds[:-1])
        if len(nonempty):
            latest[nonempty] = np.maximum.reduceat(self.events.timestamp, bounds[nonempty])
            source[nonempty] = self.events.source_id[bounds[nonempty]]
        groups: list[tuple[int, int]] = []
        start, periods = 0, {}  # first message of the group; latest period of each source's events in it
        for i, (count, last, src) in enumerate(zip(np.diff(bounds).tolist(), latest.tolist(), source.tolist())):
            current = last // period_ms if period_ms and last >= 0 else -1
            if i > start and (bounds[i] - bounds[start] + count > max_events or 0 <= periods.get(src, -1) < current):
                groups.append((start, i))
                start, periods = i, {}
            periods[src] = max(periods.get(src, -1), current)
        if messages:
            groups.append((start, messages))
        return groups


def decode_run(
    values: Sequence[bytes | None], positions: Sequence[str], codes: Mapping[str, int] = EVENT_CODES
) -> DecodedRun:
    """Decode consecutive Kafka messages (``positions[i]`` says where message ``i`` was):
    as :func:`decode_events` would one by one, but one-event messages -- what most
    producers send -- are gathered and validated together, with no per-message arrays.
    A message that cannot be read is one rejection of source ``UNKNOWN_SOURCE``; events
    whose name ``codes`` ignore are left out and counted (:meth:`DecodedRun.ignored_in`).

    >>> run = decode_run([b'{"source_id": 1, "timestamp": 1433221332117, "visitorid": 7, "event": "view"}',
    ...                   b'not json'], ["events:0:0", "events:0:1"])
    >>> len(run.events), run.message.tolist(), run.rejections[0][0]
    (1, [0], -1)
    """
    singles: list[tuple[int, int, int, int, int, int, int]] = []  # message, source, t, visitor, code, item, tx
    names: list[str] = []
    batches: list[EventBatch] = []
    batch_messages: list[np.ndarray] = []
    rejections: list[tuple[int, Rejection]] = []
    for i, value in enumerate(values):
        obj = _loads_or_none(value)
        single = _single_event(obj, codes) if type(obj) is dict else None
        if single is not None:
            singles.append((i, *single))
            names.append(obj["event"])
            continue
        try:
            source, batch, rejected = decode_events(value or b"", positions[i], codes)
        except InvalidMessage as exc:
            raw = (value or b"")[:_RAW_PREVIEW].decode("utf-8", "replace")
            rejections.append((UNKNOWN_SOURCE, Rejection(positions[i], str(exc), raw)))
            continue
        rejections += [(source, r) for r in rejected]
        batches.append(batch)
        batch_messages.append(np.full(len(batch), i, dtype=np.int64))
    if singles:
        index, source, t, visitor, code, item, tx = (np.array(c, dtype=np.int64) for c in zip(*singles))
        batch = EventBatch(source, t, visitor, code.astype(np.uint8), item, tx)
        good, reasons = valid_rows(batch)
        for row in np.flatnonzero(~good).tolist():
            where = positions[int(index[row])]
            rejection = Rejection(where, reasons[row] or "invalid", _row_preview(names, row))
            rejections.append((int(source[row]), rejection))
        batches.append(batch.take(good))
        batch_messages.append(index[good])
    if not batches:
        return DecodedRun(EventBatch.empty(), np.empty(0, dtype=np.int64), rejections)
    message = np.concatenate(batch_messages)
    order = np.argsort(message, kind="stable")
    events, message = EventBatch.concat(batches).take(order), message[order]
    skip = events.event == IGNORED
    if not skip.any():
        return DecodedRun(events, message, rejections)
    return DecodedRun(events.take(~skip), message[~skip], rejections, events.source_id[skip], message[skip])


def _loads_or_none(value: bytes | None) -> Any:
    try:
        return orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None


def _single_event(obj: dict[str, Any], codes: Mapping[str, int]) -> tuple[int, int, int, int, int, int] | None:
    """(source, timestamp, visitor, code, item, tx) of a well-typed one-event message whose
    integers fit 64 bits (code 255: an unknown name); ``None`` for anything else."""
    source, t, visitor, name = obj.get("source_id"), obj.get("timestamp"), obj.get("visitorid"), obj.get("event")
    item, tx = obj.get("itemid"), obj.get("transactionid")
    if not (type(source) is int and type(t) is int and type(visitor) is int and type(name) is str):
        return None
    item = -1 if item is None else item
    tx = -1 if tx is None else tx
    if not (type(item) is int and type(tx) is int):
        return None
    if not all(-(2**63) <= x < 2**63 for x in (source, t, visitor, item, tx)):
        return None
    return source, t, visitor, codes.get(name, 255), item, tx


def _row_preview(names: list[Any], i: int) -> str:
    return f"event={names[i]!r:.40}"
