"""The ``kv`` operations scripts may run, on the namespaced Redis keys.

Every call is re-validated with ``sandbox.kvops.validate`` (the worker that sent it is
untrusted), then mapped to one Redis command (or one MULTI for ``incr`` with a TTL).
Results are plain JSON data. Refusals raise ``KVRefused`` with a message naming the
script-level key only; outages raise ``KVUnavailable``.

Everything per op comes from its ``kvops.Op``: the method ``_op_<name>`` that runs it, whether
it writes (the cache forgets the key), the type the key must hold (named in a refusal), and
for read-mostly reads (``op.cache``: get, exists, sismember, smismember, hget) the entries
they are served from in the client-side cache (``tracking.KVCache``) while invalidation
tracking is connected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis import exceptions as rex

from sandbox import kvops
from sandbox.api import KVRefused, KVUnavailable
from sandbox.host.deadline import Deadline
from server.store.base import StoreError
from server.store.errors import is_unavailable, reply_text
from server.store.health import Health
from server.store.keys import Keys
from server.store.tracking import MISS, KVCache, Tracker

MAX = kvops.MAX_COLLECTION_RESULT
OPS = kvops.OPS

def _expires(started: float, pttl: int) -> float:
    # started is taken before the request left, so started + pttl is never later than
    # the moment Redis expires the key. 0.0 means "no expiry".
    return started + pttl / 1000.0 if pttl >= 0 else 0.0


class KVEngine:
    def __init__(self, client: Any, keys: Keys, health: Health, *, cache: KVCache | None,
                 tracker: Tracker | None, deadline: float, key_bytes: int, value_bytes: int) -> None:
        self.client = client
        self.keys = keys
        self.health = health
        self.cache = cache
        self.tracker = tracker
        self.deadline = deadline
        self.key_bytes = key_bytes
        self.value_bytes = value_bytes
        self.round_trips = 0  # commands sent for script KV calls (cache effectiveness)
        self._loop: asyncio.AbstractEventLoop | None = None  # the store's, once known
        # Member misses per set key since it last changed (-1: too big to keep whole), see
        # sandbox.kvops.WHOLE_SET; forgotten when the key changes.
        self._set_misses: dict[str, int] = {}
        if cache is not None:
            cache.listeners.append(self._set_changed)
        self._roots: dict[str, str] = {}
        self._ops: dict[str, Callable[[str, list[Any]], Awaitable[Any]]] = {
            name: getattr(self, "_op_" + name) for name in kvops.OPS
        }

    def cache_usable(self) -> bool:
        # drain() applies pending invalidations first: see tracking.py for why this
        # makes a write from any instance visible to the next read here.
        return self.tracker is not None and self.tracker.drain()

    def _name(self, namespace: str, key: str) -> str:
        root = self._roots.get(namespace)
        if root is None:
            try:
                root = self.keys.kv_ns_root(namespace)
            except StoreError as exc:
                raise KVRefused(exc.message) from None
            if len(self._roots) < 10_000:
                self._roots[namespace] = root
        return root + key

    async def call(self, namespace: str, op_name: str, args: list[Any]) -> Any:
        op, a = kvops.validate(op_name, args, self.key_bytes, self.value_bytes)
        key = self._name(namespace, a[0])
        if op.cache is not None and not op.cached_per_member and self.cache is not None and self.cache_usable():
            # Hot path: answered from memory, no timeout scope or task switch needed.
            value = self.cache.peek(key, op.cache_sub(a))
            if value is not MISS:
                return bool(value) if op.answer == kvops.BOOL else value
        try:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            async with Deadline(loop, loop.time() + self.deadline):
                result = await self._ops[op.name](key, a)
        except KVRefused:
            raise
        except rex.ResponseError as exc:
            if is_unavailable(exc):
                self.health.down(exc)
                raise KVUnavailable("the KV store is unavailable") from None
            raise KVRefused(self._refusal(op.name, a[0], exc)) from None
        except Exception as exc:
            if is_unavailable(exc):
                self.health.down(exc)
                raise KVUnavailable("the KV store is unavailable") from None
            raise
        finally:
            # Even a failed write may have been applied: forget what we knew.
            if op.writes and self.cache is not None:
                self.cache.invalidate(key)
        self.health.ok()
        return result

    def peek_lasting(self, namespace: str, op_name: str,
                     args: list[Any]) -> tuple[Any, str, frozenset[str] | None] | None:
        """A cache hit that stays valid until the cache invalidates its key, with that key
        and, for a set kept whole, its members (so a sandbox worker may keep the answer, or
        the set); None means "do an ordinary ``call``". Synchronous on purpose: nothing can
        invalidate between the hit and the caller recording the key."""
        cache = self.cache
        if cache is None or not self.cache_usable():
            return None
        try:
            op, a = kvops.validate(op_name, args, self.key_bytes, self.value_bytes)
            key = self._name(namespace, a[0])
        except KVRefused:
            return None  # the ordinary call reports it
        if op.cache is None:
            return None
        whole = cache.whole_lasting(key) if op.cache == kvops.MEMBER_TAG else None
        if whole is not None:  # the set answers every member: no lookup per member
            return ([m in whole for m in a[1]] if op.cached_per_member else a[1] in whole), key, whole
        values = []
        for sub in op.cache_subs(a):
            v = cache.peek_lasting(key, sub)
            if v is MISS:
                return None
            values.append(v)
        if op.cached_per_member:
            return [bool(v) for v in values], key, None
        return (bool(values[0]) if op.answer == kvops.BOOL else values[0]), key, None

    @staticmethod
    def _refusal(op: str, key: str, exc: rex.ResponseError) -> str:
        text = reply_text(exc)
        shown = key if len(key) <= 80 else key[:77] + "..."
        if text.startswith("WRONGTYPE"):
            return f"kv.{op}: key {shown!r} holds another type of value (not a {kvops.OPS[op].holds or 'value'})"
        if "not an integer" in text or "not a valid" in text:
            return f"kv.{op}: the value at {shown!r} is not an integer"
        if "overflow" in text:
            return f"kv.{op}: increment or decrement would overflow"
        return f"kv.{op}: refused by the store"

    # --- cached reads ------------------------------------------------------------------

    async def _cached(self, key: str, sub: Any, send: Callable[[Any], Any]) -> Any:
        cache = self.cache
        if cache is None or not self.cache_usable():
            self.round_trips += 1
            async with self.client.pipeline(transaction=False) as pipe:
                send(pipe)
                return (await pipe.execute())[0]
        value = cache.lookup(key, sub)
        if value is not MISS:
            return value
        return await self._fill(key, send, lambda replies: (replies[0], [(sub, replies[0])]))

    async def _fill(self, key: str, send: Callable[[Any], Any],
                    keep: Callable[[list[Any]], tuple[Any, list[tuple[Any, Any]]]]) -> Any:
        """One round trip: the commands ``send`` adds, then PTTL. ``keep(replies)`` gives the
        answer and the entries to cache, which are cached unless the read raced an
        invalidation."""
        assert self.cache is not None and self.tracker is not None
        await self.tracker.cover(key)  # subscribe to its invalidations first (tracking.py); else not cached
        epoch = self.cache.begin(key)
        started = time.monotonic()
        items: list[tuple[Any, Any]] | None = None
        expires = 0.0
        try:
            self.round_trips += 1
            async with self.client.pipeline(transaction=False) as pipe:
                send(pipe)
                pipe.pttl(key)
                replies = await pipe.execute()
            answer, items = keep(replies)
            expires = _expires(started, int(replies[-1]))
            return answer
        finally:
            self.cache.finish(key, epoch, items, expires)

    async def _op_get(self, key: str, a: list[Any]) -> Any:
        return await self._cached(key, OPS["get"].cache_sub(a), lambda p: p.get(key))

    async def _op_exists(self, key: str, a: list[Any]) -> bool:
        return bool(await self._cached(key, OPS["exists"].cache_sub(a), lambda p: p.exists(key)))

    async def _op_hget(self, key: str, a: list[Any]) -> Any:
        return await self._cached(key, OPS["hget"].cache_sub(a), lambda p: p.hget(key, a[1]))

    async def _op_sismember(self, key: str, a: list[Any]) -> bool:
        if self.cache is None or not self.cache_usable():
            self.round_trips += 1
            return bool(await self.client.sismember(key, a[1]))
        return (await self._members(key, [a[1]], single=True))[0]

    async def _op_smismember(self, key: str, a: list[Any]) -> list[bool]:
        if self.cache is None or not self.cache_usable():
            self.round_trips += 1
            return [bool(x) for x in await self.client.smismember(key, a[1])]
        return await self._members(key, a[1], single=False)

    async def _members(self, key: str, members: list[str], single: bool) -> list[bool]:
        """Set membership through the cache: kept answers (or the kept whole set), then one
        round trip for the members it lacks."""
        assert self.cache is not None
        whole = self.cache.peek(key, kvops.WHOLE_SET)
        if whole is not MISS:  # one lookup, not one per member (a message's words: hundreds)
            return [m in whole for m in members]
        lookup = self.cache.lookup
        found = {m: lookup(key, (kvops.MEMBER_TAG, m)) for m in members}
        missing = [m for m, v in found.items() if v is MISS]
        if missing:
            fetched = await self._fill_members(key, missing, single)
            for m, v in zip(missing, fetched, strict=True):
                found[m] = v
        return [bool(found[m]) for m in members]

    async def _fill_members(self, key: str, missing: list[str], single: bool) -> list[bool]:
        """``_fill`` for set members. When the key is due to be kept whole (``_whole_due``)
        the same round trip also asks for up to WHOLE_SET_MAX_MEMBERS + 1 members: all of
        them when the set is that small (SRANDMEMBER with a positive count never repeats a
        member, and costs O(count) in Redis however big the set is)."""
        whole = self._whole_due(key)

        def send(pipe: Any) -> None:
            if single:
                pipe.sismember(key, missing[0])
            else:
                pipe.smismember(key, missing)
            if whole:
                pipe.srandmember(key, kvops.WHOLE_SET_MAX_MEMBERS + 1)

        def keep(replies: list[Any]) -> tuple[list[bool], list[tuple[Any, Any]]]:
            values = [bool(replies[0])] if single else [bool(v) for v in replies[0]]
            if whole:
                members = replies[1]
                if len(members) <= kvops.WHOLE_SET_MAX_MEMBERS \
                        and kvops.whole_set_bytes(members) <= kvops.WHOLE_SET_MAX_BYTES:
                    return values, [(kvops.WHOLE_SET, frozenset(members))]
                self._set_misses[key] = -1  # too big to keep whole until it changes
            return values, [((kvops.MEMBER_TAG, m), v) for m, v in zip(missing, values, strict=True)]

        return await self._fill(key, send, keep)

    def _whole_due(self, key: str) -> bool:
        """Count a member miss of ``key``; True when the set should now be fetched whole."""
        misses = self._set_misses.get(key, 0)
        if misses < 0:
            return False
        if misses + 1 >= kvops.WHOLE_SET_AFTER:
            self._set_misses[key] = 0
            return True
        if len(self._set_misses) >= 10_000:  # bounded: forgetting only delays keeping whole
            self._set_misses.clear()
        self._set_misses[key] = misses + 1
        return False

    def _set_changed(self, key: str | None) -> None:
        if key is None:
            self._set_misses.clear()
        else:
            self._set_misses.pop(key, None)

    # --- everything else: one command each ---------------------------------------------

    async def _op_set(self, key: str, a: list[Any]) -> bool:
        self.round_trips += 1
        await self.client.set(key, a[1], ex=a[2])
        return True

    async def _op_delete(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.delete(key))

    async def _op_incr(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        by, ttl = a[1], a[2]
        if ttl is None:
            return int(await self.client.incrby(key, by))
        # The TTL is set only when the key has none (EXPIRE NX), in the same MULTI, so a
        # counter window is never extended by later increments and never left immortal.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, by)
            pipe.expire(key, ttl, nx=True)
            value, _ = await pipe.execute()
        return int(value)

    async def _op_expire(self, key: str, a: list[Any]) -> bool:
        self.round_trips += 1
        return bool(await self.client.expire(key, a[1]))

    async def _op_ttl(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.ttl(key))

    async def _op_sadd(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.sadd(key, *a[1]))

    async def _op_srem(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.srem(key, *a[1]))

    async def _op_smembers(self, key: str, a: list[Any]) -> list[str]:
        self.round_trips += 2
        if int(await self.client.scard(key)) > MAX:
            raise KVRefused(f"kv.smembers: the set has more than {MAX} members; use sismember/smismember")
        members = await self.client.smembers(key)
        if len(members) > MAX:
            raise KVRefused(f"kv.smembers: the set has more than {MAX} members; use sismember/smismember")
        return sorted(members)

    async def _op_scard(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.scard(key))

    async def _op_hset(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.hset(key, mapping=a[1]))

    async def _op_hdel(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.hdel(key, *a[1]))

    async def _op_hgetall(self, key: str, a: list[Any]) -> dict[str, str]:
        self.round_trips += 2
        if int(await self.client.hlen(key)) > MAX:
            raise KVRefused(f"kv.hgetall: the hash has more than {MAX} fields; use hget")
        data = await self.client.hgetall(key)
        if len(data) > MAX:
            raise KVRefused(f"kv.hgetall: the hash has more than {MAX} fields; use hget")
        return dict(data)

    async def _op_hincrby(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.hincrby(key, a[1], a[2]))

    async def _op_lpush(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.lpush(key, *a[1]))

    async def _op_rpush(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.rpush(key, *a[1]))

    async def _op_lrange(self, key: str, a: list[Any]) -> list[str]:
        start, stop = a[1], a[2]
        if 0 <= start and 0 <= stop:
            if start > stop:
                return []
            if stop - start < MAX:  # at most MAX items whatever the length: one round trip
                self.round_trips += 1
                return list(await self.client.lrange(key, start, stop))
        # Negative or wide indexes: resolve them against the length, then fetch exactly
        # that window (so a list growing meanwhile still yields at most MAX items).
        self.round_trips += 2
        n = int(await self.client.llen(key))
        s = start + n if start < 0 else start
        e = stop + n if stop < 0 else stop
        s, e = max(s, 0), min(e, n - 1)
        if e < s:
            return []
        if e - s + 1 > MAX:
            raise KVRefused(f"kv.lrange: at most {MAX} items per call; ask for a smaller range")
        return list(await self.client.lrange(key, s, e))

    async def _op_ltrim(self, key: str, a: list[Any]) -> bool:
        self.round_trips += 1
        await self.client.ltrim(key, a[1], a[2])
        return True

    async def _op_llen(self, key: str, a: list[Any]) -> int:
        self.round_trips += 1
        return int(await self.client.llen(key))
