"""The client-side KV cache is bounded in bytes, in all and per KV namespace
(server/store/tracking.py KVCache), and the store passes the bounds through."""

from __future__ import annotations

import asyncio
from typing import Any

from server.store.tracking import MISS, KVCache

ROOT = "p:kv:"


def fill(cache: KVCache, ns: str, key: str, value: Any) -> None:
    full = f"{ROOT}{ns}:{key}"
    epoch = cache.begin(full)
    cache.finish(full, epoch, [(("g",), value)], 0.0)


def test_a_namespace_filling_the_cache_evicts_only_its_own_entries() -> None:
    cache = KVCache(max_entries=100_000, max_bytes=4 << 20, ns_max_bytes=1 << 20, root=ROOT)
    fill(cache, "victim", "hot", "v" * 1000)
    for i in range(500):  # 500 distinct 60 KB values: ~30 MB asked for
        fill(cache, "attacker", f"k{i}", "x" * 60_000)
        assert cache.namespace_bytes()["attacker"] <= 1 << 20
        assert cache.bytes <= 4 << 20
    assert cache.lookup(f"{ROOT}victim:hot", ("g",)) == "v" * 1000
    assert cache.ns_evictions > 400
    # The newest attacker values are the ones kept (LRU within the namespace).
    assert cache.lookup(f"{ROOT}attacker:k499", ("g",)) == "x" * 60_000
    assert cache.lookup(f"{ROOT}attacker:k0", ("g",)) is MISS


def test_the_global_bound_holds_across_many_namespaces() -> None:
    cache = KVCache(max_entries=100_000, max_bytes=2 << 20, ns_max_bytes=1 << 20, root=ROOT)
    for n in range(20):
        for i in range(20):
            fill(cache, f"ns{n}", f"k{i}", "y" * 20_000)
            assert cache.bytes <= 2 << 20
    assert sum(cache.namespace_bytes().values()) == cache.bytes
    assert cache.bytes > 1 << 20  # used, not merely refused
    assert cache.stats()["evictions"] > 0


def test_byte_accounting_returns_to_zero() -> None:
    cache = KVCache(root=ROOT)
    for i in range(50):
        fill(cache, "a", f"k{i}", "z" * (i * 100))
        fill(cache, "a", f"k{i}", "zz" * (i * 100))  # replaced: counted once
    full = f"{ROOT}a:k3"
    epoch = cache.begin(full)
    cache.finish(full, epoch, [(("h", "f1"), "1"), (("h", "f2"), ["a", "b"])], 0.0)
    for i in range(0, 50, 2):
        cache.invalidate(f"{ROOT}a:k{i}")
    assert cache.bytes == sum(cache.namespace_bytes().values()) > 0
    for i in range(1, 50, 2):
        cache.invalidate(f"{ROOT}a:k{i}")
    assert cache.bytes == 0 and cache.namespace_bytes() == {} and len(cache) == 0
    fill(cache, "a", "again", "q")
    cache.flush()
    assert cache.bytes == 0 and cache.namespace_bytes() == {}


def test_a_value_larger_than_the_namespace_share_is_not_kept() -> None:
    cache = KVCache(max_bytes=1 << 20, ns_max_bytes=100_000, root=ROOT)
    fill(cache, "a", "big", "b" * 200_000)
    assert cache.lookup(f"{ROOT}a:big", ("g",)) is MISS and cache.bytes == 0


def test_store_options_set_the_bounds(redis_standalone: Any, store_prefix: str) -> None:
    from server.store.connect import open_store

    async def scenario() -> None:
        store = await open_store(redis_standalone.url + "?cache_mb=8&cache_ns_mb=2", prefix=store_prefix)
        try:
            assert store.cache is not None
            assert store.cache.max_bytes == 8 << 20 and store.cache.ns_max_bytes == 2 << 20
            assert store.cache.root == store.keys.kv_root
        finally:
            await store.close()
        store = await open_store(redis_standalone.url, prefix=store_prefix)
        try:
            assert store.cache is not None and store.cache.max_bytes == 64 << 20
            assert store.cache.ns_max_bytes == 16 << 20
        finally:
            await store.close()

    asyncio.run(scenario())
