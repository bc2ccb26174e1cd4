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
  flushed on every connect, disconnect, re-subscription, missed probe or ``invalidate``
  with a null key list (FLUSHALL/FLUSHDB).
- A read is cached only if a confirmed prefix covers its key when the read starts.
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

from sandbox.kvops import MEMBER_TAG, WHOLE_SET

log = logging.getLogger("scriptgate.store.tracking")

_MISS = object()


# Defaults of the client-side cache's bounds (store URL options cache_mb, cache_ns_mb,
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
    if t is frozenset:  # a whole set (sandbox.kvops.WHOLE_SET)
        return sys.getsizeof(value) + sum(_size(v) for v in value)
    return 32


def _weight(value: Any) -> int:
    """Entries a cached value counts as against ``max_entries``: a whole set, its members."""
    return len(value) if type(value) is frozenset else 1


def _entry(entries: dict[Hashable, tuple[Any, float]], sub: Hashable) -> tuple[Any, float] | None:
    """The entry answering ``sub``: its own, or for a set member the key's whole set."""
    item = entries.get(sub)
    if item is None and type(sub) is tuple and len(sub) == 2 and sub[0] == MEMBER_TAG:
        whole = entries.get(WHOLE_SET)
        if whole is not None:
            return sub[1] in whole[0], whole[1]
    return item


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
        # Set by the Tracker: whether invalidations of a key are subscribed and confirmed.
        # A read of a key it does not cover is never cached (None: cache everything).
        self.covers: Callable[[str], bool] | None = None
        self.uncovered = 0  # reads not cached because their key's prefix was not subscribed yet

    def __len__(self) -> int:
        return self._size

    def _ns(self, key: str) -> str:
        n = len(self.root)
        end = key.find(":", n)
        return key[n:end] if key.startswith(self.root) and end > n else ""

    def lookup(self, key: str, sub: Hashable) -> Any:
        entries = self._keys.get(key)
        if entries is not None:
            item = _entry(entries, sub)
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
        if entries is None or _entry(entries, sub) is None:
            return _MISS
        return self.lookup(key, sub)

    def peek_lasting(self, key: str, sub: Hashable) -> Any:
        """A hit only for an entry without a TTL (it stays valid until invalidated);
        a miss is not counted (the caller falls back to an ordinary read)."""
        entries = self._keys.get(key)
        if entries is None:
            return _MISS
        item = _entry(entries, sub)
        if item is None or item[1]:
            return _MISS
        self.hits += 1
        return item[0]

    def whole_lasting(self, key: str) -> frozenset[str] | None:
        """The key's whole set if kept without a TTL (a worker may then keep it too); a hit
        like ``peek_lasting``'s."""
        entries = self._keys.get(key)
        item = None if entries is None else entries.get(WHOLE_SET)
        if item is None or item[1]:
            return None
        self.hits += 1
        return item[0]

    def begin(self, key: str) -> int:
        rec = self._inflight.get(key)
        if rec is None:
            self._inflight[key] = [1, 0]
        else:
            rec[0] += 1
        if self.covers is not None and not self.covers(key):
            self.uncovered += 1
            return -1  # never equals _epoch (>= 0): finish() will not cache this read
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
                self._size += _weight(value)
            else:
                self._size += _weight(value) - _weight(old[0])
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
        whole = entries.get(WHOLE_SET)
        self._size -= len(entries) if whole is None else len(entries) - 1 + _weight(whole[0])
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


# Coarsening thresholds. Redis checks every write against every BCAST prefix of every
# tracking client (a walk over its prefix table), so the list stays short.
KEYS_PER_NS = 16
MAX_PREFIXES = 64


class Subscriptions:
    """The key prefixes the tracking connection should subscribe to (``BCAST PREFIX``).

    Keys are ``<root><namespace>:<key>``. Namespaces match ``[A-Za-z0-9_-]+``, so namespace
    prefixes never overlap each other nor another namespace's keys; two key prefixes of one
    namespace may (``a:b`` and ``a:bc``), which Redis >= 6.2 refuses: that namespace is
    coarsened at once. The set only grows (coarser) until the process ends: keys that
    were cached once are likely to be cached again after a reconnect."""

    def __init__(self, root: str, keys_per_ns: int = KEYS_PER_NS, max_prefixes: int = MAX_PREFIXES) -> None:
        self.root = root
        self.keys_per_ns = max(1, keys_per_ns)
        self.max_prefixes = max(1, max_prefixes)
        self.everything = False
        self.namespaces: set[str] = set()
        self.keys: dict[str, set[str]] = {}  # namespace -> full keys subscribed one by one
        self._count = 0  # len of all key sets

    def namespace(self, key: str) -> str:
        n = len(self.root)
        end = key.find(":", n)
        return key[n:end] if key.startswith(self.root) and end > n else ""

    def mode(self) -> str:
        return "everything" if self.everything else ("namespaces" if self.namespaces else "keys")

    def prefixes(self) -> list[str]:
        if self.everything:
            return [self.root]
        return ([f"{self.root}{ns}:" for ns in sorted(self.namespaces)]
                + sorted(k for ks in self.keys.values() for k in ks))

    def add(self, key: str) -> bool:
        """Make ``key`` covered; return whether the prefix list changed."""
        if self.everything:
            return False
        ns = self.namespace(key)
        if not ns:
            return self._all()  # not a namespaced KV key (never the case for script reads)
        if ns in self.namespaces:
            return False
        ks = self.keys.setdefault(ns, set())
        if key in ks:
            return False
        if len(ks) >= self.keys_per_ns or any(k.startswith(key) or key.startswith(k) for k in ks):
            self.namespaces.add(ns)
            self._count -= len(ks)
            del self.keys[ns]
        else:
            ks.add(key)
            self._count += 1
        if self._count + len(self.namespaces) > self.max_prefixes:
            return self._all()
        return True

    def _all(self) -> bool:
        self.everything = True
        self.namespaces.clear()
        self.keys.clear()
        self._count = 0
        return True


def _command(*parts: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _track(prefixes: list[str]) -> bytes:
    args: list[str | bytes | int] = ["CLIENT", "TRACKING", "ON", "BCAST"]
    for prefix in prefixes:
        args += ["PREFIX", prefix]
    return _command(*args)


class Tracker:
    """Owns the tracking connection and feeds invalidations into a ``KVCache``."""

    def __init__(self, cache: KVCache, kv_prefix: str, provider: TargetProvider,
                 timeout: float = 0.5, probe_interval: float = 1.0,
                 data_address: Callable[[], Any] | None = None,
                 keys_per_ns: int = KEYS_PER_NS, max_prefixes: int = MAX_PREFIXES) -> None:
        self.cache = cache
        self.kv_prefix = kv_prefix
        # What should be subscribed; _sent: subscribed (or asked) on this connection;
        # _active: confirmed by Redis on this connection (only these make keys cacheable).
        self.wanted = Subscriptions(kv_prefix, keys_per_ns, max_prefixes)
        self._sent: set[str] = set()
        self._active: set[str] = set()
        self._gen = 0  # +1 per connection and per re-subscription: stale confirmations are ignored
        self._waiters: list[asyncio.Future[None]] = []
        self.resubscribes = 0
        self.invalidation_msgs = 0  # invalidate pushes received (each may name several keys)
        cache.covers = self.covers
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
        self._replies: deque[Callable[[Any], None]] = deque()  # called with each reply, in order
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
                prefixes = self.wanted.prefixes()  # taken here: the handshake runs in a thread
                sock = await asyncio.wait_for(asyncio.to_thread(self._handshake, target, prefixes),
                                              self.timeout * 4)
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
            self._attach(sock, prefixes)
            try:
                await self._probe_loop()
            finally:
                self._lost("probe loop ended")

    def _handshake(self, target: TrackingTarget, prefixes: list[str]) -> socket.socket:
        """Blocking connect + HELLO 3 + CLIENT TRACKING for ``prefixes``, run in a thread with
        timeouts. With no prefix yet, tracking is switched on and off again: that the server
        supports it is known before any cache is used."""
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
            tracking = _track(prefixes or [self.kv_prefix])
            if not prefixes:
                tracking += _command("CLIENT", "TRACKING", "OFF")
            sock.sendall(_command(*hello) + _command("CLIENT", "SETNAME", "scriptgate-kv-tracking") + tracking)
            reader = hiredis.Reader()
            replies: list[Any] = []
            want = 3 if prefixes else 4
            while len(replies) < want:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed during tracking handshake")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    if not isinstance(reply, hiredis.PushNotification):  # the flush in _attach covers them
                        replies.append(reply)
            hello_reply, _, tracking_reply = replies[:3]
            checks = [(hello_reply, "HELLO 3"), (tracking_reply, "CLIENT TRACKING")]
            if not prefixes:
                checks.append((replies[3], "CLIENT TRACKING OFF"))
            for reply, what in checks:
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

    def _attach(self, sock: socket.socket, prefixes: list[str]) -> None:
        self._sock = sock
        self._replies.clear()
        self._lost_event = asyncio.Event()
        # Anything cached or in flight from before this connection may have missed an
        # invalidation: start clean.
        self.cache.flush()
        self._gen += 1
        self._sent = set(prefixes)
        self._active = set(prefixes)  # the handshake's CLIENT TRACKING was answered OK
        self.connected = True
        self.connects += 1
        self.last_error = None
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self.drain)
        self._sync()  # keys wanted while the handshake ran
        self._wake()
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
        self._gen += 1
        self._sent = set()
        self._active = set()
        while self._replies:
            self._replies.popleft()(ConnectionError(reason))
        self._reader = hiredis.Reader()
        self._lost_event.set()
        self._wake()
        if was and not self._closing:
            self.last_error = reason
            log.warning("KV cache invalidation connection lost (%s); cache flushed", reason)

    async def _probe_loop(self) -> None:
        while self.connected:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                # (close()) that races with the event being set.
                async with asyncio.timeout(self.probe_interval):
                    await self._lost_event.wait()
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

        def settle(reply: Any) -> None:
            if not fut.done():
                if isinstance(reply, ConnectionError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

        if self._sock is None:
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self._send(payload, settle)
        return fut

    def _send(self, payload: bytes, *handlers: Callable[[Any], None]) -> None:
        """Send commands; ``handlers`` get their replies in order (a ConnectionError if lost)."""
        assert self._sock is not None
        self._replies.extend(handlers)
        try:
            self._sock.send(payload)  # a few hundred bytes at most: never blocks in practice
        except (OSError, ssl.SSLError) as exc:
            self._lost(f"send failed: {exc}")

    # --- which prefixes are tracked ----------------------------------------------------

    def covers(self, key: str) -> bool:
        """Whether invalidations of ``key`` are subscribed and confirmed on this connection."""
        active = self._active
        if not active:
            return False
        if key in active or self.kv_prefix in active:
            return True
        ns = self.wanted.namespace(key)
        return bool(ns) and f"{self.kv_prefix}{ns}:" in active

    async def cover(self, key: str, wait: float | None = None) -> bool:
        """Subscribe to ``key``'s invalidations if needed and wait (at most ``wait`` seconds,
        default half the op timeout) until Redis confirmed it; False: read it uncached."""
        if self.covers(key):
            return True
        if self.wanted.add(key):
            self._sync()
        assert self._loop is not None
        deadline = self._loop.time() + (self.timeout / 2 if wait is None else wait)
        while self.connected and not self.covers(key):
            left = deadline - self._loop.time()
            if left <= 0:
                return False
            fut: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout(left):  # not wait_for: it can swallow a cancellation (3.11)
                    await fut
            except TimeoutError:
                return False
        return self.covers(key)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _sync(self) -> None:
        """Bring this connection's subscriptions to what is wanted: new prefixes are added
        (no flush); dropping one (coarsening) needs OFF + ON again, and a flush."""
        if self._sock is None:
            return  # the next handshake subscribes to what is wanted
        wanted = self.wanted.prefixes()
        if self._sent.issubset(wanted):
            new = [p for p in wanted if p not in self._sent]
            if new:
                self._sent.update(new)
                self._send(_track(new), self._confirm(self._gen, new))
            return
        self.resubscribes += 1
        self._gen += 1
        self._active = set()  # before the flush: nothing read from now on is cached until confirmed
        self.cache.flush()
        self._sent = set(wanted)
        log.info("KV cache tracking coarsened to %d prefix(es) (%s); cache flushed", len(wanted), self.wanted.mode())
        self._send(_command("CLIENT", "TRACKING", "OFF") + _track(wanted),
                   self._refused_check("CLIENT TRACKING OFF"), self._confirm(self._gen, wanted))

    def _confirm(self, gen: int, prefixes: list[str]) -> Callable[[Any], None]:
        def on_reply(reply: Any) -> None:
            if isinstance(reply, ConnectionError) or gen != self._gen:
                return  # lost or re-subscribed since: that path decides what is active
            if isinstance(reply, hiredis.ReplyError):
                self._refused(f"CLIENT TRACKING PREFIX: {str(reply)[:120]}")
                return
            self._active.update(prefixes)
            self._wake()

        return on_reply

    def _refused_check(self, what: str) -> Callable[[Any], None]:
        def on_reply(reply: Any) -> None:
            if isinstance(reply, hiredis.ReplyError):
                self._refused(f"{what}: {str(reply)[:120]}")

        return on_reply

    def _refused(self, why: str) -> None:
        """A subscription was refused: track everything (the coarsest subscription, the one
        every Redis >= 6 takes), or, if that was refused too, reconnect (the handshake then
        finds out whether tracking works at all)."""
        log.warning("KV cache tracking: %s", why)
        if self.wanted.everything:
            self._lost(why)
        else:
            self.wanted._all()
            self._sync()

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
                self.invalidation_msgs += 1
                keys = msg[1]
                if keys is None:  # FLUSHDB / FLUSHALL
                    self.cache.flush()
                else:
                    for key in keys:
                        self.cache.invalidate(key.decode("utf-8", "replace"))
            return
        if self._replies:
            self._replies.popleft()(msg)

    def describe(self) -> dict[str, Any]:
        state = "connected" if self.connected else ("unsupported" if not self.supported else "down")
        return {"tracking": state, "connects": self.connects, "tracking_error": self.last_error,
                "tracked_prefixes": len(self.wanted.prefixes()), "tracking_mode": self.wanted.mode()}
