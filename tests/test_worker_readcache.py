"""KV answers kept by sandbox workers (sandbox/worker/readcache.py) and their invalidation.

The contract: a call sees every write that completed before it started, its own writes at
once, nothing from another scope (store + namespace); kept answers cost no host round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from sandbox.api import Budgets
from sandbox.host.pool import WorkerPool
from sandbox.worker.readcache import MAX_ENTRIES, MISS, ReadCache
from server.service.state import kv_caller
from server.store.connect import open_store
from tests.timing import FAR_S, SLACK_S

# --- the worker-side structure ------------------------------------------------------------


def test_scope_change_empties_the_cache() -> None:
    c = ReadCache()
    c.enter("s1")
    c.store("sismember", ["bl", "u"], True, "p:kv:ns:bl")
    assert c.lookup("sismember", ["bl", "u"]) is True
    c.enter("s1")
    assert c.lookup("sismember", ["bl", "u"]) is True
    c.enter("s2")
    assert c.lookup("sismember", ["bl", "u"]) is MISS


def test_invalidation_by_redis_key_and_local_writes() -> None:
    c = ReadCache()
    c.enter("s")
    c.store("sismember", ["bl", "u"], False, "R:bl")
    c.store("get", ["cfg"], "v", "R:cfg")
    c.invalidate(["R:bl", 3, None])  # junk entries are ignored
    assert c.lookup("sismember", ["bl", "u"]) is MISS
    assert c.lookup("get", ["cfg"]) == "v"
    c.forget_key("cfg")
    assert c.lookup("get", ["cfg"]) is MISS
    c.invalidate("not a list")


def test_smismember_is_kept_per_member() -> None:
    c = ReadCache()
    c.enter("s")
    c.store("smismember", ["words", ["a", "b"]], [True, False], "R:w")
    assert c.lookup("sismember", ["words", "a"]) is True
    assert c.lookup("smismember", ["words", ["b", "a"]]) == [False, True]
    assert c.lookup("smismember", ["words", ["a", "c"]]) is MISS
    c.store("smismember", ["words", ["c"]], [True, False], "R:w")  # length mismatch: refused
    assert c.lookup("sismember", ["words", "c"]) is MISS


def test_only_immutable_answers_of_read_ops_are_kept() -> None:
    c = ReadCache()
    c.enter("s")
    c.store("smembers", ["set"], ["a"], "R:set")
    c.store("get", ["k"], ["mutable"], "R:k")
    c.store("hget", ["h", ["unhashable"]], "x", "R:h")
    c.store("incr", ["n"], 1, "R:n")
    c.store("get", ["k2"], "v", None)  # no tag: the host promised nothing
    assert len(c) == 0
    # One Redis key names one script key within a scope: a lying tag is refused.
    c.store("get", ["a"], "1", "R:a")
    c.store("get", ["b"], "2", "R:a")
    assert c.lookup("get", ["b"]) is MISS


def test_a_whole_set_answers_members_never_asked() -> None:
    c = ReadCache()
    c.enter("s")
    c.store("sismember", ["bl", "u"], False, "R:bl", ["x", "y"])
    assert c.lookup("sismember", ["bl", "x"]) is True
    assert c.lookup("sismember", ["bl", "never-asked"]) is False
    assert c.lookup("smismember", ["bl", ["y", "z", "x"]]) == [True, False, True]
    assert c.lookup("smismember", ["bl", ["y", 3]]) is MISS  # the host words the refusal
    assert c.lookup("sismember", ["bl", ["y"]]) is MISS
    assert c.lookup("exists", ["bl"]) is MISS  # only membership answers come from the set
    assert len(c) == 3  # the set counts by its members against MAX_ENTRIES
    c.invalidate(["R:bl"])
    assert c.lookup("sismember", ["bl", "x"]) is MISS
    c.store("smismember", ["bl", ["q"]], [False], "R:bl", ["x"])
    c.forget_key("bl")  # the call writes the set: nothing kept answers for it
    assert c.lookup("sismember", ["bl", "x"]) is MISS
    c.store("sismember", ["bl2", "u"], False, "R:bl2", ["ok", 5])  # not all strings: refused
    c.store("sismember", ["bl3", "u"], False, "R:bl3", "not a list")
    assert c.lookup("sismember", ["bl2", "ok"]) is MISS and c.lookup("sismember", ["bl3", "n"]) is MISS
    c.store("get", ["k"], "v", "R:k", ["a"])  # a set only answers set reads
    assert c.lookup("get", ["k"]) == "v" and c.lookup("sismember", ["k", "a"]) is MISS


def test_cache_is_bounded() -> None:
    c = ReadCache()
    c.enter("s")
    for i in range(MAX_ENTRIES + 10):
        c.store("sismember", ["bl", f"u{i}"], False, "R:bl")
    assert len(c) <= MAX_ENTRIES


# --- through a worker pool -----------------------------------------------------------------

READ_TWICE = """
def handle(req):
    a = kv.sismember("bl", req["u"])
    b = kv.sismember("bl", req["u"])
    if req.get("write"):
        kv.sadd("bl", req["u"])
        b = kv.sismember("bl", req["u"])
    return allow(groupName=str(a) + "," + str(b))
"""


class KeepingKV:
    """A store that lets workers keep every read: counts what reaches the host."""

    def __init__(self, scope: str = "t:ns", whole: bool = False) -> None:
        self.scope = scope
        self.whole = whole  # offer the whole set with each hit, as the store does for small sets
        self.sets: dict[str, set[str]] = {"bl": {"mallory"}}
        self.host_calls: list[str] = []
        self.peeks = 0
        self.usable = True
        self.pool: WorkerPool | None = None

    def ready(self) -> bool:
        return self.usable

    def peek(self, op: str, args: list[Any]) -> tuple[Any, str, frozenset[str] | None] | None:
        if op != "sismember":
            return None
        self.peeks += 1
        members = self.sets.get(args[0], set())
        return args[1] in members, "R:" + args[0], frozenset(members) if self.whole else None

    async def __call__(self, op: str, args: list[Any]) -> Any:
        self.host_calls.append(op)
        if op == "sismember":
            return args[1] in self.sets.get(args[0], set())
        if op == "sadd":
            self.sets.setdefault(args[0], set()).update(args[1])
            assert self.pool is not None
            self.pool.invalidate("R:" + args[0])
            return len(args[1])
        raise AssertionError(op)


async def _call(pool: WorkerPool, kv: Any, payload: dict[str, Any]) -> str:
    loop = asyncio.get_running_loop()
    r = await pool.run(source=READ_TWICE, sha256=hashlib.sha256(READ_TWICE.encode()).hexdigest(),
                       payload_json=orjson.dumps(payload), budgets=Budgets(), kv=kv, deadline=loop.time() + 10)
    assert r.verdict == "modify", r
    return r.fields["groupName"]


def test_pool_keeps_answers_and_invalidates_them() -> None:
    async def scenario() -> None:
        kv = KeepingKV()
        async with WorkerPool(size=1) as pool:
            kv.pool = pool
            assert await _call(pool, kv, {"u": "bob"}) == "False,False"
            assert kv.peeks == 1  # the first read was tagged, the second answered in the worker
            for _ in range(5):
                assert await _call(pool, kv, {"u": "bob"}) == "False,False"
            assert kv.peeks == 1 and kv.host_calls == []
            assert (await pool.run(source=READ_TWICE, sha256="x", payload_json=b'{"u":"bob"}', budgets=Budgets(),
                                   kv=kv, deadline=asyncio.get_running_loop().time() + 10)).kv_ops == 2

            # A write elsewhere (the store calls pool.invalidate): the next call sees it.
            kv.sets["bl"].add("bob")
            pool.invalidate("R:bl")
            assert await _call(pool, kv, {"u": "bob"}) == "True,True"
            assert kv.peeks == 2

            # The call's own write: its next read goes to the host, never to a kept answer.
            kv.sets["bl"].discard("carol")
            assert await _call(pool, kv, {"u": "carol"}) == "False,False"
            peeks = kv.peeks
            assert await _call(pool, kv, {"u": "carol", "write": True}) == "False,True"
            assert kv.host_calls == ["sadd"] and kv.peeks == peeks + 1

            # Flush (None) drops everything.
            pool.invalidate(None)
            peeks = kv.peeks
            assert await _call(pool, kv, {"u": "bob"}) == "True,True"
            assert kv.peeks == peeks + 1

    asyncio.run(scenario())


def test_pool_sends_a_whole_set_once_and_drops_it_on_change() -> None:
    async def scenario() -> None:
        kv = KeepingKV(whole=True)
        async with WorkerPool(size=1) as pool:
            kv.pool = pool
            assert await _call(pool, kv, {"u": "bob"}) == "False,False"
            assert kv.peeks == 1
            (worker,) = pool._workers
            assert set(worker.kept_whole) == {"R:bl"}
            held = worker.kept_bytes
            for user, blocked in (("mallory", True), ("carol", False), ("dave", False)):
                want = "True,True" if blocked else "False,False"
                assert await _call(pool, kv, {"u": user}) == want  # members never asked before
            assert kv.peeks == 1 and kv.host_calls == []

            kv.sets["bl"].add("carol")
            pool.invalidate("R:bl")  # the store saw the set change
            assert worker.kept_whole == {} and worker.kept_bytes < held
            assert await _call(pool, kv, {"u": "carol"}) == "True,True"
            assert kv.peeks == 2 and set(worker.kept_whole) == {"R:bl"}

            # The call's own write: its next read asks the host, not the set it held.
            assert await _call(pool, kv, {"u": "erin", "write": True}) == "False,True"
            assert kv.host_calls == ["sadd"]

    asyncio.run(scenario())


def test_a_whole_set_beyond_the_workers_byte_bound_is_not_sent(monkeypatch: Any) -> None:
    from sandbox.host import kvrelay

    monkeypatch.setattr(kvrelay, "MAX_KEPT_BYTES", 200)

    async def scenario() -> None:
        kv = KeepingKV(whole=True)
        kv.sets["bl"] = {f"user-{i}" for i in range(50)}
        async with WorkerPool(size=1) as pool:
            kv.pool = pool
            assert await _call(pool, kv, {"u": "user-1"}) == "True,True"
            assert next(iter(pool._workers)).kept_whole == {}  # answers per member still kept
            assert await _call(pool, kv, {"u": "user-1"}) == "True,True"
            assert await _call(pool, kv, {"u": "user-2"}) == "True,True"
            assert kv.peeks == 2

    asyncio.run(scenario())


def test_answers_never_cross_scopes_or_outlive_readiness() -> None:
    async def scenario() -> None:
        a, b = KeepingKV("store1:ns"), KeepingKV("store1:other")
        b.sets["bl"] = {"bob"}
        async with WorkerPool(size=1) as pool:
            a.pool = b.pool = pool
            assert await _call(pool, a, {"u": "bob"}) == "False,False"
            assert await _call(pool, b, {"u": "bob"}) == "True,True"  # not a's kept answer
            assert await _call(pool, a, {"u": "bob"}) == "False,False"
            assert a.peeks == 2  # the scope switch emptied the worker's cache

            # Not ready (cache down): nothing kept is used, the host answers every read.
            a.usable = False
            a.sets["bl"] = {"bob"}  # changed while the store could not tell anyone
            assert await _call(pool, a, {"u": "bob"}) == "True,True"
            assert a.host_calls == ["sismember", "sismember"]

            # A plain KVCall (no keeping protocol) never uses kept answers either.
            async def plain(op: str, args: list[Any]) -> Any:
                return False

            assert await _call(pool, plain, {"u": "bob"}) == "False,False"

    asyncio.run(scenario())


def test_invalidation_during_a_call_that_keeps_nothing_still_applies() -> None:
    # A call without a scope (cache down, test endpoint) must still apply an ``inv`` that
    # arrives while it waits for a KV answer, or a later call would read a stale answer.
    async def scenario() -> None:
        kv = KeepingKV()
        async with WorkerPool(size=1) as pool:
            kv.pool = pool
            for _ in range(2):
                assert await _call(pool, kv, {"u": "bob"}) == "False,False"

            async def plain(op: str, args: list[Any]) -> Any:
                kv.sets["bl"].add("bob")
                pool.invalidate("R:bl")  # goes out before this answer
                return True

            assert await _call(pool, plain, {"u": "bob"}) == "True,True"
            assert await _call(pool, kv, {"u": "bob"}) == "True,True"

    asyncio.run(scenario())


# --- against a real redis-server: the whole chain -------------------------------------------


@contextlib.asynccontextmanager
async def _wired(url: str, prefix: str, workers: int = 1) -> AsyncIterator[tuple[Any, WorkerPool]]:
    """A store with its tracking connection up and a pool it tells about changes (as build_state does)."""
    store = await open_store(url, prefix=prefix, op_timeout=SLACK_S)  # room for a loaded machine
    try:
        assert store.tracker is not None and await store.tracker.wait_connected(FAR_S)
        async with WorkerPool(size=workers) as pool:
            store.kv_listen(pool.invalidate)
            yield store, pool
    finally:
        await store.close()


def test_writes_by_another_client_reach_kept_answers(redis_standalone: Any, store_prefix: str) -> None:
    """Redis -> tracking connection -> KVCache -> WorkerPool.invalidate -> worker, no sleeps."""
    raw = redis_standalone.client()

    async def scenario() -> None:
        other = await open_store(redis_standalone.url, prefix=store_prefix, op_timeout=SLACK_S)
        try:
            async with _wired(redis_standalone.url, store_prefix, workers=2) as (store, pool):
                kv = kv_caller(store)("ns")
                for i in range(50):
                    user = f"u{i}"
                    for _ in range(3):  # fill the host cache, tag, then answer in the worker
                        assert await _call(pool, kv, {"u": user}) == "False,False"
                    calls = int(raw.info("commandstats").get("cmdstat_sismember", {}).get("calls", 0))
                    assert await _call(pool, kv, {"u": user}) == "False,False"
                    assert int(raw.info("commandstats").get("cmdstat_sismember", {}).get("calls", 0)) == calls
                    await other.kv_call("ns", "sadd", ["bl", [user]])  # another instance writes
                    assert await _call(pool, kv, {"u": user}) == "True,True"
                    await other.kv_call("ns", "srem", ["bl", [user]])
                    assert await _call(pool, kv, {"u": user}) == "False,False"
                # Another namespace of the same store is another scope.
                await other.kv_call("ns2", "sadd", ["bl", ["u0"]])
                assert await _call(pool, kv_caller(store)("ns2"), {"u": "u0"}) == "True,True"
                assert await _call(pool, kv, {"u": "u0"}) == "False,False"
        finally:
            await other.close()

    asyncio.run(scenario())


def test_flush_drops_kept_answers(redis_factory: Any, store_prefix: str) -> None:
    server = redis_factory()  # its own server: FLUSHDB must not touch other tests' data
    raw = server.client()

    async def scenario() -> None:
        async with _wired(server.url, store_prefix) as (store, pool):
            kv = kv_caller(store)("ns")
            await store.kv_call("ns", "sadd", ["bl", ["bob"]])
            for _ in range(3):
                assert await _call(pool, kv, {"u": "bob"}) == "True,True"
            flushes = store.cache.flushes
            raw.flushdb()  # Redis sends one invalidation with no key list
            # Unlike a key's invalidation (sent ahead of the writer's reply), a flush's is not
            # guaranteed to arrive before the flusher's reply (seen once under load): wait for it.
            while store.cache.flushes == flushes:
                await asyncio.sleep(0.01)
            assert await _call(pool, kv, {"u": "bob"}) == "False,False"

    asyncio.run(scenario())


def test_lost_tracking_connection_drops_kept_answers(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        async with _wired(redis_standalone.url, store_prefix) as (store, pool):
            kv = kv_caller(store)("ns")
            for _ in range(3):
                assert await _call(pool, kv, {"u": "bob"}) == "False,False"
            raw.client_kill_filter(_id=store.tracker.client_id)
            # No invalidation will come for this write: nothing kept may answer any more.
            raw.sadd(store.keys.kv("ns", "bl"), "bob")
            assert await _call(pool, kv, {"u": "bob"}) == "True,True"
            assert await store.tracker.wait_connected(FAR_S)
            for _ in range(3):
                assert await _call(pool, kv, {"u": "bob"}) == "True,True"
            raw.srem(store.keys.kv("ns", "bl"), "bob")
            assert await _call(pool, kv, {"u": "bob"}) == "False,False"

    asyncio.run(scenario())
