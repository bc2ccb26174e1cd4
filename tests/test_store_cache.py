"""Client-side KV cache with server-assisted invalidation, against real redis-servers.

The contract: cached reads cost no round trip, and a write through any instance (or any
other Redis client) is visible to the very next read on every instance -- no sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from server.store.connect import open_store
from server.store.redis_store import Store
from tests.timing import FAR_S, SLACK_S


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _open(url: str, prefix: str, **kw: Any) -> Store:
    kw.setdefault("op_timeout", SLACK_S)  # about caching, not timeouts: room for a loaded machine
    store = await open_store(url, prefix=prefix, **kw)
    assert store.tracker is not None
    assert await store.tracker.wait_connected(FAR_S), store.describe()
    return store


def _sismember_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_sismember", {}).get("calls", 0))


def test_cached_reads_cost_no_round_trip_and_writes_are_seen_at_once(redis_standalone: Any, store_prefix: str) -> None:
    url = redis_standalone.url
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(url, store_prefix)
        b = await _open(url, store_prefix)
        try:
            await b.kv_call("ns", "sadd", ["bl", ["x"]])
            assert await a.kv_call("ns", "sismember", ["bl", "u"]) is False  # fills the cache
            trips, calls = a.kv.round_trips, _sismember_calls(raw)
            for _ in range(2000):
                assert await a.kv_call("ns", "sismember", ["bl", "u"]) is False
            assert a.kv.round_trips == trips and _sismember_calls(raw) == calls  # served from memory

            # No stale allow after a block, written through another instance...
            for i in range(300):
                member = f"u{i}"
                assert await a.kv_call("ns", "sismember", ["bl", member]) is False  # now cached
                await b.kv_call("ns", "sadd", ["bl", [member]])
                assert await a.kv_call("ns", "sismember", ["bl", member]) is True
                assert await a.kv_call("ns", "smismember", ["bl", [member, "x", "nope"]]) == [True, True, False]
                await b.kv_call("ns", "srem", ["bl", [member]])
                assert await a.kv_call("ns", "sismember", ["bl", member]) is False
            # ...or by any other Redis client, for strings and hashes too.
            name = a.keys.kv("ns", "flag")
            hname = a.keys.kv("ns", "cfg")
            for i in range(200):
                assert await a.kv_call("ns", "get", ["flag"]) == (str(i - 1) if i else None)
                assert await a.kv_call("ns", "exists", ["flag"]) is bool(i)
                assert await a.kv_call("ns", "hget", ["cfg", "mode"]) == (str(i - 1) if i else None)
                raw.set(name, str(i))
                raw.hset(hname, "mode", str(i))
                assert await a.kv_call("ns", "get", ["flag"]) == str(i)
                assert await a.kv_call("ns", "hget", ["cfg", "mode"]) == str(i)
            # writes through the same instance are visible immediately too
            await a.kv_call("ns", "set", ["flag", "mine", None])
            assert await a.kv_call("ns", "get", ["flag"]) == "mine"
            stats = a.describe()["cache"]
            assert stats["enabled"] and stats["tracking"] == "connected" and stats["hits"] >= 2000
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_cached_entries_expire_with_the_key(redis_standalone: Any, store_prefix: str) -> None:
    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            name = a.keys.kv("ns", "tmp")
            await a.kv_call("ns", "set", ["tmp", "v", None])
            ttl = 1.0
            set_at = time.monotonic()
            await a.client.pexpire(name, int(ttl * 1000))
            before = [await a.kv_call("ns", "get", ["tmp"]) for _ in range(2)]  # the 2nd is cached
            if time.monotonic() - set_at < ttl:  # (a stalled machine may have let the key expire)
                assert before == ["v", "v"]
            # Sleeping is a lower bound here: whatever the load, the key has expired after it.
            await asyncio.sleep(max(0.0, set_at + ttl + 0.05 - time.monotonic()))
            assert await a.kv_call("ns", "get", ["tmp"]) is None
        finally:
            await a.close()

    run(scenario())


def test_cache_is_flushed_when_tracking_connection_drops(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            name = a.keys.kv("ns", "k")
            raw.set(name, "1")
            assert await a.kv_call("ns", "get", ["k"]) == "1"
            assert len(a.cache or []) >= 1
            assert a.tracker is not None and a.tracker.client_id
            raw.client_kill_filter(_id=a.tracker.client_id)
            # killed: no invalidation will come for this write, so the cache must not be used
            raw.set(name, "2")
            assert await a.kv_call("ns", "get", ["k"]) == "2"
            assert await a.tracker.wait_connected(FAR_S)
            assert a.tracker.connects == 2
            raw.set(name, "3")
            assert await a.kv_call("ns", "get", ["k"]) == "3"
        finally:
            await a.close()

    run(scenario())


def test_flushall_clears_the_cache(redis_factory: Any, store_prefix: str) -> None:
    server = redis_factory()
    raw = server.client()

    async def scenario() -> None:
        a = await _open(server.url, store_prefix)
        try:
            await a.kv_call("ns", "set", ["k", "v", None])
            assert await a.kv_call("ns", "get", ["k"]) == "v"
            raw.flushall()
            assert await a.kv_call("ns", "get", ["k"]) is None
        finally:
            await a.close()

    run(scenario())


def test_cache_can_be_disabled_and_is_bounded(redis_standalone: Any, store_prefix: str) -> None:
    async def scenario() -> None:
        off = await open_store(redis_standalone.url + "?cache=off", prefix=store_prefix, op_timeout=SLACK_S)
        small = await _open(redis_standalone.url, store_prefix, cache_size=50)
        try:
            assert off.tracker is None and off.describe()["cache"]["enabled"] is False
            await off.kv_call("ns", "sadd", ["s", ["a"]])
            before = off.kv.round_trips
            for _ in range(5):
                assert await off.kv_call("ns", "sismember", ["s", "a"]) is True
            assert off.kv.round_trips == before + 5
            for i in range(200):
                await small.kv_call("ns", "sismember", ["s", f"m{i}"])
            assert small.cache is not None and len(small.cache) <= 50 and small.cache.evictions > 0
        finally:
            await off.close()
            await small.close()

    run(scenario())


def test_cache_follows_a_sentinel_failover(sentinel_factory: Any, store_prefix: str) -> None:
    setup = sentinel_factory()

    async def scenario() -> None:
        a = await _open(setup.url, store_prefix)
        b = await _open(setup.url, store_prefix)
        try:
            await b.kv_call("ns", "set", ["flag", "before", None])
            assert await a.kv_call("ns", "get", ["flag"]) == "before"
            assert a.tracker is not None
            connects = a.tracker.connects
            new = await asyncio.to_thread(setup.failover)
            # Each store follows Sentinel by itself within ~1 s (until then a store may
            # still talk to the demoted master: Sentinel's split-brain window, cache or not).
            deadline = time.monotonic() + 1.0 + SLACK_S
            for store in (a, b):
                pool = store.client.connection_pool
                while pool.master_address is None or int(pool.master_address[1]) != new:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
            # From then on no stale read, while the tracking link moves to the new master.
            deadline = time.monotonic() + FAR_S
            i = 0
            while a.tracker.connects == connects or not a.tracker.connected or i < 20:
                assert time.monotonic() < deadline, a.describe()
                i += 1
                while True:  # the first writes may still hit a connection being replaced
                    try:
                        await b.kv_call("ns", "set", ["flag", f"w{i}", None])
                        break
                    except Exception:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.02)
                assert await a.kv_call("ns", "get", ["flag"]) == f"w{i}"
                await asyncio.sleep(0.02)
            for i in range(50):
                await b.kv_call("ns", "set", ["flag", str(i), None])
                assert await a.kv_call("ns", "get", ["flag"]) == str(i)
        finally:
            await a.close()
            await b.close()

    run(scenario())


@pytest.mark.parametrize("cache", [True, False])
def test_latency_report(redis_standalone: Any, store_prefix: str, cache: bool) -> None:
    """Not a benchmark gate: records cached vs uncached sismember latency (-s shows it)."""

    async def scenario() -> float:
        s = await open_store(redis_standalone.url, prefix=store_prefix, cache=cache)
        if cache:
            assert s.tracker is not None and await s.tracker.wait_connected(FAR_S)
        try:
            await s.kv_call("ns", "sadd", ["bl", ["x"]])
            await s.kv_call("ns", "sismember", ["bl", "u"])
            n = 2000
            t0 = time.perf_counter()
            for _ in range(n):
                await s.kv_call("ns", "sismember", ["bl", "u"])
            return (time.perf_counter() - t0) / n * 1e6
        finally:
            await s.close()

    micros = run(scenario())
    print(f"\nsismember {'cached' if cache else 'uncached'}: {micros:.1f} us/call")
    assert micros < 50_000  # a sanity bound only (a loaded machine); bench/ measures latency
