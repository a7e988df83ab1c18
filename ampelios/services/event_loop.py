"""The worker's event loop: uvloop, which makes a full-scale replay take 30 s instead of 42
(docs/performance.md), with one fix for aiopg.

aiopg leaves its reader registered on a socket that failed to connect (aio-libs/aiopg#909);
the operating system then gives the same descriptor number to the next connection, and
uvloop refuses to watch it ("the handler is closed"), so the Postgres sink could never
reconnect after an outage. :class:`EventLoop` drops such a stale reader and watches the
new socket. The standard library's loop replaces a stale reader silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvloop


class EventLoop(uvloop.Loop):  # type: ignore[misc]
    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        try:
            super().add_reader(fd, callback, *args)
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
                raise
            self.remove_reader(fd)
            super().add_reader(fd, callback, *args)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return EventLoop()


def install() -> None:
    """Make :class:`EventLoop` the loop of every thread that asks for a new one."""
    asyncio.set_event_loop_policy(EventLoopPolicy())
