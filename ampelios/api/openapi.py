"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``, generated from
the routes' declarations (:class:`~ampelios.api.http.Operation`) and the contract's types
(:mod:`ampelios.api.contract`) by msgspec's JSON Schema generator.

The test suite runs schemathesis against a live worker with it: every documented status,
every field of every answer.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from ampelios import __version__
from ampelios.api.contract import MAX_BODY_BYTES, Error
from ampelios.api.http import Operation

REF = "#/components/schemas/{name}"

MEANINGS = {
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


def _types(operations: Iterable[Operation]) -> list[Any]:
    """Every type an operation's body or answer names (a tuple of types: any of them)."""
    found: list[Any] = [Error]
    for op in operations:
        if op.body is not None:
            found.append(op.body)
        for _, shape in op.answers.values():
            shapes = shape.values() if isinstance(shape, dict) else shape if isinstance(shape, tuple) else (shape,)
            found.extend(shapes)
    return found


class _Schemas:
    """The JSON Schema of each type, with the structs among them as components."""

    def __init__(self, types: Sequence[Any]) -> None:
        schemas, self.components = msgspec.json.schema_components(types, ref_template=REF)
        self.of = dict(zip(types, schemas, strict=True))

    def schema(self, shape: Any) -> dict[str, Any]:
        if isinstance(shape, tuple):
            return {"anyOf": [self.of[s] for s in shape]}
        return self.of[shape]

    def content(self, shape: Any) -> dict[str, Any]:
        media = shape if isinstance(shape, dict) else {"application/json": shape}
        return {kind: {"schema": self.schema(s)} for kind, s in media.items()}


def _parameters(shape: type | None, where: str) -> list[dict[str, Any]]:
    """One OpenAPI parameter per field of a query or path type; an optional field's
    ``| None`` is left out (a parameter left out is the default)."""
    if shape is None:
        return []
    hints = typing.get_type_hints(shape, include_extras=True)
    parameters = []
    for f in msgspec.inspect.type_info(shape).fields:
        schema = msgspec.json.schema(hints[f.name])
        schema.pop("$defs", None)
        choices = schema.get("anyOf", [])
        if any(choice == {"type": "null"} for choice in choices):
            (kept,) = [choice for choice in choices if choice != {"type": "null"}]
            schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept}
        if "anyOf" in schema:  # the field's own choices (a visitor id: a number or user:<id>)
            schema.pop("type", None)
        description = schema.pop("description", None)
        if f.default not in (msgspec.NODEFAULT, None):
            schema["default"] = f.default
        parameter = {"name": f.encode_name, "in": where, "required": f.required or where == "path", "schema": schema}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _guarded(op: Operation, token_required: bool, visitors_protected: bool) -> bool:
    """Whether the operation needs the bearer token as configured."""
    return (op.guard == "writes" and token_required) or (op.guard in ("visitors", "verbose") and visitors_protected)


def _operation(op: Operation, schemas: _Schemas, token_required: bool, visitors_protected: bool) -> dict[str, Any]:
    guarded = _guarded(op, token_required, visitors_protected)
    document: dict[str, Any] = {"summary": op.summary}
    if op.description:
        document["description"] = op.description
    parameters = _parameters(op.path_params, "path") + _parameters(op.query, "query")
    if parameters:
        document["parameters"] = parameters
    if op.security is not None:
        document["security"] = [{op.security: []}]
    elif op.guard != "none":
        document["security"] = [{"bearer": []}] if guarded else []
    if op.body is not None:
        document["requestBody"] = {"required": True, "content": schemas.content(op.body)}
    responses = {str(s): {"description": d, "content": schemas.content(shape)} for s, (d, shape) in op.answers.items()}
    statuses = set(op.errors) | ({401} if guarded else set())
    if op.query is not None or op.path_params is not None:
        statuses.add(400)  # a parameter that does not fit its type
    error = schemas.content(Error)
    for status in sorted(statuses):
        responses[str(status)] = {"description": op.error_meanings.get(status, MEANINGS[status]), "content": error}
    document["responses"] = responses
    return document


def openapi_document(
    operations: Sequence[Operation], token_required: bool, visitors_protected: bool = False
) -> dict[str, Any]:
    """The document of ``operations`` (:data:`ampelios.api.routes.OPERATIONS`): with
    ``token_required``, writes say they need the bearer token; with ``visitors_protected``,
    so do the reads that show visitors."""
    schemas = _Schemas(_types(operations))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas, token_required, visitors_protected)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ampelios",
            "version": __version__,
            "description": "Behaviour-based customer segments from browser events.",
        },
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "writeKey": {"type": "http", "scheme": "basic", "description": "the write key as the user"},
            },
        },
        "paths": paths,
    }
