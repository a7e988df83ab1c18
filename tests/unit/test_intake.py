"""The intake of events messages: runs per partition in offset order, old generations and
given-up partitions dropped, fetching held while the buffer is full."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from ampelios.engine import intake as intake_module
from ampelios.engine.intake import Intake


@dataclass
class Message:
    partition: int
    offset: int
    value: bytes = b"x"
    generation_id: int = 1


async def next_run(intake: Intake) -> list[list[Message]]:
    runs = intake.runs()
    return await asyncio.wait_for(anext(runs), timeout=1)


def test_runs_are_per_partition_in_offset_order_and_drop_old_generations_and_given_up_partitions():
    async def scenario() -> list[list[tuple[int, int]]]:
        intake = Intake(lambda: 1)
        await intake.deliver([Message(0, 5), Message(1, 7), Message(0, 6), Message(2, 1, generation_id=0)])
        await intake.deliver([Message(3, 0), Message(1, 8)])
        intake.drop([3])
        run = await next_run(intake)
        return [[(m.partition, m.offset) for m in messages] for messages in run]

    assert asyncio.run(scenario()) == [[(0, 5), (0, 6)], [(1, 7), (1, 8)]]


def test_a_long_backlog_comes_in_runs_of_at_most_run_messages(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(intake_module, "RUN_MESSAGES", 3)

    async def scenario() -> list[list[int]]:
        intake = Intake(lambda: 1)
        await intake.deliver([Message(0, i) for i in range(7)])
        runs = intake.runs()
        return [[m.offset for m in (await asyncio.wait_for(anext(runs), 1))[0]] for _ in range(3)]

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4, 5], [6]]


def test_fetching_waits_while_the_buffer_is_full(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(intake_module, "MAX_BUFFERED_BYTES", 10)

    async def scenario() -> tuple[bool, bool]:
        intake = Intake(lambda: 1)
        await intake.deliver([Message(0, 0, b"x" * 11)])
        second = asyncio.ensure_future(intake.deliver([Message(0, 1)]))
        await asyncio.sleep(0.05)
        waited = not second.done()
        await next_run(intake)  # takes the first message: room again
        await asyncio.wait_for(second, 1)
        return waited, second.done()

    assert asyncio.run(scenario()) == (True, True)
