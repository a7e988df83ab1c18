"""The HTTP API every worker serves: routes, their contract, the request guard, member
listings, and webhook subscriptions with their deliveries."""
