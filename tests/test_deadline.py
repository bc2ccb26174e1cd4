"""sandbox.host.deadline.Deadline behaves like asyncio.timeout_at (the cases asyncio's own tests cover)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from sandbox.host.deadline import Deadline


def _both(scenario: Callable[[Any], Any]) -> None:
    """Run ``scenario(make)`` with make = our Deadline and with asyncio.timeout_at, on both loops."""
    for runner in (asyncio.run, uvloop.run):
        for make in (lambda when: Deadline(asyncio.get_running_loop(), when), asyncio.timeout_at):
            runner(scenario(make))


def test_expiry_raises_timeout_error() -> None:
    async def scenario(make: Any) -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with make(loop.time() + 0.01):
                await asyncio.Event().wait()
        with pytest.raises(TimeoutError):
            async with make(loop.time() - 1):  # already past: the first await times out
                await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0

    _both(scenario)


def test_finishing_in_time_leaves_nothing_behind() -> None:
    async def scenario(make: Any) -> None:
        loop = asyncio.get_running_loop()
        async with make(loop.time() + 60):
            await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0

    _both(scenario)


def test_another_cancellation_stays_a_cancellation() -> None:
    async def scenario(make: Any) -> None:
        loop = asyncio.get_running_loop()
        entered = asyncio.Event()

        async def body() -> None:
            async with make(loop.time() + 60):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # Expiry and an outside cancel in the same pass: the outside one wins.
        async def racing() -> None:
            async with make(loop.time()):
                asyncio.current_task().cancel()
                await asyncio.Event().wait()

        with pytest.raises(asyncio.CancelledError):
            await asyncio.ensure_future(racing())

    _both(scenario)


def test_nested_the_inner_expiry_is_the_inners() -> None:
    async def scenario(make: Any) -> None:
        loop = asyncio.get_running_loop()
        async with make(loop.time() + 60):
            with pytest.raises(TimeoutError):
                async with make(loop.time() + 0.01):
                    await asyncio.Event().wait()
            await asyncio.sleep(0)  # the outer one is untouched
        with pytest.raises(TimeoutError):
            async with make(loop.time() + 0.01):
                async with make(loop.time() + 60):
                    await asyncio.Event().wait()

    _both(scenario)

