"""The Store contract, run on every backend: embedded fakeredis, a real redis-server over
TCP and over a unix socket, Sentinel, and a 3-master Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sandbox import kvops
from sandbox.api import KVRefused
from server.store.base import StoreError
from server.store.connect import open_store
from server.store.redis_store import Store
from tests.timing import FAR_S, SLACK_S

BACKENDS = ["embedded", "standalone", "unix", "sentinel", "cluster"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str | None:
    kind = request.param
    if kind == "embedded":
        return None
    if kind == "standalone":
        return request.getfixturevalue("redis_standalone").url
    if kind == "unix":
        return request.getfixturevalue("redis_standalone").unix_url
    if kind == "sentinel":
        return request.getfixturevalue("redis_sentinel").url
    return request.getfixturevalue("redis_cluster").url


@contextlib.asynccontextmanager
async def opened(url: str | None, prefix: str, **kw: Any) -> AsyncIterator[Store]:
    # These tests are about what each backend does, not how fast: the production 0.5 s
    # operation timeout (tests/test_store_faults.py tests it) would turn a loaded machine's
    # slow round trip into a spurious StoreUnavailable.
    kw.setdefault("op_timeout", SLACK_S)
    store = await open_store(url, prefix=prefix, **kw)
    try:
        yield store
    finally:
        await store.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- scripts ----------------------------------------------------------------------------------

def test_script_lifecycle(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            assert await s.generation() == 0
            assert await s.get_meta("cbA") is None
            assert await s.list_scripts() == []
            assert await s.active_table() == {}
            v1, prev = await s.put_version("cbA", "v1 source", "sha1", True, "alice")
            assert (v1.version, prev, v1.size, v1.author) == (1, None, 9, "alice")
            v2, prev = await s.put_version("cbA", "v2 sourcé", "sha2", False, "bob")  # draft
            assert (v2.version, prev, v2.size) == (2, 1, 10)
            meta = await s.get_meta("cbA")
            assert meta is not None
            assert (meta.active_version, meta.latest_version, meta.versions) == (1, 2, [1, 2])
            table = await s.active_table()
            assert table["cbA"].version == 1 and table["cbA"].source == "v1 source"
            assert (await s.get_version("cbA", 2)).source == "v2 sourcé"  # type: ignore[union-attr]
            assert await s.get_version("cbA", 3) is None
            assert await s.get_version("cbA", 0) is None
            versions = await s.list_versions("cbA")
            assert [(v.version, v.sha256, v.source) for v in versions] == [(1, "sha1", None), (2, "sha2", None)]
            assert await s.activate("cbA", 2, "carol") == (1, 2)
            assert await s.activate("cbA", 1, "carol") == (2, 1)  # rollback
            assert (await s.active_table())["cbA"].version == 1
            assert await s.deactivate("cbA", "dave") == 1
            assert await s.active_table() == {}
            meta = await s.get_meta("cbA")
            assert meta is not None and meta.active_version is None and meta.versions == [1, 2]
            assert [m.command for m in await s.list_scripts()] == ["cbA"]
            assert await s.generation() == 5
            entries = await s.audit()
            assert [(e.action, e.actor, e.before, e.after) for e in entries] == [
                ("delete", "dave", 1, None),
                ("rollback", "carol", 2, 1),
                ("activate", "carol", 1, 2),
                ("upload", "bob", 1, 1),
                ("upload", "alice", None, 1),
            ]
            page = await s.audit(limit=2, before_id=entries[1].id)
            assert [e.id for e in page] == [entries[2].id, entries[3].id]

    run(scenario())


def test_script_errors(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            with pytest.raises(StoreError) as err:
                await s.activate("cbA", 1, "x")
            assert err.value.status == 404
            await s.put_version("cbA", "x", "s", False, "x")
            with pytest.raises(StoreError) as err:
                await s.activate("cbA", 2, "x")
            assert err.value.status == 404 and err.value.code == "no_such_version"
            with pytest.raises(StoreError) as err:
                await s.deactivate("cbA", "x")
            assert err.value.status == 404
            for bad in ("", "a:b", "a{b}", "a b", "x" * 200, "é"):
                with pytest.raises(StoreError):
                    await s.put_version(bad, "x", "s", True, "x")
            with pytest.raises(StoreError):
                await s.audit(before_id="not-an-id")
            assert await s.generation() == 1  # failed calls changed nothing

    run(scenario())


def test_concurrent_uploads_get_distinct_versions(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as a, opened(backend, store_prefix) as b:
            results = await asyncio.gather(
                *[(a if i % 2 else b).put_version("cbA", f"src {i}", f"h{i}", True, f"u{i}") for i in range(20)]
            )
            versions = sorted(info.version for info, _ in results)
            assert versions == list(range(1, 21))
            for info, _ in results:
                got = await a.get_version("cbA", info.version)
                assert got is not None and got.source == info.source and got.sha256 == info.sha256
            assert await a.generation() == 20
            assert len(await a.audit(limit=100)) == 20

    run(scenario())


def test_prefixes_are_isolated(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as a, opened(backend, store_prefix + "x") as b:
            await a.put_version("cbA", "x", "s", True, "u")
            await a.kv_call("ns", "set", ["k", "v", None])
            assert await b.active_table() == {}
            assert await b.kv_call("ns", "get", ["k"]) is None
            assert await b.generation() == 0

    run(scenario())


def test_change_propagates_to_other_instance(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as a, opened(backend, store_prefix) as b:
            seen: list[tuple[float, dict[str, int]]] = []
            changed = asyncio.Event()

            async def listener() -> None:
                table = await b.active_table()
                seen.append((time.monotonic(), {c: s.version for c, s in table.items()}))
                changed.set()

            # Polling effectively off: every change below can only arrive by notification, so
            # seeing it at all proves the push path, without a bound on how fast it came.
            watcher = asyncio.create_task(b.watch(listener, poll_interval=3600))
            await asyncio.wait_for(changed.wait(), FAR_S)  # the initial load
            for step in range(3):
                changed.clear()
                await a.put_version("cbA", f"s{step}", "h", True, "u")
                await asyncio.wait_for(changed.wait(), FAR_S)
                assert seen[-1][1] == {"cbA": step + 1}
            changed.clear()
            await a.deactivate("cbA", "u")
            await asyncio.wait_for(changed.wait(), FAR_S)
            assert seen[-1][1] == {}
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    run(scenario())


def test_reupload_of_the_live_source_makes_no_version(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            first, _ = await s.put_version("cbU", "src", "h1", True, "u")
            again, before = await s.put_version("cbU", "src", "h1", True, "u2")
            assert again.unchanged and again.version == first.version == before == 1
            draft, _ = await s.put_version("cbU", "src", "h1", False, "u3")  # a draft of the live source too
            assert draft.unchanged and draft.version == 1
            assert (await s.get_meta("cbU")).latest_version == 1
            entry = (await s.audit(1))[0]
            assert (entry.action, entry.before, entry.after, entry.detail["unchanged"]) == ("upload", 1, 1, True)
            other, _ = await s.put_version("cbU", "other", "h1", True, "u")  # same claimed sha, other source
            assert not other.unchanged and other.version == 2

    run(scenario())


# --- KV ops -----------------------------------------------------------------------------------

def test_kv_strings(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            kv = s.kv_call
            assert await kv("ns", "get", ["a"]) is None
            assert await kv("ns", "exists", ["a"]) is False
            assert await kv("ns", "set", ["a", "1", None]) is True
            assert await kv("ns", "get", ["a"]) == "1"
            assert await kv("ns", "exists", ["a"]) is True
            assert await kv("ns", "set", ["n", 2.5, None]) is True
            assert await kv("ns", "get", ["n"]) == "2.5"
            assert await kv("ns", "ttl", ["a"]) == -1
            assert await kv("ns", "ttl", ["missing"]) == -2
            assert await kv("ns", "expire", ["a", 100]) is True
            assert 99 <= await kv("ns", "ttl", ["a"]) <= 100
            assert await kv("ns", "expire", ["missing", 100]) is False
            assert await kv("ns", "set", ["t", "x", 50]) is True
            assert 49 <= await kv("ns", "ttl", ["t"]) <= 50
            assert await kv("ns", "delete", ["a"]) == 1
            assert await kv("ns", "delete", ["a"]) == 0
            # incr: the TTL is set once (EXPIRE NX), never extended by later increments
            assert await kv("ns", "incr", ["c", 1, None]) == 1
            assert await kv("ns", "ttl", ["c"]) == -1
            assert await kv("ns", "incr", ["w", 5, 30]) == 5
            await kv("ns", "expire", ["w", 10])
            assert await kv("ns", "incr", ["w", -2, 30]) == 3
            assert await kv("ns", "ttl", ["w"]) <= 10
            assert await kv("ns", "incr", ["c", 1, 20]) == 2  # existing key without TTL gets one
            assert 19 <= await kv("ns", "ttl", ["c"]) <= 20
            await kv("ns", "set", ["s", "abc", None])
            with pytest.raises(KVRefused, match="not an integer"):
                await kv("ns", "incr", ["s", 1, None])
            await kv("ns", "set", ["big", str(2**63 - 1), None])
            with pytest.raises(KVRefused, match="overflow"):
                await kv("ns", "incr", ["big", 1, None])

    run(scenario())


def test_kv_sets_hashes_lists(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            kv = s.kv_call
            assert await kv("ns", "sadd", ["bl", ["u1", "u2", "u1"]]) == 2
            assert await kv("ns", "sismember", ["bl", "u1"]) is True
            assert await kv("ns", "sismember", ["bl", "u3"]) is False
            assert await kv("ns", "smismember", ["bl", ["u3", "u2", 7]]) == [False, True, False]
            assert await kv("ns", "smembers", ["bl"]) == ["u1", "u2"]
            assert await kv("ns", "smembers", ["none"]) == []
            assert await kv("ns", "scard", ["bl"]) == 2
            assert await kv("ns", "srem", ["bl", ["u1", "zz"]]) == 1
            assert await kv("ns", "sismember", ["bl", "u1"]) is False
            assert await kv("ns", "hset", ["h", {"a": "1", "b": 2}]) == 2
            assert await kv("ns", "hget", ["h", "b"]) == "2"
            assert await kv("ns", "hget", ["h", "zz"]) is None
            assert await kv("ns", "hincrby", ["h", "a", 5]) == 6
            assert await kv("ns", "hgetall", ["h"]) == {"a": "6", "b": "2"}
            assert await kv("ns", "hdel", ["h", ["a", "q"]]) == 1
            assert await kv("ns", "hgetall", ["nohash"]) == {}
            assert await kv("ns", "rpush", ["l", ["a", "b"]]) == 2
            assert await kv("ns", "lpush", ["l", ["z"]]) == 3
            assert await kv("ns", "lrange", ["l", 0, -1]) == ["z", "a", "b"]
            assert await kv("ns", "lrange", ["l", -2, -1]) == ["a", "b"]
            assert await kv("ns", "lrange", ["l", 2, 1]) == []
            assert await kv("ns", "lrange", ["l", 0, 2**62]) == ["z", "a", "b"]
            assert await kv("ns", "ltrim", ["l", 0, 1]) is True
            assert await kv("ns", "llen", ["l"]) == 2
            # wrong types give a clear KVRefused naming only the script-level key
            for op, args in [("sismember", ["h", "x"]), ("get", ["bl"]), ("hget", ["l", "x"]),
                             ("lpush", ["bl", ["x"]]), ("incr", ["h", 1, None]), ("smismember", ["h", ["x"]]),
                             ("smembers", ["h"]), ("hgetall", ["bl"]), ("lrange", ["h", 0, 1])]:
                with pytest.raises(KVRefused) as err:
                    await kv("ns", op, args)
                assert store_prefix not in str(err.value) and "holds another type" in str(err.value)

    run(scenario())


def test_kv_collection_caps(backend: str | None, store_prefix: str) -> None:
    cap = kvops.MAX_COLLECTION_RESULT

    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            await s.kv_write("ns", "big", "set", [str(i) for i in range(cap + 1)], None, "t")
            await s.kv_write("ns", "bigh", "hash", {str(i): "v" for i in range(cap + 1)}, None, "t")
            await s.kv_write("ns", "bigl", "list", [str(i) for i in range(cap + 5)], None, "t")
            with pytest.raises(KVRefused, match="more than"):
                await s.kv_call("ns", "smembers", ["big"])
            with pytest.raises(KVRefused, match="more than"):
                await s.kv_call("ns", "hgetall", ["bigh"])
            with pytest.raises(KVRefused, match="at most"):
                await s.kv_call("ns", "lrange", ["bigl", 0, -1])
            assert len(await s.kv_call("ns", "lrange", ["bigl", 0, cap - 1])) == cap
            assert len(await s.kv_call("ns", "lrange", ["bigl", 5, 10**9])) == cap
            assert await s.kv_call("ns", "sismember", ["big", str(cap)]) is True

    run(scenario())


def test_kv_validation_is_redone_on_the_host(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            bad: list[tuple[Any, Any]] = [
                ("flushall", []), ("get", []), ("get", [b"k"]), ("get", [""]), ("get", ["a\x00b"]),
                ("get", ["a\r\nb"]), ("get", ["a\nFLUSHALL"]), ("get", ["\x7f"]), ("get", ["x" * 513]),
                ("set", ["k", {"a": 1}, None]), ("sadd", ["k", []]), ("expire", ["k", 0]),
                ("get", ["\ud800"]), ("incr", ["k", "1", None]),
            ]
            for op, args in bad:
                with pytest.raises(KVRefused):
                    await s.kv_call("ns", op, args)
            for ns in ("", "a:b", "a b", "ns{x}", "n" * 65, "é"):
                with pytest.raises(KVRefused):
                    await s.kv_call(ns, "get", ["k"])

    run(scenario())


def test_namespacing_cannot_escape(backend: str | None, store_prefix: str) -> None:
    """Keys with separators, glob and hash-tag characters, unicode: each maps to its own
    Redis key under P:kv:<ns>:, never onto another namespace or the script registry."""
    tricky = ["a", "a:b", ":", "::", "ns2:a", "{s}:gen", "{s}", "}", "{", "*", "?", "[a]", "\\",
              "../x", "é", "雪", "🙂", " lead", "tab\tnot", "kv:ns:a", f"{store_prefix}:{{s}}:gen"]
    tricky = [k for k in tricky if "\t" not in k]

    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            await s.put_version("cbA", "src", "h", True, "u")
            gen = await s.generation()
            for i, key in enumerate(tricky):
                await s.kv_call("ns", "set", [key, f"v{i}", None])
            for i, key in enumerate(tricky):
                assert await s.kv_call("ns", "get", [key]) == f"v{i}"
                assert await s.kv_call("ns2", "get", [key]) is None
            # "ns2:a" in ns is not "a" in ns2; nothing reached the registry
            assert await s.kv_call("ns2", "get", ["a"]) is None
            assert await s.generation() == gen
            assert (await s.active_table())["cbA"].source == "src"
            listing, cursor = await s.kv_scan("ns", "", 1000, "0")
            assert cursor == "0" and sorted(i["key"] for i in listing) == sorted(tricky)
            # the Redis names: prefix, namespace, then the key verbatim
            names = {s.keys.kv("ns", k) for k in tricky} | {s.keys.kv("ns2", k) for k in tricky}
            assert len(names) == 2 * len(tricky)
            assert all(n.startswith(f"{store_prefix}:kv:ns:") or n.startswith(f"{store_prefix}:kv:ns2:")
                       for n in names)
            for k in (s.keys.gen, s.keys.active, s.keys.audit, s.keys.meta("cbA"), s.keys.recordings("cbA")):
                assert not k.startswith(s.keys.kv_root)

    run(scenario())


# --- KV admin ---------------------------------------------------------------------------------

def test_kv_admin(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            await s.kv_write("ns", "bl:users", "set", ["b", "a"], None, "ops")
            await s.kv_write("ns", "s", "string", "hello", 60, "ops")
            await s.kv_write("ns", "h", "hash", {"f": "1"}, None, "ops")
            await s.kv_write("ns", "l", "list", ["x", "y"], None, "ops")
            await s.kv_write("ns", "glob*?[x]", "string", "g", None, "ops")
            await s.kv_write("other", "bl:users", "set", ["z"], None, "ops")
            assert await s.kv_read("ns", "bl:users") == {
                "key": "bl:users", "type": "set", "ttl": None, "value": ["a", "b"], "size": 2, "truncated": False}
            item = await s.kv_read("ns", "s")
            assert item is not None and item["value"] == "hello" and 59 <= item["ttl"] <= 60
            assert (await s.kv_read("ns", "h"))["value"] == {"f": "1"}  # type: ignore[index]
            assert (await s.kv_read("ns", "l"))["value"] == ["x", "y"]  # type: ignore[index]
            assert await s.kv_read("ns", "nope") is None
            # replace is atomic and changes the type
            await s.kv_write("ns", "s", "list", ["1"], None, "ops")
            assert (await s.kv_read("ns", "s"))["type"] == "list"  # type: ignore[index]
            keys, cursor = await s.kv_scan("ns", "", 100, "0")
            assert cursor == "0"
            assert [k["key"] for k in keys] == ["bl:users", "glob*?[x]", "h", "l", "s"]
            # the prefix is literal: glob characters are escaped
            assert [k["key"] for k in (await s.kv_scan("ns", "glob*", 100, "0"))[0]] == ["glob*?[x]"]
            assert (await s.kv_scan("ns", "g*", 100, "0"))[0] == []
            assert (await s.kv_scan("ns", "[", 100, "0"))[0] == []
            assert [k["key"] for k in (await s.kv_scan("ns", "bl:", 100, "0"))[0]] == ["bl:users"]
            # paging covers everything exactly once
            for i in range(30):
                await s.kv_call("ns", "set", [f"p{i:02d}", "v", None])
            seen: list[str] = []
            cursor = "0"
            while True:
                page, cursor = await s.kv_scan("ns", "p", 7, cursor)
                seen += [k["key"] for k in page]
                if cursor == "0":
                    break
            assert sorted(seen) == [f"p{i:02d}" for i in range(30)] and len(seen) == 30
            # set members
            assert await s.kv_members("ns", "bl:users", ["c", "a"], ["b", "zz"], "ops") == {
                "added": 1, "removed": 1, "size": 2}
            assert await s.kv_members("ns", "fresh", ["u"], [], "ops") == {"added": 1, "removed": 0, "size": 1}
            with pytest.raises(StoreError) as err:
                await s.kv_members("ns", "h", ["x"], [], "ops")
            assert err.value.status == 409
            assert await s.kv_delete("ns", "h", "ops") is True
            assert await s.kv_delete("ns", "h", "ops") is False
            with pytest.raises(StoreError):
                await s.kv_write("ns", "x", "zset", ["a"], None, "ops")
            with pytest.raises(StoreError):
                await s.kv_scan("ns", "", 10, "garbage")
            actions = [(e.action, e.target, e.detail.get("namespace")) for e in await s.audit(limit=20)]
            assert ("kv_delete", "h", "ns") in actions
            assert ("kv_members", "bl:users", "ns") in actions
            assert actions.count(("kv_put", "s", "ns")) == 2
            assert ("kv_members", "h", "ns") not in actions  # the refused change left no trace

    run(scenario())


def test_kv_read_caps_huge_sets(backend: str | None, store_prefix: str) -> None:
    from server.store.kv_admin import READ_CAP

    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            members = [f"m{i}" for i in range(READ_CAP + 10)]
            for i in range(0, len(members), 20_000):
                await s.kv_members("ns", "huge", members[i:i + 20_000], [], "t")
            item = await s.kv_read("ns", "huge")
            assert item is not None
            assert item["size"] == READ_CAP + 10 and item["truncated"] is True and len(item["value"]) == READ_CAP

    run(scenario())


# --- recordings -------------------------------------------------------------------------------

def test_recordings(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            t0 = time.time()
            for i in range(30):
                await s.record("cbA", {"i": i, "req": {"x": "é"}}, maxlen=1000, max_age_s=3600)
            await s.record("cbB", {"i": 0}, maxlen=1000)
            assert [r["i"] for r in await s.recordings("cbA", 5, None)] == [25, 26, 27, 28, 29]
            assert [r["i"] for r in await s.recordings("cbA", 3, t0 - 1)] == [0, 1, 2]
            assert await s.recordings("cbA", 3, time.time() + 10) == []
            assert (await s.recordings("cbA", 1, None))[0]["req"] == {"x": "é"}
            assert await s.recording_commands() == ["cbA", "cbB"]
            # paged reads (GET /admin/recordings streams them): the same records, in order
            for limit, since in ((5, None), (30, None), (31, None), (12, None), (7, t0 - 1), (100, t0 - 1)):
                want = [r["i"] for r in await s.recordings("cbA", limit, since)]
                start, got = await s.recordings_start("cbA", limit, since, page=4), []
                while start is not None and len(got) < limit:
                    page, start = await s.recordings_page("cbA", start, min(4, limit - len(got)))
                    got += [r["i"] for r in page]
                assert got == want, (limit, since)
            assert await s.recordings("cbC", 10, None) == []
            # the length cap trims (approximately: whole stream nodes)
            for i in range(500):
                await s.record("cbC", {"i": i}, maxlen=10)
            assert len(await s.recordings("cbC", 10_000, None)) < 200

    run(scenario())


def test_health_and_describe(backend: str | None, store_prefix: str) -> None:
    async def scenario() -> None:
        async with opened(backend, store_prefix) as s:
            assert await s.ping() is True
            assert s.healthy
            info = s.describe()
            assert info["mode"] == (backend.split(":")[0].replace("redis+", "").replace("redis", "standalone")
                                    .replace("unix", "standalone") if backend else "embedded")
            assert info["connected"] is True
            assert "password" not in str(info)

    run(scenario())
