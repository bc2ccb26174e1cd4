"""Client-side cache of KV reads, kept correct by Redis server-assisted invalidation.

Blocklist checks (``sismember`` & co.) are read-mostly: after the first read of a key,
answering from process memory saves a network round trip per check. The cache is only
used while a dedicated connection has ``CLIENT TRACKING ON BCAST PREFIX <P>:kv:``
active (RESP3): Redis then pushes an ``invalidate`` message for every KV key that any
client modifies, expires or evicts.

"A write from any instance is visible to the next read on every instance": Redis sends
the invalidation before (or in the same event-loop pass as) the reply to the writer
(BCAST invalidations are flushed in ``beforeSleep`` ahead of pending replies). The
tracking socket is a plain non-blocking socket that is drained *synchronously* before
every cache lookup (one ``recv`` syscall, no event-loop turn needed), so once the
writer has its reply, the invalidation is already in our socket buffer whenever the
network delivers it no later than the writer's reply to whoever reads next (always true
on one host; across hosts it is bounded by network delay, like any replica lag).

Safety rules:
- The cache is empty and unused whenever the tracking connection is down; it is
  flushed on every connect, disconnect, missed probe or ``invalidate`` with a null key
  list (FLUSHALL/FLUSHDB).
- A read is cached only if no invalidation for its key (and no flush) happened while
  it was in flight, so an old value can never be stored after its invalidation.
- Entries of keys with a TTL expire locally no later than in Redis.
- A probe (``ROLE``) every ``probe_interval`` must be answered within the op timeout and
  say ``master``; otherwise the connection is dropped (covers a silently dead peer and
  a master demoted by a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

import hiredis

log = logging.getLogger("scriptgate.store.tracking")

_MISS = object()


# Defaults of the client-side cache's bounds (store URL options cache_bytes, cache_ns_bytes,
# cache_size). Bytes are estimates of what the host holds (CPython object sizes).
CACHE_BYTES = 64 * 1024 * 1024
CACHE_NS_BYTES = 16 * 1024 * 1024
CACHE_ENTRIES = 100_000
_KEY_OVERHEAD = 400  # OrderedDict nodes, the per-key dict, the namespace's index entry
_ENTRY_OVERHEAD = 160  # dict slot, the (value, expires_at) tuple, the float


def _size(value: Any) -> int:
    t = type(value)
    if t is str or t is bytes:
        return sys.getsizeof(value)
    if t is tuple or t is list:
        return 56 + 8 * len(value) + sum(_size(v) for v in value)
    return 32


class KVCache:
    """Bounded LRU: Redis key -> {sub-key (what was asked) -> (value, expires_at)}.

    Bounded in entries and in bytes, globally (``max_bytes``) and per KV namespace
    (``ns_max_bytes``): a script that reads many distinct large values evicts its own
    namespace's entries, never more than ``ns_max_bytes`` of host memory, and the other
    namespaces keep their hot keys. ``root`` is the KV key prefix (``<prefix>:kv:``) the
    namespace is read from (keys are ``<root><namespace>:<key>``)."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES,
                 ns_max_bytes: int = CACHE_NS_BYTES, root: str = "") -> None:
        self.max_entries = max(1, max_entries)
        self.max_bytes = max(1, max_bytes)
        self.ns_max_bytes = max(1, min(ns_max_bytes, self.max_bytes))
        self.root = root
        self._keys: OrderedDict[str, dict[Hashable, tuple[Any, float]]] = OrderedDict()
        self._cost: dict[str, int] = {}  # key -> estimated bytes held for it
        self._spaces: dict[str, OrderedDict[str, None]] = {}  # namespace -> its keys, LRU first
        self._ns_bytes: dict[str, int] = {}
        self._size = 0
        self.bytes = 0
        self._epoch = 0  # +1 on every flush: in-flight reads from before it are not cached
        self._inflight: dict[str, list[int]] = {}  # key -> [reads in flight, invalidated?]
        self.hits = self.misses = self.invalidations = self.flushes = self.evictions = 0
        self.ns_evictions = 0  # evictions because a namespace reached its share
        # Called with the key on every invalidation and None on every flush (sandbox
        # workers keep copies of answers: WorkerPool.invalidate). Must not raise.
        self.listeners: list[Callable[[str | None], None]] = []

    def __len__(self) -> int:
        return self._size

    def _ns(self, key: str) -> str:
        n = len(self.root)
        end = key.find(":", n)
        return key[n:end] if key.startswith(self.root) and end > n else ""

    def lookup(self, key: str, sub: Hashable) -> Any:
        entries = self._keys.get(key)
        if entries is not None:
            item = entries.get(sub)
            if item is not None:
                value, expires_at = item
                if expires_at and time.monotonic() >= expires_at:
                    self._drop(key)
                else:
                    self._keys.move_to_end(key)
                    space = self._spaces.get(self._ns(key))
                    if space is not None:
                        space.move_to_end(key)
                    self.hits += 1
                    return value
        self.misses += 1
        return _MISS

    def peek(self, key: str, sub: Hashable) -> Any:
        """Like ``lookup`` but a miss is not counted (the caller will look up again)."""
        entries = self._keys.get(key)
        if entries is None or sub not in entries:
            return _MISS
        return self.lookup(key, sub)

    def peek_lasting(self, key: str, sub: Hashable) -> Any:
        """A hit only for an entry without a TTL (it stays valid until invalidated);
        a miss is not counted (the caller falls back to an ordinary read)."""
        entries = self._keys.get(key)
        if entries is None:
            return _MISS
        item = entries.get(sub)
        if item is None or item[1]:
            return _MISS
        self.hits += 1
        return item[0]

    def begin(self, key: str) -> int:
        rec = self._inflight.get(key)
        if rec is None:
            self._inflight[key] = [1, 0]
        else:
            rec[0] += 1
        return self._epoch

    def finish(self, key: str, epoch: int, items: list[tuple[Hashable, Any]] | None, expires_at: float) -> None:
        """End a read started with ``begin``; cache ``items`` unless it raced an invalidation."""
        rec = self._inflight.get(key)
        clean = rec is not None and not rec[1] and epoch == self._epoch
        if rec is not None:
            rec[0] -= 1
            if rec[0] <= 0:
                del self._inflight[key]
        if not clean or not items:
            return
        ns = self._ns(key)
        entries = self._keys.get(key)
        if entries is None:
            entries = self._keys[key] = {}
            self._cost[key] = 0
            cost = _KEY_OVERHEAD + sys.getsizeof(key)
            space = self._spaces.get(ns)
            if space is None:
                space = self._spaces[ns] = OrderedDict()
            space[key] = None
        else:
            self._keys.move_to_end(key)
            cost = 0
            space = self._spaces[ns]
            space.move_to_end(key)
        for sub, value in items:
            old = entries.get(sub)
            if old is None:
                self._size += 1
            else:
                cost -= _ENTRY_OVERHEAD + _size(sub) + _size(old[0])
            entries[sub] = (value, expires_at)
            cost += _ENTRY_OVERHEAD + _size(sub) + _size(value)
        self._cost[key] += cost
        self.bytes += cost
        self._ns_bytes[ns] = self._ns_bytes.get(ns, 0) + cost
        while self._ns_bytes.get(ns, 0) > self.ns_max_bytes and space:
            self.ns_evictions += 1
            self._evict(next(iter(space)))
        while (self._size > self.max_entries or self.bytes > self.max_bytes) and self._keys:
            self._evict(next(iter(self._keys)))

    def _evict(self, key: str) -> None:
        self.evictions += 1
        self._drop(key)

    def _drop(self, key: str) -> None:
        entries = self._keys.pop(key, None)
        if entries is None:
            return
        self._size -= len(entries)
        cost = self._cost.pop(key)
        self.bytes -= cost
        ns = self._ns(key)
        left = self._ns_bytes[ns] - cost
        space = self._spaces[ns]
        space.pop(key, None)
        if space:
            self._ns_bytes[ns] = left
        else:
            del self._spaces[ns]
            del self._ns_bytes[ns]

    def invalidate(self, key: str) -> None:
        self.invalidations += 1
        self._drop(key)
        rec = self._inflight.get(key)
        if rec is not None:
            rec[1] = 1
        for listener in self.listeners:
            listener(key)

    def flush(self) -> None:
        self.flushes += 1
        self._keys.clear()
        self._cost.clear()
        self._spaces.clear()
        self._ns_bytes.clear()
        self._size = 0
        self.bytes = 0
        self._epoch += 1
        for listener in self.listeners:
            listener(None)

    def namespace_bytes(self) -> dict[str, int]:
        return dict(self._ns_bytes)

    def stats(self) -> dict[str, int]:
        return {"entries": self._size, "keys": len(self._keys), "max_entries": self.max_entries,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "ns_max_bytes": self.ns_max_bytes,
                "hits": self.hits, "misses": self.misses, "invalidations": self.invalidations,
                "flushes": self.flushes, "evictions": self.evictions, "ns_evictions": self.ns_evictions}


MISS = _MISS


@dataclass
class TrackingTarget:
    """Where the tracking connection goes: the server the data connections use."""

    host: str | None = None
    port: int = 6379
    path: str | None = None  # unix socket
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = None


TargetProvider = Callable[[], Awaitable[TrackingTarget]]


class TrackingUnsupported(Exception):
    """The server refuses RESP3 or CLIENT TRACKING (Redis < 6, fakeredis): no cache."""


def _command(*parts: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Tracker:
    """Owns the tracking connection and feeds invalidations into a ``KVCache``."""

    def __init__(self, cache: KVCache, kv_prefix: str, provider: TargetProvider,
                 timeout: float = 0.5, probe_interval: float = 1.0,
                 data_address: Callable[[], Any] | None = None) -> None:
        self.cache = cache
        self.kv_prefix = kv_prefix
        self.provider = provider
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.connected = False
        self.supported = True
        self.last_error: str | None = None
        self.connects = 0
        # Where the data connections currently go (Sentinel: the pool's master address).
        # If it differs from where tracking is connected, invalidations would come from
        # the wrong server: the cache is dropped at once (checked on every drain).
        self._data_address = data_address
        self._address: tuple[str, int] | None = None
        self.client_id: int | None = None  # the tracking connection's CLIENT ID (tests, debugging)
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()
        self._replies: deque[asyncio.Future[Any]] = deque()
        self._lost_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="kv-tracking")

    async def close(self) -> None:
        self._closing = True
        task = self._task
        if task is not None:
            # Python 3.11's wait_for can swallow a cancellation that races with its inner
            # task finishing, so cancel until the task has really ended.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            with contextlib.suppress(BaseException):
                task.result()
            self._task = None
        self._lost("closed")

    async def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.connected and self.supported and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.connected

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                target = await asyncio.wait_for(self.provider(), self.timeout * 4)
                sock = await asyncio.wait_for(asyncio.to_thread(self._handshake, target), self.timeout * 4)
                self._address = (target.host, int(target.port)) if target.host else None
            except TrackingUnsupported as exc:
                self.supported = False
                self.last_error = str(exc)
                log.info("client-side KV cache off: %s", exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                self.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            self._attach(sock)
            try:
                await self._probe_loop()
            finally:
                self._lost("probe loop ended")

    def _handshake(self, target: TrackingTarget) -> socket.socket:
        """Blocking connect + HELLO 3 + CLIENT TRACKING, run in a thread with timeouts."""
        if target.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(target.path)
        else:
            sock = socket.create_connection((target.host or "127.0.0.1", target.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if target.ssl_context is not None:
                sock = target.ssl_context.wrap_socket(sock, server_hostname=target.server_hostname)
            hello: list[str | bytes | int] = ["HELLO", 3]
            if target.password is not None:
                hello += ["AUTH", target.username or "default", target.password]
            sock.sendall(
                _command(*hello)
                + _command("CLIENT", "SETNAME", "scriptgate-kv-tracking")
                + _command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self.kv_prefix)
            )
            reader = hiredis.Reader()
            replies: list[Any] = []
            while len(replies) < 3:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed during tracking handshake")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
            hello_reply, _, tracking_reply = replies[:3]
            for reply, what in ((hello_reply, "HELLO 3"), (tracking_reply, "CLIENT TRACKING")):
                if isinstance(reply, hiredis.ReplyError):
                    text = str(reply)
                    if text.startswith(("WRONGPASS", "NOAUTH", "NOPERM")):
                        raise ConnectionError(f"{what}: {text}")
                    raise TrackingUnsupported(f"server refused {what}: {text[:120]}")
            # Keep any bytes buffered after the replies; pushes parsed already are covered
            # by the flush in _attach.
            self._reader = reader
            if isinstance(hello_reply, dict):
                self.client_id = hello_reply.get(b"id")
            sock.setblocking(False)
            return sock
        except BaseException:
            sock.close()
            raise

    def _attach(self, sock: socket.socket) -> None:
        self._sock = sock
        self._replies.clear()
        self._lost_event = asyncio.Event()
        # Anything cached or in flight from before this connection may have missed an
        # invalidation: start clean.
        self.cache.flush()
        self.connected = True
        self.connects += 1
        self.last_error = None
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self.drain)
        self.drain()

    def _lost(self, reason: str) -> None:
        sock, self._sock = self._sock, None
        was = self.connected
        self.connected = False
        if sock is not None:
            with contextlib.suppress(Exception):
                assert self._loop is not None
                self._loop.remove_reader(sock.fileno())
            with contextlib.suppress(Exception):
                sock.close()
        self.cache.flush()
        while self._replies:
            fut = self._replies.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        self._reader = hiredis.Reader()
        self._lost_event.set()
        if was and not self._closing:
            self.last_error = reason
            log.warning("KV cache invalidation connection lost (%s); cache flushed", reason)

    async def _probe_loop(self) -> None:
        while self.connected:
            try:
                await asyncio.wait_for(self._lost_event.wait(), self.probe_interval)
                return  # lost
            except TimeoutError:
                pass
            try:
                role = await asyncio.wait_for(self._request(_command("ROLE")), self.timeout)
            except (TimeoutError, ConnectionError, OSError) as exc:
                self._lost(f"probe failed: {type(exc).__name__}")
                return
            if isinstance(role, hiredis.ReplyError) or not role or role[0] != b"master":
                self._lost("server is no longer a master")
                return
            if self._address is not None:
                # Sentinel may have promoted another server while this one still says
                # "master" (it is reconfigured only later): follow the provider.
                try:
                    target = await asyncio.wait_for(self.provider(), self.timeout * 2)
                except Exception:
                    continue  # cannot ask right now; the data side fails over the same way
                if (target.host, int(target.port)) != self._address:
                    self._lost("the master moved")
                    return

    def _request(self, payload: bytes) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self._sock is None:
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self._replies.append(fut)
        try:
            self._sock.send(payload)  # a few bytes: never blocks in practice
        except (OSError, ssl.SSLError) as exc:
            self._lost(f"send failed: {exc}")
        return fut

    # --- the hot path ----------------------------------------------------------------

    def drain(self) -> bool:
        """Apply every invalidation already received; return whether the cache is usable."""
        sock = self._sock
        if sock is None:
            return False
        if self._data_address is not None and self._address is not None:
            current = self._data_address()
            if current is not None and (current[0], int(current[1])) != self._address:
                self._lost("the data connections use another server")
                return False
        got = False
        while True:
            try:
                data = sock.recv(262144)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except (OSError, ssl.SSLError) as exc:
                self._lost(f"read failed: {exc}")
                return False
            if not data:
                self._lost("closed by server")
                return False
            self._reader.feed(data)
            got = True
        if got:
            try:
                while (msg := self._reader.gets()) is not False:
                    self._handle(msg)
            except hiredis.ProtocolError:
                self._lost("protocol error")
                return False
        return self.connected

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, hiredis.PushNotification):
            if len(msg) >= 2 and msg[0] == b"invalidate":
                keys = msg[1]
                if keys is None:  # FLUSHDB / FLUSHALL
                    self.cache.flush()
                else:
                    for key in keys:
                        self.cache.invalidate(key.decode("utf-8", "replace"))
            return
        if self._replies:
            fut = self._replies.popleft()
            if not fut.done():
                fut.set_result(msg)

    def describe(self) -> dict[str, Any]:
        state = "connected" if self.connected else ("unsupported" if not self.supported else "down")
        return {"tracking": state, "connects": self.connects, "tracking_error": self.last_error}
