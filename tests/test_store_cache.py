"""Client-side KV cache with server-assisted invalidation, against real redis-servers.

The contract: cached reads cost no round trip, and a write through any instance (or any
other Redis client) is visible to the very next read on every instance -- no sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hiredis
import pytest

from sandbox import kvops
from sandbox.api import KVRefused
from server.store.connect import open_store
from server.store.redis_store import Store
from server.store.tracking import MISS
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
                await small.kv_call("ns", "sismember", [f"s{i}", "m"])
            assert small.cache is not None and len(small.cache) <= 50 and small.cache.evictions > 0
            await off.kv_call("ns", "sadd", ["big", [f"m{i}" for i in range(60)]])
            for i in range(kvops.WHOLE_SET_AFTER):  # kept whole: counts as its 60 members
                await small.kv_call("ns", "sismember", ["big", f"x{i}"])
            assert len(small.cache) <= 50 and small.cache.whole_lasting(small.keys.kv("ns", "big")) is None
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


# --- which prefixes are tracked (tracking.Subscriptions) --------------------------------------


async def _settle(store: Store, rounds: int = 3) -> None:
    """Let pushes already sent by Redis arrive: a PING round trip on the data connection is
    answered after Redis flushed every invalidation of earlier writes (beforeSleep)."""
    assert store.tracker is not None
    for _ in range(rounds):
        await store.client.ping()
        store.tracker.drain()


def test_only_cached_keys_are_tracked(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            t = a.tracker
            assert t is not None and a.cache is not None
            await a.kv_call("ns", "sadd", ["bl", ["x"]])
            assert await a.kv_call("ns", "sismember", ["bl", "x"]) is True  # first read: subscribes, cached
            bl = a.keys.kv("ns", "bl")
            assert t.wanted.prefixes() == [bl] and t.covers(bl)
            trips = a.kv.round_trips
            assert await a.kv_call("ns", "sismember", ["bl", "x"]) is True
            assert a.kv.round_trips == trips  # cached from the first read on

            # Writes to keys nobody caches send no invalidation to this process at all.
            await _settle(a)
            msgs, invs = t.invalidation_msgs, a.cache.invalidations
            for i in range(200):
                await a.kv_call("ns", "incr", ["stats:msgs:g1", 1, None])
                raw.incr(a.keys.kv("ns", f"counter{i % 3}"))
                raw.set(a.keys.kv("other", "bl"), "x")  # same key name, another namespace
            await _settle(a)
            assert t.invalidation_msgs == msgs
            assert a.cache.invalidations == invs + 200  # only the local forgets of its own writes

            # A write to the cached key (from any client) invalidates it: the next read is exact.
            raw.srem(bl, "x")
            assert await a.kv_call("ns", "sismember", ["bl", "x"]) is False
            assert t.invalidation_msgs > msgs
            raw.sadd(bl, "x")
            assert await a.kv_call("ns", "smismember", ["bl", ["x", "y"]]) == [True, False]
            assert a.describe()["cache"]["tracked_prefixes"] == 1
        finally:
            await a.close()

    run(scenario())


def test_tracking_resubscribes_after_a_reconnect(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            t = a.tracker
            assert t is not None and a.cache is not None
            name = a.keys.kv("ns", "flag")
            raw.set(name, "1")
            assert await a.kv_call("ns", "get", ["flag"]) == "1"
            old_id = t.client_id
            raw.client_kill_filter(_id=old_id)
            raw.set(name, "2")  # while tracking is down: must not be served stale
            assert await a.kv_call("ns", "get", ["flag"]) == "2"
            assert await t.wait_connected(FAR_S) and t.client_id != old_id
            # The new connection subscribed to the same prefix in its handshake: the first
            # read after the reconnect is cached again, and writes still invalidate it.
            assert t.covers(name)
            tracking = [c for c in raw.client_list() if c.get("name") == "scriptgate-kv-tracking"
                        and int(c["id"]) == t.client_id]
            assert tracking and "t" in tracking[0]["flags"] and "B" in tracking[0]["flags"]
            assert await a.kv_call("ns", "get", ["flag"]) == "2"
            trips = a.kv.round_trips
            assert await a.kv_call("ns", "get", ["flag"]) == "2"
            assert a.kv.round_trips == trips
            for i in range(50):
                raw.set(name, f"v{i}")
                assert await a.kv_call("ns", "get", ["flag"]) == f"v{i}"
            await _settle(a)
            msgs = t.invalidation_msgs
            for _ in range(50):
                raw.incr(a.keys.kv("ns", "count"))
            await _settle(a)
            assert t.invalidation_msgs == msgs  # still only the cached key
        finally:
            await a.close()

    run(scenario())


def test_tracking_coarsens_to_namespaces_then_everything(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            t = a.tracker
            assert t is not None and a.cache is not None
            t.wanted.keys_per_ns, t.wanted.max_prefixes = 2, 2

            async def exact(ns: str, key: str) -> None:
                """Read, write through another client, read again: never stale."""
                name = a.keys.kv(ns, key)
                value = await a.kv_call(ns, "get", [key])
                assert value == raw.get(name)
                raw.set(name, "w" + str(int(time.monotonic() * 1e6)))
                assert await a.kv_call(ns, "get", [key]) == raw.get(name)
                trips = a.kv.round_trips
                assert await a.kv_call(ns, "get", [key]) == raw.get(name)
                assert a.kv.round_trips == trips  # cached

            await exact("n1", "a")
            await exact("n1", "b")
            assert t.wanted.mode() == "keys" and len(t.wanted.prefixes()) == 2 and t.resubscribes == 0
            await exact("n1", "c")  # a third key of n1: the namespace prefix replaces its keys
            assert t.wanted.prefixes() == [a.keys.kv_ns_root("n1")] and t.resubscribes == 1
            for key in ("a", "b", "c", "d"):
                await exact("n1", key)
            await _settle(a)
            msgs = t.invalidation_msgs
            raw.incr(a.keys.kv("n1", "count"))  # now tracked (coarse)...
            raw.incr(a.keys.kv("n2", "count"))  # ...but not another namespace
            await _settle(a)
            assert t.invalidation_msgs == msgs + 1

            # Overlapping key prefixes in one namespace (Redis >= 6.2 refuses them): coarsened.
            await exact("n2", "ab")
            await exact("n2", "abc")
            assert a.keys.kv_ns_root("n2") in t.wanted.prefixes()
            await exact("n3", "x")  # a 3rd prefix > max_prefixes: track every KV key
            assert t.wanted.mode() == "everything" and t.wanted.prefixes() == [a.keys.kv_root]
            for ns, key in (("n1", "a"), ("n2", "ab"), ("n3", "x"), ("n4", "y")):
                await exact(ns, key)
            assert a.describe()["cache"]["tracking_mode"] == "everything"
        finally:
            await a.close()

    run(scenario())


def test_a_read_started_before_its_prefix_is_confirmed_is_not_cached(redis_standalone: Any,
                                                                      store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            t, cache = a.tracker, a.cache
            assert t is not None and cache is not None
            name = a.keys.kv("ns", "late")
            raw.set(name, "old")
            # The subscription is asked for but its reply not read yet: a read that starts
            # now may be answered by Redis before the subscription, so it must not be kept.
            assert await t.cover(name, wait=0) is False
            epoch = cache.begin(name)
            cache.finish(name, epoch, [(("g",), "old")], 0.0)
            assert cache.lookup(name, ("g",)) is MISS and cache.uncovered >= 1
            assert await t.cover(name)  # confirmed now
            raw.set(name, "new")
            assert await a.kv_call("ns", "get", ["late"]) == "new"
        finally:
            await a.close()

    run(scenario())


def test_subscription_refused_falls_back_to_tracking_everything(redis_standalone: Any, store_prefix: str) -> None:
    """A server that refuses a prefix subscription (e.g. an overlap rule of a future
    Redis) gets the coarsest one, which every Redis >= 6 takes; values stay exact."""
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            t = a.tracker
            assert t is not None
            t._confirm(t._gen, ["x"])(hiredis.ReplyError("ERR refused for the test"))
            assert t.wanted.mode() == "everything"
            name = a.keys.kv("ns", "k")
            for i in range(20):
                raw.set(name, str(i))
                assert await a.kv_call("ns", "get", ["k"]) == str(i)
            assert t.covers(name) and t.connected
        finally:
            await a.close()

    run(scenario())


# --- sets kept whole (sandbox.kvops.WHOLE_SET) ---------------------------------------------


def _calls(client: Any, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


async def _miss_until_whole(store: Store, key: str) -> None:
    for i in range(kvops.WHOLE_SET_AFTER):  # members never asked: each one a miss
        await store.kv_call("ns", "sismember", [key, f"never-{i}"])


def test_a_small_set_is_kept_whole_and_stays_exact(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        b = await _open(redis_standalone.url, store_prefix)
        try:
            await b.kv_call("ns", "sadd", ["bl", [f"b{i}" for i in range(100)]])
            await _miss_until_whole(a, "bl")
            name = a.keys.kv("ns", "bl")
            trips = a.kv.round_trips
            assert await a.kv_call("ns", "smismember", ["bl", ["b5", "zz", "b99"]]) == [True, False, True]
            assert await a.kv_call("ns", "sismember", ["bl", "new"]) is False
            assert a.kv.round_trips == trips  # members never asked, answered from memory
            value, key, whole = a.kv_peek("ns", "smismember", ["bl", ["b1", "x"]])
            assert value == [True, False] and key == name and whole == {f"b{i}" for i in range(100)}

            # Changes through another instance or any client are seen by the next read.
            await b.kv_call("ns", "sadd", ["bl", ["new"]])
            assert await a.kv_call("ns", "sismember", ["bl", "new"]) is True
            raw.srem(name, "b5")
            assert await a.kv_call("ns", "smismember", ["bl", ["b5", "new"]]) == [False, True]
            await _miss_until_whole(a, "bl")
            raw.delete(name)
            assert await a.kv_call("ns", "sismember", ["bl", "b7"]) is False
            await _miss_until_whole(a, "bl")
            assert a.kv_peek("ns", "sismember", ["bl", "b7"])[2] == frozenset()  # a missing key: empty

            # A kept whole set with a TTL answers here but is never handed to workers.
            raw.sadd(name, "t")
            await _miss_until_whole(a, "bl")
            raw.expire(name, 1000)
            await _miss_until_whole(a, "bl")
            trips = a.kv.round_trips
            assert await a.kv_call("ns", "sismember", ["bl", "t"]) is True
            assert a.kv.round_trips == trips and a.kv_peek("ns", "sismember", ["bl", "t"]) is None
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_big_or_wrong_typed_set_is_not_kept_whole(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        a = await _open(redis_standalone.url, store_prefix)
        try:
            name = a.keys.kv("ns", "big")
            raw.sadd(name, *[f"m{i}" for i in range(kvops.WHOLE_SET_MAX_MEMBERS + 1)])
            before = _calls(raw, "srandmember")
            for _ in range(3):
                await _miss_until_whole(a, "big")
            assert _calls(raw, "srandmember") == before + 1  # tried once until the set changes
            assert a.cache.whole_lasting(name) is None
            assert await a.kv_call("ns", "smismember", ["big", ["m1", "m4096", "x"]]) == [True, True, False]
            raw.srem(name, "m0")  # now exactly at the bound: kept whole after the next misses
            await _miss_until_whole(a, "big")
            assert _calls(raw, "srandmember") == before + 2
            assert a.cache.whole_lasting(name) is not None
            assert await a.kv_call("ns", "smismember", ["big", ["m0", "m4096"]]) == [False, True]

            raw.set(a.keys.kv("ns", "text"), "v")
            for _ in range(kvops.WHOLE_SET_AFTER + 2):
                with pytest.raises(KVRefused, match="holds another type"):
                    await a.kv_call("ns", "sismember", ["text", "x"])
        finally:
            await a.close()

    run(scenario())
