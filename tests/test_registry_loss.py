"""Registry loss at the table level, against real Redis (scripts_table.py, Store.restore_registry),
and the shared slots of server/sync.py. End-to-end runs are in tests/test_nothing_lost.py."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from server.scripts_table import ScriptTable
from server.sync import Siblings

A = "callbackBeforeAddFriendCommand"
B = "callbackBeforeCreateGroupCommand"


def src(text: str) -> str:
    return f"def handle(req):\n    return deny(5001, {text!r})\n"


async def put(store: Any, command: str, source: str) -> None:
    await store.put_version(command, source, hashlib.sha256(source.encode()).hexdigest(), True, "test")


def wipe(client: Any, prefix: str, pattern: str = "*") -> None:
    """A FLUSHALL of this test's keys only (the server is shared)."""
    for key in client.scan_iter(f"{prefix}:{pattern}"):
        client.delete(key)


def run(redis_standalone: Any, prefix: str, scenario: Any) -> None:
    from server.store.connect import open_store

    async def main() -> None:
        store = await open_store(redis_standalone.url, prefix=prefix)
        other = await open_store(redis_standalone.url, prefix=prefix)  # another instance
        try:
            await scenario(store, other, redis_standalone.client())
        finally:
            await store.close()
            await other.close()

    asyncio.run(main())


def test_a_wiped_registry_keeps_serving_and_is_written_back(redis_standalone, store_prefix):
    async def scenario(store: Any, other: Any, client: Any) -> None:
        table = ScriptTable(store)
        await put(store, A, src("a1"))
        await put(store, A, src("a2"))
        await put(store, B, src("b1"))
        await table.refresh()
        before = table.snapshot()
        gen = table.generation
        wipe(client, store_prefix)
        await table.refresh()
        assert table.snapshot() == before  # nothing unloaded
        assert table.problem() is not None and "lost" in table.problem()
        assert sorted(table.restored) == [A, B]
        assert table.generation > gen
        live = await other.active_table()  # the store has them again, same version numbers
        assert {c: (s.version, s.source) for c, s in live.items()} == {A: (2, src("a2")), B: (1, src("b1"))}
        actions = [(e.action, e.target, e.actor) for e in await other.audit()]
        assert ("restore", A, "registry-restore") in actions
        # Another table (another process) sees the loss reported, not a loss of its own.
        fresh = ScriptTable(other)
        await fresh.refresh()
        assert fresh.problem() is not None and fresh.lost is None

    run(redis_standalone, store_prefix, scenario)


def test_a_deploy_made_after_the_loss_is_not_overwritten(redis_standalone, store_prefix):
    async def scenario(store: Any, other: Any, client: Any) -> None:
        table = ScriptTable(store)
        await put(store, A, src("a1"))
        await put(store, A, src("a2"))
        await put(store, B, src("b1"))
        await table.refresh()
        wipe(client, store_prefix)
        await put(other, A, src("new a"))  # into the empty registry, before we notice
        await table.refresh()
        live = await other.active_table()
        assert (live[A].version, live[A].source) == (1, src("new a"))  # the deploy wins
        assert (live[B].version, live[B].source) == (1, src("b1"))  # the rest is written back
        assert table.get(A).source == src("new a") and table.get(B).source == src("b1")

    run(redis_standalone, store_prefix, scenario)


def test_a_missing_live_body_is_written_back(redis_standalone, store_prefix):
    async def scenario(store: Any, other: Any, client: Any) -> None:
        table = ScriptTable(store)
        await put(store, A, src("a1"))
        await table.refresh()
        wipe(client, store_prefix, "{s}:v:*")  # e.g. evicted under maxmemory
        await table.refresh()
        assert table.get(A).source == src("a1")
        assert (await other.get_version(A, 1)).source == src("a1")
        assert table.restored == [A]

    run(redis_standalone, store_prefix, scenario)


def test_a_first_load_from_an_empty_store_is_no_loss(redis_standalone, store_prefix):
    async def scenario(store: Any, other: Any, client: Any) -> None:
        table = ScriptTable(store)
        await table.refresh()
        assert table.loaded and table.problem() is None and table.snapshot() == {}

    run(redis_standalone, store_prefix, scenario)


def test_siblings_wait_for_every_serving_process():
    async def scenario() -> None:
        shared = Siblings.create(3)
        me, sib = shared.bind(0), shared.bind(1)  # process 2 is not serving (-1): not waited for
        me.serving(5)
        sib.serving(4)
        assert not await me.wait_generation(5, 0.05)
        assert me.lagging(5) == [1]
        waiter = asyncio.create_task(me.wait_generation(5, 60))
        sib.serving(5)
        assert await waiter
        sib.serving(6)
        assert not await me.wait_generation(7, 0.05)
        shared.reset(1)  # it died: no longer waited for
        assert await me.wait_generation(7, 0.05)  # nor is the waiting process itself
        # recordings: queued by one process, written later
        sib.queued()
        assert not await me.wait_recordings(0.05)
        waiter = asyncio.create_task(me.wait_recordings(60))
        sib.written()
        assert await waiter

    asyncio.run(scenario())
