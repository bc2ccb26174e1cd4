"""KV data as the admin API sees it: listing, reading, replacing, deleting, set members.

Writes are atomic (one MULTI per change) and audited. On a single server (standalone,
Sentinel, embedded) the audit entry is part of the same MULTI; on a Cluster the data key
and the audit stream live in different slots, so the audit entry is appended right after
the write succeeded.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from server.store import audit
from server.store.base import StoreError
from server.store.keys import Keys, glob_escape
from server.store.tracking import KVCache
from server.store.txn import Transactor

READ_CAP = 100_000  # collection items returned by kv_read (the admin API writes up to 100000)
SCAN_ROUNDS = 64  # SCAN calls per kv_scan page before returning a partial page
TYPES = ("string", "set", "hash", "list")


def _text(value: Any, what: str) -> str:
    if type(value) is str:
        return value
    if type(value) in (int, float) and type(value) is not bool:
        return repr(value)
    raise StoreError("invalid_value", f"{what} must be a string", 400)


def _ttl(pttl: int) -> int | None:
    return None if pttl < 0 else max(1, math.ceil(pttl / 1000))


class KVAdmin:
    def __init__(self, client: Any, keys: Keys, txn: Transactor, cache: KVCache | None, cluster: bool,
                 add_audit: Callable[..., Awaitable[str]]) -> None:
        self.client = client
        self.keys = keys
        self.txn = txn
        self.cache = cache
        self.cluster = cluster
        self.add_audit = add_audit

    def _forget(self, key: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(key)

    def _audit_in(self, pipe: Any, actor: str, action: str, namespace: str, key: str, detail: dict[str, Any]) -> None:
        if not self.cluster:
            pipe.xadd(self.keys.audit, audit.fields(actor, action, key, detail={"namespace": namespace, **detail}),
                      maxlen=audit.AUDIT_MAXLEN, approximate=True)

    async def _audit_after(self, actor: str, action: str, namespace: str, key: str, detail: dict[str, Any]) -> None:
        if self.cluster:
            await self.add_audit(actor, action, key, detail={"namespace": namespace, **detail})

    # --- listing -------------------------------------------------------------------------

    async def scan(self, namespace: str, prefix: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
        root = self.keys.kv_ns_root(namespace)
        if type(prefix) is not str:
            raise StoreError("invalid_prefix", "prefix must be a string", 400)
        pattern = root + glob_escape(prefix) + "*"
        limit = max(1, min(int(limit), 10_000))
        node_index, pos = self._parse_cursor(cursor)
        nodes = self._scan_nodes()
        found: list[str] = []
        rounds = 0
        while node_index < len(nodes) and len(found) < limit and rounds < SCAN_ROUNDS:
            rounds += 1
            node = nodes[node_index]
            if node is None:
                pos, batch = await self.client.scan(pos, match=pattern, count=max(100, limit))
            else:
                pos, batch = await self.client.scan(pos, match=pattern, count=max(100, limit), target_nodes=node)
                if isinstance(pos, dict):  # redis-py answers {node name: cursor} for a targeted SCAN
                    pos = next(iter(pos.values()))
            found.extend(batch)
            if int(pos) == 0:
                node_index, pos = node_index + 1, 0
        done = node_index >= len(nodes)
        next_cursor = "0" if done else (str(pos) if not self.cluster else f"{node_index}-{pos}")
        if not found:
            return [], next_cursor
        async with self.client.pipeline(transaction=False) as pipe:
            for key in found:
                pipe.type(key)
                pipe.pttl(key)
            info = await pipe.execute()
        items = []
        for i, key in enumerate(found):
            kind, pttl = info[2 * i], int(info[2 * i + 1])
            if kind == "none":
                continue  # expired or deleted since the SCAN
            items.append({"key": key[len(root):], "type": kind, "ttl": _ttl(pttl)})
        items.sort(key=lambda item: item["key"])
        return items, next_cursor

    def _scan_nodes(self) -> list[Any]:
        if not self.cluster:
            return [None]
        return sorted(self.client.get_primaries(), key=lambda n: (n.host, n.port))

    def _parse_cursor(self, cursor: str | None) -> tuple[int, int]:
        text = cursor or "0"
        try:
            if self.cluster and "-" in text:
                a, _, b = text.partition("-")
                return int(a), int(b)
            value = int(text)
        except ValueError:
            raise StoreError("invalid_cursor", "cursor must be the value returned by the previous page", 400) from None
        if value < 0:
            raise StoreError("invalid_cursor", "cursor must be the value returned by the previous page", 400)
        return 0, value

    # --- reading -------------------------------------------------------------------------

    async def read(self, namespace: str, key: str) -> dict[str, Any] | None:
        name = self.keys.kv(namespace, key)
        for _ in range(3):  # the type may change between TYPE and the read: try again
            kind = await self.client.type(name)
            if kind == "none":
                return None
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.type(name)
                pipe.pttl(name)
                if kind == "string":
                    pipe.get(name)
                elif kind == "set":
                    pipe.scard(name)
                elif kind == "hash":
                    pipe.hlen(name)
                elif kind == "list":
                    pipe.llen(name)
                try:
                    again, pttl, *rest = await pipe.execute()
                except Exception as exc:
                    if "WRONGTYPE" in str(exc):
                        continue
                    raise
            if again != kind:
                continue
            item: dict[str, Any] = {"key": key, "type": kind, "ttl": _ttl(int(pttl))}
            if kind == "string":
                item.update(value=rest[0], size=len(rest[0] or ""), truncated=False)
            elif kind in ("set", "hash", "list"):
                size = int(rest[0])
                item.update(value=await self._collection(name, kind, size), size=size, truncated=size > READ_CAP)
            else:
                item.update(value=None, size=None, truncated=False)
            return item
        raise StoreError("conflict", "the key kept changing type while being read", 409)

    async def _collection(self, name: str, kind: str, size: int) -> Any:
        if kind == "list":
            return list(await self.client.lrange(name, 0, READ_CAP - 1))
        if size <= READ_CAP:
            if kind == "set":
                return sorted(await self.client.smembers(name))
            return dict(await self.client.hgetall(name))
        # Too big to ship whole: the first READ_CAP items of a cursor walk.
        out: Any = set() if kind == "set" else {}
        cursor = 0
        while True:
            if kind == "set":
                cursor, batch = await self.client.sscan(name, cursor, count=1000)
                out.update(batch)
            else:
                cursor, batch = await self.client.hscan(name, cursor, count=1000)
                out.update(batch)
            if int(cursor) == 0 or len(out) >= READ_CAP:
                break
        if kind == "set":
            return sorted(out)[:READ_CAP]
        return dict(sorted(out.items())[:READ_CAP])

    # --- writing -------------------------------------------------------------------------

    async def write(self, namespace: str, key: str, kind: str, value: Any, ttl: int | None, actor: str) -> None:
        name = self.keys.kv(namespace, key)
        if kind not in TYPES:
            raise StoreError("invalid_type", f"type must be one of {', '.join(TYPES)}", 400)
        if ttl is not None and (type(ttl) is not int or ttl < 1):
            raise StoreError("invalid_ttl", "ttl must be a positive integer (seconds) or null", 400)
        if kind == "string":
            data: Any = _text(value, "value")
            size = 1
        elif kind in ("set", "list"):
            if type(value) is not list or not value:
                raise StoreError("invalid_value", f"a {kind} value must be a non-empty list", 400)
            data = [_text(v, "each item") for v in value]
            size = len(data)
        else:
            if type(value) is not dict or not value:
                raise StoreError("invalid_value", "a hash value must be a non-empty object", 400)
            data = {_text(k, "each field"): _text(v, "each value") for k, v in value.items()}
            size = len(data)
        detail = {"type": kind, "ttl": ttl, "size": size}

        async def body(pipe: Any) -> None:
            pipe.multi()
            pipe.delete(name)
            if kind == "string":
                pipe.set(name, data)
            elif kind == "set":
                pipe.sadd(name, *data)
            elif kind == "list":
                pipe.rpush(name, *data)
            else:
                pipe.hset(name, mapping=data)
            if ttl is not None:
                pipe.expire(name, ttl)
            self._audit_in(pipe, actor, "kv_put", namespace, key, detail)

        try:
            await self.txn.run(name, [], body)
        finally:
            self._forget(name)
        await self._audit_after(actor, "kv_put", namespace, key, detail)

    async def delete(self, namespace: str, key: str, actor: str) -> bool:
        name = self.keys.kv(namespace, key)

        async def body(pipe: Any) -> bool:
            if not await pipe.exists(name):
                return False
            pipe.multi()
            pipe.delete(name)
            self._audit_in(pipe, actor, "kv_delete", namespace, key, {})
            return True

        try:
            existed, _ = await self.txn.run(name, [name], body)
        finally:
            self._forget(name)
        if existed:
            await self._audit_after(actor, "kv_delete", namespace, key, {})
        return existed

    async def members(self, namespace: str, key: str, add: list[Any], remove: list[Any], actor: str) -> dict[str, int]:
        name = self.keys.kv(namespace, key)
        add_v = [_text(v, "each member") for v in (add or [])]
        rem_v = [_text(v, "each member") for v in (remove or [])]
        detail = {"add": len(add_v), "remove": len(rem_v)}

        async def body(pipe: Any) -> None:
            kind = await pipe.type(name)
            if kind not in ("none", "set"):
                raise StoreError("wrong_type", f"key {key[:80]!r} holds a {kind}, not a set", 409)
            pipe.multi()
            if add_v:
                pipe.sadd(name, *add_v)
            if rem_v:
                pipe.srem(name, *rem_v)
            pipe.scard(name)
            self._audit_in(pipe, actor, "kv_members", namespace, key, detail)

        try:
            _, results = await self.txn.run(name, [name], body)
        finally:
            self._forget(name)
        assert results is not None
        i = 0
        added = removed = 0
        if add_v:
            added, i = int(results[0]), 1
        if rem_v:
            removed, i = int(results[i]), i + 1
        size = int(results[i])
        await self._audit_after(actor, "kv_members", namespace, key, detail)
        return {"added": added, "removed": removed, "size": size}
