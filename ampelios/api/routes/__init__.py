"""The routes, one module per resource; :data:`OPERATIONS` is every operation, in the
order ``/openapi.json`` and docs/api.md list them."""

from ampelios.api.http import Operation
from ampelios.api.routes import collector, history, operations, replay, segments, visitors, webhooks

OPERATIONS: list[Operation] = [
    *segments.routes.operations,
    *visitors.routes.operations,
    *history.routes.operations,
    *collector.routes.operations,
    *webhooks.routes.operations,
    *replay.routes.operations,
    *operations.routes.operations,
]
