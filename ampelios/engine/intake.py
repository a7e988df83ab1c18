"""Messages of the ``events`` topic, taken from Faust's consumer as they are fetched.

Faust hands every message to an agent through its conductor, an event object, a channel
queue, the stream and an acknowledgement, and awaits two tasks per message on the way:
about 60 µs per message on these machines, the whole of the bare-Faust ceiling in
``ampelios bench``. Ampelios needs none of it for its input: :class:`ExactlyOnce` keeps
the positions and commits them, and applies runs, not messages. So the worker's consumer
hands the messages of ``events`` to an :class:`Intake` straight from each fetch
(:func:`ampelios.internals.divert_messages`); every other topic (changelogs, the segment
updates, dead letters) still goes through Faust. The agent of ``events`` stays a Faust
agent (Faust subscribes the topic, assigns its partitions and supervises the agent) and
takes its runs from the intake instead of its stream.

Contract:

- :meth:`Intake.runs` yields, for what was fetched since the last run, one list per
  partition of its messages in offset order (at most RUN_MESSAGES per partition);
- messages fetched in an earlier consumer generation than the current one are dropped
  (after a rebalance Faust fetches again from the stored positions), and so are those of
  partitions given up (:meth:`Intake.drop`);
- a fetch waits while more than MAX_BUFFERED_BYTES of values are buffered, so a fast
  broker cannot fill the worker's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

RUN_MESSAGES = 4096  # messages of one partition taken as one run at most
MAX_BUFFERED_BYTES = 32 * 2**20  # values buffered before fetching waits


class Intake:
    """The fetched, not yet taken messages of one topic (see the module docstring).

    ``generation()`` is the consumer's current generation.
    """

    def __init__(self, generation: Callable[[], int | None]) -> None:
        self._generation = generation
        self._buffered: dict[int, list[Any]] = {}
        self._bytes = 0
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()

    async def deliver(self, messages: Iterable[Any]) -> None:
        """Buffer fetched ``messages`` (in offset order per partition); wait first while
        the buffer is full."""
        while self._bytes > MAX_BUFFERED_BYTES:
            self._drained.clear()
            await self._drained.wait()
        for message in messages:
            self._buffered.setdefault(message.partition, []).append(message)
            self._bytes += len(message.value or b"")
        self._arrived.set()

    async def runs(self) -> AsyncIterator[list[list[Any]]]:
        """Forever: the runs of what arrived since the last (one list per partition)."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            current = self._generation()
            taken: list[list[Any]] = []
            for partition in list(self._buffered):
                messages = self._buffered[partition]
                run, rest = messages[:RUN_MESSAGES], messages[RUN_MESSAGES:]
                if rest:
                    self._buffered[partition] = rest
                    self._arrived.set()
                else:
                    del self._buffered[partition]
                self._bytes -= sum(len(m.value or b"") for m in run)
                run = [m for m in run if m.generation_id == current]
                if run:
                    taken.append(run)
            self._drained.set()
            if taken:
                yield taken

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget what was fetched of ``partitions`` (given up in a rebalance)."""
        for partition in partitions:
            for message in self._buffered.pop(partition, []):
                self._bytes -= len(message.value or b"")
        self._drained.set()
