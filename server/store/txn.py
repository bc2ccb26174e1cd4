"""WATCH/MULTI/EXEC transactions, on a single server and on a Redis Cluster.

On a cluster, redis-py's asyncio ClusterPipeline runs commands issued while WATCHing on a
separate thread with its own event loop (blocking ours), so transactions go instead
through a plain ``redis.asyncio.Redis`` client bound to the node that owns the slot of
the keys (all keys of one transaction share a hash tag or are one key). The slot map
comes from the cluster client; a MOVED or connection error refreshes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis import exceptions as rex

from server.store.base import StoreUnavailable

T = TypeVar("T")
Body = Callable[[Any], Awaitable[T]]


class Transactor:
    def __init__(self, client: Any, cluster: bool, max_attempts: int = 50) -> None:
        self.client = client
        self.cluster = cluster
        self.max_attempts = max_attempts
        self._nodes: dict[tuple[str, int], aredis.Redis] = {}
        self._stale = False
        # Test hook: awaited right before EXEC (fault injection between read and write).
        self.before_exec: Callable[[], Awaitable[None]] | None = None

    async def client_for(self, key: str) -> Any:
        """The client that can run a transaction on ``key``'s slot."""
        if not self.cluster:
            return self.client
        if self._stale or self.client._initialize:
            await self.client.nodes_manager.initialize()
            self._stale = False
        node = self.client.get_node_from_key(key)
        found = self._nodes.get((node.host, node.port))
        if found is None:
            pool = aredis.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            found = self._nodes[(node.host, node.port)] = aredis.Redis(connection_pool=pool)
        return found

    async def run(self, slot_key: str, watch: list[str], body: Body[T]) -> tuple[T, list[Any] | None]:
        """Run ``body`` until EXEC succeeds without a WATCH conflict.

        ``body(pipe)`` reads through ``pipe`` (immediate mode while watching), then calls
        ``pipe.multi()`` and queues the writes. If it returns without calling ``multi()``
        nothing is written and the results are ``None``.
        """
        try:
            client = await self.client_for(slot_key)
            async with client.pipeline(transaction=True) as pipe:
                for _ in range(self.max_attempts):
                    try:
                        if watch:
                            await pipe.watch(*watch)
                        value = await body(pipe)
                        if not pipe.explicit_transaction:
                            await pipe.reset()
                            return value, None
                        if self.before_exec is not None:
                            await self.before_exec()
                        results = await pipe.execute()
                        return value, results
                    except rex.WatchError:
                        continue
        except (rex.MovedError, rex.AskError, rex.ConnectionError, OSError):
            self._stale = self.cluster
            raise
        raise StoreUnavailable("too many concurrent changes; try again")

    async def close(self) -> None:
        for node in self._nodes.values():
            with contextlib.suppress(Exception):
                await node.aclose()
        self._nodes.clear()
