"""Webhook subscriptions: list, subscribe, look up and delete them, and their deliveries."""

from __future__ import annotations

from faust.web import Request

from ampelios.api.context import Api
from ampelios.api.contract import (
    Deleted,
    Deliveries,
    DeliveriesQuery,
    NewlySubscribed,
    NewSubscription,
    Subscription,
    SubscriptionPath,
    Subscriptions,
)
from ampelios.api.http import HttpError, Routes, json_body
from ampelios.core.webhooks import Subscription as Subscribed
from ampelios.core.webhooks import SubscriptionRefused
from ampelios.runtime.cluster import own_url

routes = Routes()


def _subscription(api: Api, sub_id: str) -> Subscribed:
    sub = api.webhooks.subscriptions().get(sub_id)
    if sub is None:
        raise HttpError(404, f"no webhook subscription {sub_id!r:.80}")
    return sub


def _shown(api: Api, sub: Subscribed) -> Subscription:
    return Subscription(
        id=sub.id,
        url=sub.url,
        source_id=sub.source_id,
        segments=sub.segments,
        defined_in="AMPELIOS_WEBHOOKS" if sub.id in api.webhooks.fixed else "POST /webhooks",
        deliveries_url=f"/webhooks/{sub.id}/deliveries",
    )


@routes.get(
    "/webhooks",
    "Every webhook subscription (without its secret)",
    answers={200: ("the file's and those made over HTTP", Subscriptions)},
    errors=(503,),
    guard="writes",
)
async def subscriptions(api: Api, request: Request) -> tuple[int, Subscriptions]:
    """Every webhook subscription, without its secret."""
    return 200, Subscriptions(subscriptions=[_shown(api, sub) for sub in api.webhooks.subscriptions().values()])


@routes.post(
    "/webhooks",
    "Subscribe a URL to a source's segment membership: members, then enters and exits",
    body=NewSubscription,
    answers={201: ("subscribed; the secret is shown this once", NewlySubscribed)},
    errors=(400, 403, 408, 413, 415, 503),
    guard="writes",
)
async def subscribe(api: Api, request: Request) -> tuple[int, NewlySubscribed]:
    """Subscribe a URL to a source's segment membership (all segments, or those
    named): the current members, then every enter and exit. The answer holds the
    secret that signs the deliveries (generated unless given), this once. The body is
    read by :meth:`ampelios.core.webhooks.Subscription.from_json`, which says what is wrong."""
    try:
        sub = await api.webhooks.subscribe(await json_body(request))
    except SubscriptionRefused as exc:
        raise HttpError(400, str(exc)) from None
    shown = _shown(api, sub)
    return 201, NewlySubscribed(**{name: getattr(shown, name) for name in shown.__struct_fields__}, secret=sub.secret)


@routes.get(
    "/webhooks/{subscription_id}",
    "One webhook subscription (without its secret)",
    path_params=SubscriptionPath,
    answers={200: ("the subscription", Subscription)},
    errors=(404, 503),
    guard="writes",
)
async def subscription(api: Api, request: Request, path: SubscriptionPath) -> tuple[int, Subscription]:
    """One webhook subscription, without its secret."""
    return 200, _shown(api, _subscription(api, path.subscription_id))


@routes.delete(
    "/webhooks/{subscription_id}",
    "Delete a subscription made with POST /webhooks",
    path_params=SubscriptionPath,
    answers={200: ("deleted: its deliveries stop", Deleted)},
    errors=(403, 404, 409, 503),
    guard="writes",
)
async def unsubscribe(api: Api, request: Request, path: SubscriptionPath) -> tuple[int, Deleted]:
    """Delete a subscription made with POST /webhooks: its deliveries stop."""
    sub = _subscription(api, path.subscription_id)
    if sub.id in api.webhooks.fixed:
        raise HttpError(409, f"{sub.id} is defined in AMPELIOS_WEBHOOKS: remove it there and restart")
    await api.webhooks.unsubscribe(sub.id)
    return 200, Deleted(deleted=sub.id)


@routes.get(
    "/webhooks/{subscription_id}/deliveries",
    "The last deliveries of a subscription, newest first (each worker keeps its last 100)",
    path_params=SubscriptionPath,
    query=DeliveriesQuery,
    answers={200: ("newest first", Deliveries)},
    errors=(404, 503),
    guard="writes",
)
async def deliveries(
    api: Api, request: Request, path: SubscriptionPath, query: DeliveriesQuery
) -> tuple[int, Deliveries]:
    """The last deliveries of a subscription (each worker keeps its last 100),
    newest first: id (the webhook-id), type, size, attempts, last status and
    error, when delivered."""
    sub = _subscription(api, path.subscription_id)
    me = own_url(api.p.app)
    found = [{**entry, "worker": me} for entry in api.webhooks.deliveries(sub.id)]
    if not query.local:
        for url in api.peers():
            found += (await api.peer_answer(url, f"/webhooks/{sub.id}/deliveries?local=true"))["deliveries"]
    found.sort(key=lambda entry: entry["created"], reverse=True)
    return 200, Deliveries(subscription=sub.id, deliveries=found)
