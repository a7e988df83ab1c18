"""How a route is declared, and what every route shares: reading its request into the
contract's types (:mod:`ampelios.api.contract`), its errors, and encoding its answer.

A route is a handler declared with :meth:`Routes.get` (``post``, ``delete``): its path,
summary, query, path and body types, answer types per status and error statuses. The
declaration is the whole of what :mod:`ampelios.api.openapi` documents and what
:mod:`ampelios.api.server` serves, so the two cannot drift apart::

    routes = Routes()

    @routes.get("/alerts", "Shifts of a source's signals", query=AlertsQuery,
                answers={200: ("oldest first", Alerts)}, errors=(400, 404, 503))
    async def alerts(api: Api, request: Request, query: AlertsQuery) -> tuple[int, Alerts]: ...

Errors are ``{"error": "..."}`` (:class:`HttpError`); a query or body that does not fit its
type is a 400 that names the field and what it must be.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
from faust.web import Request

from ampelios.api.contract import MAX_BODY_BYTES
from ampelios.api.web_guard import BODY_SECONDS

Guard = Literal["none", "writes", "visitors", "verbose"]
INT64_MAX = 2**63 - 1


class HttpError(Exception):
    """An answer ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamCut(Exception):
    """A streamed answer failed after it began: the connection is cut, so that the client
    sees an incomplete transfer rather than a short file."""


@dataclass(frozen=True)
class Operation:
    """One method of one path: the handler and everything the OpenAPI document says of it.

    ``guard``: ``writes`` needs the API token when one is set; ``visitors`` needs it when
    ``AMPELIOS_PROTECT_VISITORS`` is set too (the answer shows visitors); ``verbose`` the
    same, for ``verbose=true`` only. ``needs_state``: 503 while the worker recovers its
    tables. ``answers``: status -> (description, type, or media type -> type).
    """

    method: str
    path: str
    summary: str
    handler: Callable[..., Any]
    answers: Mapping[int, tuple[str, Any]]
    errors: tuple[int, ...] = ()
    error_meanings: Mapping[int, str] = field(default_factory=dict)
    description: str | None = None
    query: type | None = None
    path_params: type | None = None
    body: Any = None
    guard: Guard = "none"
    needs_state: bool = True
    security: str | None = None  # a scheme other than the bearer token (the collector's writeKey)


class Routes:
    """The operations of one resource, in the order they are declared."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def _add(self, method: str, path: str, summary: str, **declared: Any) -> Callable[[Any], Any]:
        def declare(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.operations.append(Operation(method, path, summary, handler, **declared))
            return handler

        return declare

    def get(self, path: str, summary: str, **declared: Any) -> Callable[[Any], Any]:
        return self._add("get", path, summary, **declared)

    def post(self, path: str, summary: str, **declared: Any) -> Callable[[Any], Any]:
        return self._add("post", path, summary, **declared)

    def delete(self, path: str, summary: str, **declared: Any) -> Callable[[Any], Any]:
        return self._add("delete", path, summary, **declared)


# ---- reading a request into its type -----------------------------------------------------


def _field_kind(info: Any) -> tuple[Any, dict[str, Any]]:
    """A field's type info without its metadata and ``| None``, and its JSON Schema extras."""
    extra: dict[str, Any] = {}
    while isinstance(info, msgspec.inspect.Metadata):
        extra.update(info.extra_json_schema or {})
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        kinds = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(kinds) == 1:
            return _field_kind(kinds[0])[0], extra
    return info, extra


@dataclass(frozen=True)
class _Field:
    name: str
    wire: str  # its name in the query, path or body
    kind: Any  # its type's info, without metadata and ``| None``
    extra: dict[str, Any]  # its JSON Schema extras (examples)
    required: bool


@functools.cache
def _fields(shape: type) -> tuple[_Field, ...]:
    """The fields of a request type, inspected once (not on every request)."""
    fields = []
    for f in msgspec.inspect.type_info(shape).fields:
        kind, extra = _field_kind(f.type)
        fields.append(_Field(f.name, f.encode_name, kind, extra, f.required))
    return tuple(fields)


def _missing(name: str, extra: dict[str, Any], where: str) -> HttpError:
    examples = extra.get("examples")
    if not examples:
        return HttpError(400, f"{name} is required")
    example = f"?{name}={examples[0]}" if where == "query" else f"{name}: {orjson.dumps(examples[0]).decode()}"
    return HttpError(400, f"{name} is required, e.g. {example}")


def parse_int(raw: Any, name: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """An integer in ``lo..hi`` from text or JSON (``7.0`` is 7, as in JSON Schema)."""
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+\.0*", raw):
        raw = raw.partition(".")[0]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise HttpError(400, f"{name} must be an integer, got {raw!r:.40}") from None
    if type(raw) is bool or not lo <= value <= hi:
        raise HttpError(400, f"{name} must be an integer in {lo}..{hi}, got {raw!r:.40}")
    return value


def parse_moment(raw: str, name: str) -> datetime:
    """A UTC time: ISO 8601 (``2015-06-01``, ``2015-06-01T12:00Z``) or Unix milliseconds."""
    try:
        if raw.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
        moment = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise HttpError(400, f"{name} must be an ISO 8601 time or Unix milliseconds, got {raw!r:.40}") from None


def _from_text(raw: str, name: str, kind: Any) -> Any:
    inspect = msgspec.inspect
    if isinstance(kind, inspect.IntType):
        lo = kind.ge if kind.ge is not None else -(2**63)
        return parse_int(raw, name, lo, kind.le if kind.le is not None else INT64_MAX)
    if isinstance(kind, inspect.BoolType):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise HttpError(400, f"{name} must be true or false, got {raw!r:.40}")
        return raw.lower() in ("true", "1")
    if isinstance(kind, inspect.LiteralType):
        if raw not in kind.values:
            raise HttpError(400, f"{name} must be one of {', '.join(map(str, kind.values))}, got {raw!r:.40}")
        return raw
    if isinstance(kind, inspect.DateTimeType):
        return parse_moment(raw, name)
    return raw  # text: its pattern and length are the handler's to explain


def read_text(shape: type, values: Mapping[str, str], where: str = "query") -> Any:
    """``values`` (a query or a path's parameters) as ``shape``: a 400 naming the first
    field that is missing or not of its type; unknown parameters are ignored."""
    read: dict[str, Any] = {}
    for f in _fields(shape):
        raw = values.get(f.wire)
        if raw is None:
            if f.required:
                raise _missing(f.wire, f.extra, where)
            continue
        read[f.name] = _from_text(raw, f.wire, f.kind)
    return shape(**read)


def read_body(shape: type, body: Mapping[str, Any]) -> Any:
    """A JSON object body as ``shape``: JSON integers (``1.0`` is 1) in range and strings."""
    read: dict[str, Any] = {}
    for f in _fields(shape):
        if f.wire not in body:
            if f.required:
                raise _missing(f.wire, f.extra, "body")
            continue
        raw = body[f.wire]
        example = orjson.dumps((f.extra.get("examples") or [None])[0]).decode()
        if isinstance(f.kind, msgspec.inspect.IntType):
            if type(raw) is float and raw.is_integer():
                raw = int(raw)
            if type(raw) is not int:
                raise HttpError(400, f"{f.wire} must be a JSON integer, e.g. {example}, got {orjson.dumps(raw)[:40]!r}")
            raw = _from_text(str(raw), f.wire, f.kind)
        elif isinstance(f.kind, msgspec.inspect.StrType) and not isinstance(raw, str):
            raise HttpError(400, f"{f.wire} must be a string, e.g. {example}")
        read[f.name] = raw
    return shape(**read)


async def json_body(request: Request, limit: int = MAX_BODY_BYTES, too_large: int = 413) -> dict[str, Any]:
    """The request's JSON object body, at most ``limit`` bytes (else status ``too_large``)."""
    if (request.content_length or 0) > limit:
        raise HttpError(too_large, f"the body must be at most {limit} bytes")
    try:
        raw = await asyncio.wait_for(request.content.read(limit + 1), BODY_SECONDS)
    except TimeoutError:
        raise HttpError(408, f"the body did not arrive within {BODY_SECONDS:.0f} s") from None
    if len(raw) > limit:
        raise HttpError(too_large, f"the body must be at most {limit} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HttpError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


# ---- encoding an answer -------------------------------------------------------------------


def _numpy(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_numpy)


def encode(answer: Any) -> bytes:
    """An answer (a contract type, or JSON values as the core or another worker gave them)
    as JSON; datetimes in RFC 3339 with ``Z``, numpy scalars and arrays as numbers."""
    return _ENCODER.encode(answer)
