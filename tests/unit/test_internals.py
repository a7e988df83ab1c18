"""The adapter of other libraries' private names refuses a version that lacks one."""

import asyncio
import socket

import aiopg
import psycopg2
import pytest
import uvloop
from faust.transport.consumer import Consumer

from ampelios import internals
from ampelios.services.processes import free_port


def test_the_installed_versions_have_every_name_used():
    internals.check()


def test_a_missing_private_name_stops_the_start_with_one_line_naming_the_versions(monkeypatch):
    monkeypatch.delattr(Consumer, "_commit_offsets")
    with pytest.raises(internals.IncompatibleLibrary) as raised:
        internals.check()
    message = str(raised.value)
    assert "\n" not in message
    assert "faust-streaming==0.15.3" in message and "aiokafka==0.14.0" in message
    assert "faust.transport.consumer.Consumer._commit_offsets missing" in message


def test_a_refused_postgres_connection_leaves_no_watch_on_the_descriptor_the_next_socket_gets():
    """Found by the fault campaign (seed 3): after Postgres refused a connection, every
    webhook delivery of the worker failed with "unable to perform operation on <UVPoll
    closed=True>" (aiopg left a writer on the descriptor; see
    internals.forget_failed_postgres_connections)."""
    internals.forget_failed_postgres_connections()
    refusing = f"postgresql://nobody:nothing@localhost:{free_port()}/none"  # nothing listens there

    async def connect_after_refusals() -> list[str]:
        loop = asyncio.get_running_loop()
        failures = []
        with socket.create_server(("127.0.0.1", 0)) as server:
            for _ in range(3):
                with pytest.raises(psycopg2.OperationalError):
                    await aiopg.connect(refusing, timeout=5)
                for _ in range(3):  # sockets closed one after the other: each gets the lowest free number
                    with socket.socket() as client:
                        client.setblocking(False)
                        try:
                            await loop.sock_connect(client, server.getsockname())
                        except RuntimeError as exc:
                            failures.append(str(exc))
        return failures

    assert uvloop.run(connect_after_refusals()) == []
