"""The worker's web server (Faust's aiohttp server): every route of :mod:`ampelios.api.routes`
served as declared, the dashboard, and JSON errors everywhere.

Each request is read into its declared types, answered by its handler and encoded
(:mod:`ampelios.api.http`). Errors are ``{"error": "..."}`` with status 400 (bad request),
401 (no bearer token ``AMPELIOS_API_TOKEN`` where one is needed), 404 (unknown), 405, 413
(a body over 64 KiB) or 503 (the worker is still recovering its tables after a start or
rebalance, or Postgres is unavailable: retry); never a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from faust.web import Request, Response, View

from ampelios import internals
from ampelios.api.context import Api
from ampelios.api.http import HttpError, Operation, StreamCut, encode, read_text
from ampelios.api.routes import OPERATIONS
from ampelios.api.web_guard import connection_options, guard
from ampelios.api.webhooks import Webhooks
from ampelios.runtime.cluster import PeerUnavailable
from ampelios.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"  # the dashboard's files


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors outside the views (unknown path, wrong method) answer JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        body = orjson.dumps({"error": exc.reason})
        return web.Response(body=body, status=exc.status, content_type="application/json", headers=headers)


def _serve(api: Api, op: Operation) -> Any:
    """The view method of an operation: check the token and the worker's state, read the
    request into its types, run the handler, encode its answer."""
    settings = api.p.settings

    async def method(view: View, request: Request, **path: str) -> Response | web.StreamResponse:
        try:
            if op.guard == "writes" or (op.guard == "visitors" and settings.protect_visitors):
                api.authorize(request)
            if op.needs_state and not api.p.ready():
                raise HttpError(503, "the worker is recovering its state; retry shortly")
            read: dict[str, Any] = {}
            if op.path_params is not None:
                read["path"] = read_text(op.path_params, path, "path")
            if op.query is not None:
                read["query"] = read_text(op.query, request.query)
            answer = await op.handler(api, request, **read)
            if isinstance(answer, web.StreamResponse):
                return answer  # streamed or not JSON; an error once it has begun cuts the connection
            status, body = answer
        except HttpError as exc:
            status, body = exc.status, {"error": str(exc)}
        except PeerUnavailable as exc:
            status, body = 503, {"error": f"{exc}; retry"}
        except StreamCut:
            raise
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            status, body = 500, {"error": f"internal error: {exc!r:.200}"}
        return view.bytes(encode(body), content_type="application/json", status=status)

    method.__name__ = op.method
    method.__doc__ = op.handler.__doc__
    return method


def register(p: Pipeline, webhooks: Webhooks, operations: Sequence[Operation] = OPERATIONS) -> None:
    """Serve ``operations`` and the dashboard on the worker's web server."""
    app = p.app
    app.web.web_app.middlewares.extend([guard(p.settings), _json_errors])
    internals.serve_connections_with(app.web, connection_options())
    app.web.add_static("/static/", STATIC)

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            """The dashboard (ampelios/web/static): segments, history, replays, look-ups."""
            return self.bytes((STATIC / "index.html").read_bytes(), content_type="text/html")

    api = Api.of(p, webhooks, operations)
    by_path: dict[str, dict[str, Any]] = {}
    for op in operations:
        by_path.setdefault(op.path, {})[op.method] = _serve(api, op)
    for path, methods in by_path.items():
        name = "View" + re.sub(r"\W+", "_", path)  # a Python name, as Faust names the route by it
        app.page(path)(type(name, (View,), methods))
