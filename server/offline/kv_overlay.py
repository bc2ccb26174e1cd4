"""A copy-on-write view of the live KV store, for dry runs (the admin test endpoint).

Reads of keys the run has not written go to the live store; the first write to a key
copies it into a private scratch store and every later operation on that key stays
there. Live data is never modified by a test run.
"""

from __future__ import annotations

from typing import Any

from sandbox.kvops import OPS


class OverlayKV:
    def __init__(self, live: Any, scratch: Any, namespace: str) -> None:
        self.live = live
        self.scratch = scratch
        self.namespace = namespace
        self._copied: set[str] = set()

    async def __call__(self, op: str, args: list[Any]) -> Any:
        spec = OPS.get(op)
        key = args[0] if args else None
        if spec is None or type(key) is not str:
            # Let the live store's validation produce the proper error; nothing is written.
            return await self.live.kv_call(self.namespace, op, args)
        if key in self._copied:
            return await self.scratch.kv_call(self.namespace, op, args)
        if not spec.writes:
            return await self.live.kv_call(self.namespace, op, args)
        item = await self.live.kv_read(self.namespace, key)
        if item is not None:
            await self.scratch.kv_write(self.namespace, key, item["type"], item["value"], item.get("ttl"), "test")
        self._copied.add(key)
        return await self.scratch.kv_call(self.namespace, op, args)
