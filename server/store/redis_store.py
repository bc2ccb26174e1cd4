"""The production store: everything the server keeps, in Redis.

One class for every backend (embedded fakeredis, standalone, Sentinel, Cluster); the
differences (how to connect, where a transaction runs, whether the client-side cache is
available) are decided in ``connect.py`` and ``txn.py``. The key layout is documented in
``keys.py``.

Guarantees:
- Admin writes are one MULTI/EXEC (WATCH on the command's meta hash for the
  read-modify-write): a version's body, the meta hash, the live pointer, the generation
  and the audit entry are stored together or not at all. A connection error or timeout
  raises ``StoreUnavailable``; if it happened while EXEC was in flight, the change is
  either fully applied or absent, never partial.
- Every public call fails within its deadline (socket timeouts + an overall
  ``asyncio.timeout``) when Redis is down, paused or slow; the client reconnects by
  itself on the next call.
- ``watch`` notices a change made through any instance within ``poll_interval`` (0.5 s)
  even if pub/sub messages are lost, typically within milliseconds via pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import orjson
from redis import exceptions as rex

from server.store import audit
from server.store.base import (
    ActiveScript,
    AuditEntry,
    ChangeListener,
    RegistrySnapshot,
    ScriptMeta,
    StoreError,
    StoreUnavailable,
    VersionInfo,
)
from server.store.errors import describe, is_unavailable
from server.store.health import Health
from server.store.keys import Keys, check_command
from server.store.kv import KVEngine
from server.store.kv_admin import KVAdmin
from server.store.tracking import CACHE_BYTES, CACHE_ENTRIES, CACHE_NS_BYTES, KVCache, Tracker
from server.store.txn import Transactor

log = logging.getLogger("scriptgate.store")

P = ParamSpec("P")
R = TypeVar("R")


def guarded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Bound the call by the admin deadline and turn outages into StoreUnavailable."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self: Store = args[0]  # type: ignore[assignment]
        try:
            async with asyncio.timeout(self.admin_timeout):
                result = await fn(*args, **kwargs)
        except (StoreError, StoreUnavailable):
            raise
        except Exception as exc:
            if is_unavailable(exc):
                self.health.down(exc)
                raise StoreUnavailable(f"redis unavailable: {describe(exc)}") from None
            if isinstance(exc, rex.ResponseError):
                raise StoreError("store_error", f"redis refused the operation: {describe(exc)}", 500) from None
            raise
        self.health.ok()
        return result

    return wrapper


def _records(rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    for _, data in rows:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError):
            out.append(orjson.loads(data["d"]))
    return out


def _stream_id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _f(value: str | None, default: float = 0.0) -> float:
    return float(value) if value else default


class Store:
    def __init__(self, client: Any, *, prefix: str = "scriptgate", mode: str = "embedded",
                 display: str = "embedded", cluster: bool = False, op_timeout: float = 0.5,
                 admin_timeout: float | None = None, tracker_provider: Any = None,
                 cache_size: int = CACHE_ENTRIES, cache_mb: float = CACHE_BYTES / 2**20,
                 cache_ns_mb: float = CACHE_NS_BYTES / 2**20, key_bytes: int = 512, value_bytes: int = 65_536,
                 data_address: Callable[[], Any] | None = None,
                 monitor: Callable[[], Awaitable[None]] | None = None, on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.mode = mode
        self.display = display
        self.cluster = cluster
        self.op_timeout = op_timeout
        self.admin_timeout = admin_timeout or max(2.0, 4 * op_timeout)
        self.health = Health()
        self.txn = Transactor(client, cluster)
        self.cache: KVCache | None = None
        self.tracker: Tracker | None = None
        if tracker_provider is not None:
            self.cache = KVCache(cache_size, int(cache_mb * 2**20), int(cache_ns_mb * 2**20), root=self.keys.kv_root)
            self.tracker = Tracker(self.cache, self.keys.kv_root, tracker_provider, timeout=op_timeout,
                                   data_address=data_address)
        self.kv = KVEngine(client, self.keys, self.health, cache=self.cache, tracker=self.tracker,
                           deadline=max(op_timeout * 2, 0.2), key_bytes=key_bytes, value_bytes=value_bytes)
        self.kv_admin = KVAdmin(client, self.keys, self.txn, self.cache, cluster, self.add_audit)
        self._on_close = on_close
        self._monitor = monitor
        self._monitor_task: asyncio.Task[None] | None = None
        self._rec_known: set[str] = set()
        self._log_known: set[str] = set()
        self._log_trimmed: dict[tuple[str, int], float] = {}  # (stream, max age) -> its last age trim
        self._closed = False
        # The highest generation an admin write through this object created: what the
        # writer waits for its sibling processes to serve (server/sync.py).
        self.last_generation = 0

    async def start(self) -> None:
        """Start background connections (cache invalidation). Never fails if Redis is down."""
        if self.tracker is not None:
            self.tracker.start()
        if self._monitor is not None:
            self._monitor_task = asyncio.create_task(self._run_monitor(), name="store-monitor")
        with contextlib.suppress(Exception):
            await self.ping()

    async def _run_monitor(self, interval: float = 1.0) -> None:
        assert self._monitor is not None
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(self.admin_timeout):
                    await self._monitor()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("store monitor: %s", describe(exc))

    # --- health --------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.op_timeout * 2):
                await self.client.ping()
        except Exception as exc:
            if not is_unavailable(exc) and not isinstance(exc, rex.RedisError):
                raise
            self.health.down(exc)
            return False
        self.health.ok()
        return True

    def describe(self) -> dict[str, Any]:
        cache: dict[str, Any] = {"enabled": False}
        if self.cache is not None and self.tracker is not None:
            cache = {"enabled": True, **self.tracker.describe(), **self.cache.stats()}
        elif self.cluster:
            cache["reason"] = "not available on Redis Cluster (tracking is per node)"
        elif self.mode == "embedded":
            cache["reason"] = "embedded store (in-process, no round trips to save)"
        else:
            cache["reason"] = "disabled by configuration"
        where: dict[str, Any] = {"mode": self.mode, "url": self.display}
        if self.mode == "embedded":  # fakeredis: nothing survives the process (issue 16)
            where = {"mode": "embedded", "url": "embedded", "persistent": False, "description": self.display}
        return {**where, "prefix": self.keys.prefix, **self.health.to_json(),
                "op_timeout": self.op_timeout, "cache": cache, "kv_round_trips": self.kv.round_trips}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._monitor_task is not None:
            # Cancel until done: 3.11's wait_for can swallow one cancellation.
            while not self._monitor_task.done():
                self._monitor_task.cancel()
                await asyncio.wait({self._monitor_task}, timeout=0.1)
        if self.tracker is not None:
            await self.tracker.close()
        await self.txn.close()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self._on_close is not None:
            with contextlib.suppress(Exception):
                await self._on_close()

    # --- scripts -------------------------------------------------------------------------

    @guarded
    async def generation(self) -> int:
        return int(await self.client.get(self.keys.gen) or 0)

    async def _announce(self, generation: int) -> None:
        self.last_generation = max(self.last_generation, generation)
        # Best effort: watchers also poll the generation, so a lost message only delays.
        with contextlib.suppress(Exception):
            await self.client.publish(self.keys.changes, str(generation))

    @guarded
    async def put_version(self, command: str, source: str, sha256: str, activate: bool,
                          actor: str) -> tuple[VersionInfo, int | None]:
        check_command(command)
        if type(source) is not str:
            raise StoreError("invalid_source", "source must be a string", 400)
        k = self.keys
        meta_key = k.meta(command)
        now = time.time()
        size = len(source.encode("utf-8", "surrogatepass"))

        async def body(pipe: Any) -> tuple[int, int | None, bool]:
            latest = await pipe.hget(meta_key, "latest")
            prev_raw = await pipe.hget(k.active, command)
            n = int(latest or 0) + 1
            prev = int(prev_raw) if prev_raw else None
            # Versions are immutable and the live pointer is watched (meta_key is touched by
            # every change), so the live sha read here cannot go stale before EXEC.
            if prev is not None and await pipe.hmget(k.version(command, prev), ["sha256", "source"]) == [sha256, source]:
                pipe.multi()
                pipe.xadd(k.audit, audit.fields(actor, "upload", command, prev, prev,
                                                {"version": prev, "sha256": sha256, "unchanged": True}),
                          maxlen=audit.AUDIT_MAXLEN, approximate=True)
                return prev, prev, True
            pipe.multi()
            pipe.incr(k.gen)
            pipe.hset(k.version(command, n), mapping={
                "source": source, "sha256": sha256, "size": size, "created_at": repr(now), "author": actor,
            })
            pipe.hset(meta_key, mapping={"latest": n, "updated_at": repr(now)})
            pipe.hsetnx(meta_key, "created_at", repr(now))
            pipe.sadd(k.commands, command)
            if activate:
                pipe.hset(k.active, command, n)
            pipe.xadd(k.audit, audit.fields(actor, "upload", command, prev, n if activate else prev,
                                            {"version": n, "sha256": sha256, "activated": activate}),
                      maxlen=audit.AUDIT_MAXLEN, approximate=True)
            return n, prev, False

        (n, prev, unchanged), results = await self.txn.run(meta_key, [meta_key], body)
        assert results is not None
        if unchanged:
            return VersionInfo(command, n, sha256, size, now, actor, source, unchanged=True), prev
        await self._announce(int(results[0]))
        return VersionInfo(command, n, sha256, size, now, actor, source), prev

    @guarded
    async def activate(self, command: str, version: int, actor: str) -> tuple[int | None, int]:
        check_command(command)
        k = self.keys
        meta_key = k.meta(command)
        if type(version) is not int:
            raise StoreError("invalid_version", "version must be an integer", 400)

        async def body(pipe: Any) -> int | None:
            latest = await pipe.hget(meta_key, "latest")
            if latest is None:
                raise StoreError("no_such_script", f"no script was ever uploaded for {command}", 404)
            if not 1 <= version <= int(latest):
                raise StoreError("no_such_version", f"{command} has no version {version}", 404)
            prev_raw = await pipe.hget(k.active, command)
            prev = int(prev_raw) if prev_raw else None
            action = "rollback" if prev is not None and version < prev else "activate"
            pipe.multi()
            pipe.incr(k.gen)
            pipe.hset(k.active, command, version)
            pipe.hset(meta_key, "updated_at", repr(time.time()))
            pipe.xadd(k.audit, audit.fields(actor, action, command, prev, version),
                      maxlen=audit.AUDIT_MAXLEN, approximate=True)
            return prev

        prev, results = await self.txn.run(meta_key, [meta_key], body)
        assert results is not None
        await self._announce(int(results[0]))
        return prev, version

    @guarded
    async def deactivate(self, command: str, actor: str) -> int | None:
        check_command(command)
        k = self.keys
        meta_key = k.meta(command)

        async def body(pipe: Any) -> int:
            prev_raw = await pipe.hget(k.active, command)
            if not prev_raw:
                raise StoreError("no_live_script", f"no live script for {command}", 404)
            prev = int(prev_raw)
            pipe.multi()
            pipe.incr(k.gen)
            pipe.hdel(k.active, command)
            pipe.hset(meta_key, "updated_at", repr(time.time()))
            pipe.xadd(k.audit, audit.fields(actor, "delete", command, prev, None),
                      maxlen=audit.AUDIT_MAXLEN, approximate=True)
            return prev

        prev, results = await self.txn.run(meta_key, [meta_key], body)
        assert results is not None
        await self._announce(int(results[0]))
        return prev

    def _meta(self, command: str, data: dict[str, str], active: str | None) -> ScriptMeta:
        latest = int(data.get("latest") or 0)
        return ScriptMeta(command, int(active) if active else None, latest, list(range(1, latest + 1)),
                          _f(data.get("updated_at")))

    async def _registry(self) -> Any:
        # Reads of registry keys go where its transactions go (one slot on a cluster).
        return await self.txn.client_for(self.keys.gen)

    @guarded
    async def get_meta(self, command: str) -> ScriptMeta | None:
        check_command(command)
        client = await self._registry()
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.meta(command))
            pipe.hget(self.keys.active, command)
            data, active = await pipe.execute()
        return self._meta(command, data, active) if data else None

    @guarded
    async def list_scripts(self) -> list[ScriptMeta]:
        client = await self._registry()
        commands = sorted(await client.smembers(self.keys.commands))
        if not commands:
            return []
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.active)
            for command in commands:
                pipe.hgetall(self.keys.meta(command))
            active, *metas = await pipe.execute()
        return [self._meta(c, m, active.get(c)) for c, m in zip(commands, metas, strict=True) if m]

    @staticmethod
    def _version(command: str, n: int, data: dict[str, str], with_source: bool) -> VersionInfo:
        return VersionInfo(command, n, data.get("sha256", ""), int(data.get("size") or 0),
                           _f(data.get("created_at")), data.get("author", ""),
                           data.get("source") if with_source else None)

    @guarded
    async def get_version(self, command: str, n: int) -> VersionInfo | None:
        check_command(command)
        if type(n) is not int or n < 1:
            return None
        client = await self._registry()
        data = await client.hgetall(self.keys.version(command, n))
        return self._version(command, n, data, True) if data else None

    @guarded
    async def list_versions(self, command: str) -> list[VersionInfo]:
        check_command(command)
        client = await self._registry()
        latest = int(await client.hget(self.keys.meta(command), "latest") or 0)
        if not latest:
            return []
        fields = ("sha256", "size", "created_at", "author")
        async with client.pipeline(transaction=False) as pipe:
            for n in range(1, latest + 1):
                pipe.hmget(self.keys.version(command, n), fields)
            rows = await pipe.execute()
        return [self._version(command, n, dict(zip(fields, row, strict=True)), False)
                for n, row in enumerate(rows, start=1) if row[0] is not None]

    @guarded
    async def active_table(self) -> dict[str, ActiveScript]:
        client = await self._registry()
        active = await client.hgetall(self.keys.active)
        if not active:
            return {}
        items = sorted((c, int(v)) for c, v in active.items())
        async with client.pipeline(transaction=False) as pipe:
            for command, n in items:
                pipe.hmget(self.keys.version(command, n), ("sha256", "source"))
            rows = await pipe.execute()
        return {c: ActiveScript(c, n, row[0], row[1]) for (c, n), row in zip(items, rows, strict=True)
                if row[1] is not None}

    @guarded
    async def registry_snapshot(self) -> RegistrySnapshot:
        """The generation (None: the key is missing), the commands ever uploaded, and the
        live table, read together; ``missing``: live pointers whose version body is gone."""
        client = await self._registry()
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.gen)
            pipe.smembers(self.keys.commands)
            pipe.hgetall(self.keys.active)
            pipe.hgetall(self.keys.restored)
            gen, commands, active, restored = await pipe.execute()
        items = sorted((c, int(v)) for c, v in active.items())
        table: dict[str, ActiveScript] = {}
        missing: set[str] = set()
        if items:
            async with client.pipeline(transaction=False) as pipe:
                for command, n in items:
                    pipe.hmget(self.keys.version(command, n), ("sha256", "source"))
                rows = await pipe.execute()
            for (command, n), row in zip(items, rows, strict=True):
                if row[1] is None:
                    missing.add(command)
                else:
                    table[command] = ActiveScript(command, n, row[0], row[1])
        return RegistrySnapshot(None if gen is None else int(gen), set(commands), table, missing,
                                _f(restored.get("at")) or None,
                                [c for c in restored.get("commands", "").split(",") if c])

    @guarded
    async def restore_registry(self, known: dict[str, ActiveScript], known_generation: int) -> list[str]:
        """Write back the scripts the registry lost (see docs/storage-and-faults.md).

        Only what is absent is written: a command the registry does not know at all (its
        version, meta, live pointer), or a live pointer whose version body is gone while it
        names the version we know. Nothing present is overwritten, so a deploy made after
        the loss wins. The generation becomes higher than any this process has seen, so
        every process notices the change and none mistakes it for a loss again. One
        transaction, WATCHing the generation and the command set: of several processes
        restoring at once, one writes and the others find nothing left to do."""
        k = self.keys
        now = time.time()

        async def body(pipe: Any) -> tuple[list[str], int]:
            gen_raw = await pipe.get(k.gen)
            commands = set(await pipe.smembers(k.commands))
            active = await pipe.hgetall(k.active)
            restore: list[ActiveScript] = []
            for command, script in sorted(known.items()):
                if command not in commands:
                    restore.append(script)
                elif active.get(command) == str(script.version) and not await pipe.exists(
                        k.version(command, script.version)):
                    restore.append(script)
            gen = int(gen_raw or 0)
            if not restore and gen >= known_generation:
                return [], gen
            new_gen = max(gen, known_generation) + 1
            pipe.multi()
            pipe.set(k.gen, new_gen)
            # Every process and instance reports the loss, not only the one that wrote back.
            pipe.hset(k.restored, mapping={"at": repr(now), "commands": ",".join(s.command for s in restore)})
            for s in restore:
                size = len(s.source.encode("utf-8", "surrogatepass"))
                pipe.hset(k.version(s.command, s.version), mapping={
                    "source": s.source, "sha256": s.sha256, "size": size, "created_at": repr(now),
                    "author": "registry-restore"})
                pipe.hsetnx(k.meta(s.command), "latest", s.version)
                pipe.hsetnx(k.meta(s.command), "created_at", repr(now))
                pipe.hset(k.meta(s.command), "updated_at", repr(now))
                pipe.sadd(k.commands, s.command)
                pipe.hset(k.active, s.command, s.version)
                pipe.xadd(k.audit, audit.fields("registry-restore", "restore", s.command, None, s.version,
                                                {"version": s.version, "sha256": s.sha256}),
                          maxlen=audit.AUDIT_MAXLEN, approximate=True)
            return [s.command for s in restore], new_gen

        (restored, new_gen), results = await self.txn.run(k.gen, [k.gen, k.commands], body)
        if results is not None:
            await self._announce(new_gen)
        return restored

    # --- change propagation ----------------------------------------------------------------

    async def watch(self, listener: ChangeListener, poll_interval: float = 0.5) -> None:
        """Run forever: call ``listener()`` whenever the generation changed.

        Woken by a pub/sub message on ``P:{s}:changes`` (milliseconds) and, as a fallback
        for lost messages or a broken subscription, by polling ``generation()`` every
        ``poll_interval`` seconds. The first successful poll also calls the listener (the
        table may have been loaded before Redis was reachable). Outages are retried
        forever; a listener that raises is called again on the next round.
        """
        changed = asyncio.Event()
        subscriber = asyncio.create_task(self._subscribe(changed), name="store-subscribe")
        last: int | None = None
        me = asyncio.current_task()
        try:
            while True:
                if me is not None and me.cancelling():
                    # A cancellation was requested but swallowed below us (3.11's wait_for and
                    # redis-py can each return normally when it races a reply): end as asked,
                    # or whoever awaits this task after cancelling it waits forever.
                    raise asyncio.CancelledError
                try:
                    gen: int | None = await self.generation()
                except StoreUnavailable:
                    gen = None
                if gen is not None and gen != last:
                    try:
                        await listener()
                        last = gen
                    except Exception:
                        log.warning("change listener failed; retrying", exc_info=True)
                # Not wait_for: Python 3.11's wait_for returns the result instead of raising when
                # a cancellation arrives just as ``changed`` is set (a change message at shutdown),
                # and this loop would then run on forever for a caller that awaits its cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_interval):
                        await changed.wait()
                changed.clear()
        finally:
            while not subscriber.done():
                subscriber.cancel()
                await asyncio.wait({subscriber}, timeout=0.1)

    async def _subscribe(self, changed: asyncio.Event) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                await asyncio.wait_for(pubsub.subscribe(self.keys.changes), self.admin_timeout)
                changed.set()  # messages may have been missed while unsubscribed
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("change subscription lost: %s", describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), 0.5)

    # --- audit ---------------------------------------------------------------------------------

    @guarded
    async def audit(self, limit: int = 100, before_id: str | None = None) -> list[AuditEntry]:
        top = "(" + audit.check_id(before_id) if before_id else "+"
        client = await self._registry()
        rows = await client.xrevrange(self.keys.audit, max=top, min="-", count=max(1, min(int(limit), 10_000)))
        return [audit.parse(entry_id, data) for entry_id, data in rows]

    @guarded
    async def add_audit(self, actor: str, action: str, target: str, before: int | None = None,
                        after: int | None = None, detail: dict[str, Any] | None = None) -> str:
        client = await self._registry()
        return str(await client.xadd(self.keys.audit, audit.fields(actor, action, target, before, after, detail),
                                     maxlen=audit.AUDIT_MAXLEN, approximate=True))

    # --- KV ------------------------------------------------------------------------------------

    async def kv_call(self, namespace: str, op: str, args: list[Any]) -> Any:
        """One script KV operation (see sandbox/kvops.py); KVRefused / KVUnavailable on failure."""
        return await self.kv.call(namespace, op, args)

    # Answers sandbox workers may keep (sandbox/worker/readcache.py); only with the client-side cache.

    @property
    def kv_keeps(self) -> bool:
        return self.cache is not None

    def kv_cache_ready(self) -> bool:
        """Apply pending invalidations; True when cached answers may be handed out now."""
        return self.kv.cache_usable()

    def kv_peek(self, namespace: str, op: str, args: list[Any]) -> tuple[Any, str, frozenset[str] | None] | None:
        return self.kv.peek_lasting(namespace, op, args)

    def kv_listen(self, listener: Any) -> None:
        """``listener(key | None)`` on every invalidation / flush of the cache."""
        if self.cache is not None:
            self.cache.listeners.append(listener)

    @guarded
    async def kv_scan(self, namespace: str, prefix: str = "", limit: int = 100,
                      cursor: str | None = "0") -> tuple[list[dict[str, Any]], str]:
        return await self.kv_admin.scan(namespace, prefix, limit, cursor)

    @guarded
    async def kv_read(self, namespace: str, key: str) -> dict[str, Any] | None:
        return await self.kv_admin.read(namespace, key)

    @guarded
    async def kv_write(self, namespace: str, key: str, type: str, value: Any, ttl: int | None, actor: str) -> None:
        await self.kv_admin.write(namespace, key, type, value, ttl, actor)

    @guarded
    async def kv_delete(self, namespace: str, key: str, actor: str) -> bool:
        return await self.kv_admin.delete(namespace, key, actor)

    @guarded
    async def kv_members(self, namespace: str, key: str, add: list[Any], remove: list[Any],
                         actor: str) -> dict[str, int]:
        return await self.kv_admin.members(namespace, key, add, remove, actor)

    # --- recordings ------------------------------------------------------------------------------

    @guarded
    async def record(self, command: str, entry: dict[str, Any], maxlen: int = 10_000,
                     max_age_s: int | None = None) -> str:
        """Append one recorded callback to the command's stream, trimmed by length and age."""
        check_command(command)
        key = self.keys.recordings(command)
        now_ms = int(time.time() * 1000)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"d": orjson.dumps(entry)}, maxlen=max(1, int(maxlen)), approximate=True)
            if max_age_s:
                pipe.xtrim(key, minid=f"{max(0, now_ms - int(max_age_s) * 1000)}", approximate=True)
                # An idle stream disappears once everything in it is too old.
                pipe.expire(key, int(max_age_s))
            results = await pipe.execute()
        if command not in self._rec_known:
            client = await self._registry()
            await client.sadd(self.keys.rec_commands, command)
            self._rec_known.add(command)
        return str(results[0])

    @guarded
    async def recordings(self, command: str, limit: int = 1000, since: float | None = None) -> list[dict[str, Any]]:
        """Recorded callbacks, oldest first: the last ``limit``, or the first ``limit`` from ``since``."""
        check_command(command)
        key = self.keys.recordings(command)
        count = max(1, int(limit))
        if since is None:
            rows = list(reversed(await self.client.xrevrange(key, count=count)))
        else:
            start = max(0, math.floor(float(since) * 1000))
            rows = await self.client.xrange(key, min=f"{start}-0", max="+", count=count)
        return _records(rows)

    # Paged reads of the same: what ``recordings`` returns, a page at a time, so a big export
    # holds one page in memory and lets the event loop serve callbacks between pages.

    @guarded
    async def recordings_start(self, command: str, limit: int, since: float | None, page: int = 1000) -> str:
        """Where ``recordings(command, limit, since)`` starts, for ``recordings_page``."""
        check_command(command)
        if since is not None:
            return f"{max(0, math.floor(float(since) * 1000))}-0"
        key = self.keys.recordings(command)
        remaining = max(1, int(limit))
        if await self.client.xlen(key) <= remaining:
            return "-"
        # The limit-th newest entry: walk back a page at a time, keeping only the ids.
        start, top = "-", "+"
        while remaining > 0:
            rows = await self.client.xrevrange(key, max=top, min="-", count=min(page, remaining))
            if not rows:
                break
            remaining -= len(rows)
            start = _stream_id(rows[-1][0])
            top = "(" + start
        return start

    @guarded
    async def recordings_page(self, command: str, start: str, count: int) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``count`` records from ``start`` (an id from ``recordings_start`` or a
        previous page), and where the next page starts (None: this was the last one)."""
        check_command(command)
        count = max(1, int(count))
        rows = await self.client.xrange(self.keys.recordings(command), min=start, max="+", count=count)
        after = "(" + _stream_id(rows[-1][0]) if len(rows) == count else None
        return _records(rows), after

    @guarded
    async def recording_commands(self) -> list[str]:
        client = await self._registry()
        return sorted(await client.smembers(self.keys.rec_commands))

    # --- per-callback logs (server/calllogs.py) ---------------------------------------------------

    @guarded
    async def log_write(self, records: Sequence[tuple[str, bytes, int]], max_age_s: int) -> None:
        """Append per-callback log records ``(command, JSON, maxlen)`` to their commands'
        streams and publish them for live tails in every process and instance, in one
        round trip: the XADDs (each trimmed by length), one PUBLISH of the batch (records
        separated by newlines, which JSON text never contains), and at most once a second
        per stream the trim by age and the expiry. (A pipeline and a publish per record
        cost ~30% of the HTTP process's CPU under a flood of cheap callbacks.)"""
        if not records:
            return
        now = time.monotonic()
        keys: dict[str, str] = {}
        stored = len(records)
        async with self.client.pipeline(transaction=False) as pipe:
            for command, data, maxlen in records:
                check_command(command)
                key = keys.setdefault(command, self.keys.logs(command))
                pipe.xadd(key, {"d": data}, maxlen=max(1, int(maxlen)), approximate=True)
            minid = f"{max(0, int(time.time() * 1000) - int(max_age_s) * 1000)}"
            for key in keys.values():
                if now - self._log_trimmed.get((key, max_age_s), -1.0) >= 1.0:
                    self._log_trimmed[(key, max_age_s)] = now
                    pipe.xtrim(key, minid=minid, approximate=True)
                    pipe.expire(key, int(max_age_s))  # an idle stream disappears once all of it is too old
                    stored += 2
            batch = b"\n".join(data for _, data, _ in records)
            if not self.cluster:  # a cluster pipeline routes by key; a channel has none
                pipe.publish(self.keys.logs_live, batch)
            results = await pipe.execute(raise_on_error=False)
        for result in results[:stored]:
            if isinstance(result, Exception):
                raise result
        # Best effort: the records are stored; a lost live message only misses a tail.
        if self.cluster:
            with contextlib.suppress(Exception):
                await self.client.publish(self.keys.logs_live, batch)
        for command in keys.keys() - self._log_known:
            client = await self._registry()
            await client.sadd(self.keys.log_commands, command)
            self._log_known.add(command)

    @guarded
    async def log_commands(self) -> list[str]:
        client = await self._registry()
        return sorted(await client.smembers(self.keys.log_commands))

    @guarded
    async def logs_before(self, command: str, top: str, bottom_ms: int, count: int) -> list[tuple[str, bytes]]:
        """Up to ``count`` log records of ``command``, newest first, with ids below ``top``
        (``+`` or ``(<id>``) and not older than ``bottom_ms``: (id, JSON)."""
        check_command(command)
        rows = await self.client.xrevrange(self.keys.logs(command), max=top, min=f"{max(0, bottom_ms)}-0",
                                           count=max(1, int(count)))
        out = []
        for entry_id, fields in rows:
            data = fields.get("d") if isinstance(fields, dict) else None
            if data is None:
                data = fields.get(b"d") if isinstance(fields, dict) else None
            if data is not None:
                out.append((_stream_id(entry_id), data.encode() if isinstance(data, str) else data))
        return out

    def logs_subscription(self) -> Any:
        """A pub/sub object subscribed (by the caller) to ``keys.logs_live``."""
        return self.client.pubsub()

    # --- tokens (server/tokens.py) ---------------------------------------------------------------

    @guarded
    async def tokens_all(self) -> dict[str, str]:
        """token id -> its stored JSON."""
        client = await self._registry()
        return await client.hgetall(self.keys.tokens)

    @guarded
    async def token_create(self, token_id: str, name: str, record: bytes, actor: str,
                           detail: dict[str, Any]) -> None:
        k = self.keys

        async def body(pipe: Any) -> None:
            if await pipe.hexists(k.token_names, name):
                raise StoreError("token_exists", f"a token named {name!r} exists already", 409)
            pipe.multi()
            pipe.hset(k.token_names, name, token_id)
            pipe.hset(k.tokens, token_id, record)
            pipe.xadd(k.audit, audit.fields(actor, "token_create", name, detail=detail),
                      maxlen=audit.AUDIT_MAXLEN, approximate=True)

        await self.txn.run(k.gen, [k.token_names], body)

    @guarded
    async def token_delete(self, token_id: str, name: str, actor: str) -> bool:
        k = self.keys

        async def body(pipe: Any) -> bool:
            if not await pipe.hexists(k.tokens, token_id):
                return False
            pipe.multi()
            pipe.hdel(k.tokens, token_id)
            pipe.hdel(k.token_names, name)
            pipe.xadd(k.audit, audit.fields(actor, "token_revoke", name, detail={"id": token_id}),
                      maxlen=audit.AUDIT_MAXLEN, approximate=True)
            return True

        existed, _ = await self.txn.run(k.gen, [k.tokens, k.token_names], body)
        return existed
