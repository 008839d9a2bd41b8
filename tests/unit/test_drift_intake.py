"""The drift job's bulk intake: batches by size or time, back-pressure at its limit, revoked partitions dropped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faust.types import TP

from streams.drift.intake import BatchIntake


@dataclass
class Rec:
    offset: int


TP0 = TP("predictions", 0)


def test_take_returns_a_full_batch_at_once_and_a_partial_one_after_the_wait() -> None:
    async def scenario() -> tuple[int, int, float]:
        intake = BatchIntake("predictions", batch=3, limit=10)
        await intake.put(TP0, [Rec(0), Rec(1)])
        await intake.put(TP0, [Rec(2)])
        full = await intake.take(5.0)  # does not wait: the batch is there
        await intake.put(TP0, [Rec(3)])
        started = asyncio.get_running_loop().time()
        partial = await intake.take(0.05)
        return sum(len(r) for _, r in full), sum(len(r) for _, r in partial), asyncio.get_running_loop().time() - started

    full, partial, waited = asyncio.run(scenario())
    assert (full, partial) == (3, 1)
    assert 0.04 <= waited < 1.0


def test_put_waits_at_the_limit_until_a_take_makes_room() -> None:
    async def scenario() -> list[str]:
        intake = BatchIntake("predictions", batch=2, limit=2)
        order: list[str] = []

        async def producer() -> None:
            for n in range(3):
                await intake.put(TP0, [Rec(n)])
                order.append(f"put{n}")

        task = asyncio.create_task(producer())
        await asyncio.sleep(0.01)
        order.append("take")
        taken = await intake.take(0.1)
        order.append(f"took{sum(len(r) for _, r in taken)}")
        await task
        return order

    order = asyncio.run(scenario())
    assert order.index("put1") < order.index("take") < order.index("put2")  # the third put waited for room


def test_revoked_partitions_are_dropped_unacked() -> None:
    async def scenario() -> tuple[int, list[tuple[int, int]]]:
        intake = BatchIntake("predictions", batch=100, limit=1000)
        for partition in range(3):
            await intake.put(TP("predictions", partition), [Rec(n) for n in range(4)])
        dropped = intake.drop([TP("predictions", 1)])
        left = await intake.take(0.01)
        return dropped, sorted({(tp.partition, r.offset) for tp, records in left for r in records})

    dropped, left = asyncio.run(scenario())
    assert dropped == 4
    assert {p for p, _ in left} == {0, 2} and len(left) == 8
