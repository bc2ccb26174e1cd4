"""One HTTP process's state: the store, the sandbox pool, the live-script table and the
dispatcher, with the start/stop order of its background tasks.

``Store`` and ``Pool`` say which methods the service and HTTP layers call on the store
(server/store/redis_store.py) and on the worker pool (sandbox/host/pool.py): tests inject
fakes with the same methods, and a new call on either shows up here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sandbox.api import Budgets, CompileIssue, RunResult
from server.catalog import Catalog, catalog
from server.config import Config, penalty_box_settings
from server.metrics import Metrics
from server.scripts_table import ScriptTable
from server.service.callbacks import Dispatcher
from server.store.base import ActiveScript, AuditEntry, ScriptMeta, VersionInfo
from server.store.health import Health

if TYPE_CHECKING:
    from server.calllogs import CallLogs, LiveHub
    from server.recorder import Recorder
    from server.sync import Siblings

log = logging.getLogger("scriptgate.app")

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
KVCall = Callable[[str, list[JSONValue]], Awaitable[JSONValue]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Store(Protocol):
    """What the service and HTTP layers call on the store."""

    health: Health
    display: str
    last_generation: int  # the newest script-registry generation this process has seen

    @property
    def healthy(self) -> bool: ...
    @property
    def kv_keeps(self) -> bool: ...
    async def ping(self) -> bool: ...
    def describe(self) -> dict[str, JSONValue]: ...
    async def close(self) -> None: ...

    # scripts
    async def put_version(self, command: str, source: str, sha256: str, activate: bool,
                          actor: str) -> tuple[VersionInfo, int | None]: ...
    async def activate(self, command: str, version: int, actor: str) -> tuple[int | None, int]: ...
    async def deactivate(self, command: str, actor: str) -> int | None: ...
    async def get_meta(self, command: str) -> ScriptMeta | None: ...
    async def list_scripts(self) -> list[ScriptMeta]: ...
    async def get_version(self, command: str, n: int) -> VersionInfo | None: ...
    async def list_versions(self, command: str) -> list[VersionInfo]: ...
    async def active_table(self) -> dict[str, ActiveScript]: ...

    # KV: the scripts' entry point, then the admin API's
    async def kv_call(self, namespace: str, op: str, args: list[JSONValue]) -> JSONValue: ...
    def kv_cache_ready(self) -> bool: ...
    def kv_peek(self, namespace: str, op: str,
                args: list[JSONValue]) -> tuple[JSONValue, str, frozenset[str] | None] | None: ...
    def kv_listen(self, listener: Callable[[str | None], None]) -> None: ...
    async def kv_scan(self, namespace: str, prefix: str = "", limit: int = 100,
                      cursor: str | None = "0") -> tuple[list[dict[str, JSONValue]], str]: ...
    async def kv_read(self, namespace: str, key: str) -> dict[str, JSONValue] | None: ...
    async def kv_write(self, namespace: str, key: str, type: str, value: JSONValue, ttl: int | None,
                       actor: str) -> None: ...
    async def kv_delete(self, namespace: str, key: str, actor: str) -> bool: ...
    async def kv_members(self, namespace: str, key: str, add: list[str], remove: list[str],
                         actor: str) -> dict[str, int]: ...

    # recordings, audit, tokens
    async def recordings_start(self, command: str, limit: int, since: float | None, page: int = 1000) -> str: ...
    async def recordings_page(self, command: str, start: str,
                              count: int) -> tuple[list[dict[str, JSONValue]], str | None]: ...
    async def audit(self, limit: int = 100, before_id: str | None = None) -> list[AuditEntry]: ...
    async def tokens_all(self) -> dict[str, str]: ...
    async def token_create(self, token_id: str, name: str, record: bytes, actor: str,
                           detail: Mapping[str, JSONValue]) -> None: ...
    async def token_delete(self, token_id: str, name: str, actor: str) -> bool: ...


class Pool(Protocol):
    """What the service and HTTP layers call on the sandbox worker pool."""

    async def check(self, source: str, timeout: float = 2.0) -> list[CompileIssue]: ...
    async def run(self, *, source: str, sha256: str, payload_json: bytes, budgets: Budgets, kv: KVCall,
                  deadline: float, key: str = ..., group: str | None = None) -> RunResult: ...
    def stats(self) -> dict[str, int]: ...
    async def close(self) -> None: ...


# A throwaway embedded store for one dry run (its writes never reach the real store).
OpenScratch = Callable[[], Awaitable[Store]]


@dataclass
class AppState:
    config: Config
    catalog: Catalog
    store: Store
    pool: Pool
    token: str
    metrics: Metrics
    table: ScriptTable
    dispatcher: Dispatcher
    open_scratch: OpenScratch
    recorder: Recorder | None = None
    calllogs: CallLogs | None = None  # None when [logs] enabled = false
    _live: LiveHub | None = None
    callback_networks: list[Network] = field(default_factory=list)
    admin_networks: list[Network] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    siblings: Siblings | None = None  # server/sync.py: this instance's HTTP processes (None: not served)
    draining: bool = False  # SIGTERM/SIGINT came: no new connections, in-flight ones finish

    async def refresh_scripts(self) -> bool:
        """After an admin write through this process: serve the change here at once, and
        wait (up to ``sync_timeout_s``) until every HTTP process of this instance serves it.
        False: some process did not confirm in time (the reply says so)."""
        try:
            await self.table.refresh()
        except Exception:  # the watcher will catch up; the write itself succeeded
            log.warning("could not refresh live scripts after an admin write", exc_info=True)
            return False
        if self.siblings is None:
            return True
        target = self.store.last_generation
        if await self.siblings.wait_generation(target, self.config.sync_timeout_s):
            return True
        log.warning("admin write (generation %d) not confirmed by HTTP process(es) %s within %gs",
                    target, self.siblings.lagging(target), self.config.sync_timeout_s)
        return False

    async def recordings_settled(self) -> bool:
        """Before reading recordings: every record queued so far (by any HTTP process of
        this instance) is in the store, or ``sync_timeout_s`` passed (False)."""
        if self.siblings is None:
            if self.recorder is not None:
                with contextlib.suppress(Exception):
                    await self.recorder.flush()
            return True
        return await self.siblings.wait_recordings(self.config.sync_timeout_s)

    def live_logs(self) -> LiveHub:
        """This process's live-log hub (made by the first tail)."""
        if self._live is None:
            from server.calllogs import LiveHub

            self._live = LiveHub(self.store)
        return self._live


class NamespaceKV:
    """The store's KV entry point bound to one namespace, as the sandbox pool calls it.

    With the store's client-side cache on, it also lets workers keep answers (the
    ``scope``/``ready``/``peek`` protocol in sandbox/host/kvrelay.py); the scope names this store
    object and the namespace, so answers never cross stores or namespaces."""

    __slots__ = ("_keeps", "_ns", "_store", "scope")

    def __init__(self, store: Store, namespace: str, store_tag: str) -> None:
        self._store = store
        self._ns = namespace
        self._keeps = getattr(store, "kv_keeps", False) is True
        self.scope = f"{store_tag}:{namespace}"

    async def __call__(self, op: str, args: list[JSONValue]) -> JSONValue:
        return await self._store.kv_call(self._ns, op, args)

    def ready(self) -> bool:
        return self._keeps and self._store.kv_cache_ready()

    def peek(self, op: str, args: list[JSONValue]) -> tuple[JSONValue, str, frozenset[str] | None] | None:
        return self._store.kv_peek(self._ns, op, args)


def kv_caller(store: Store) -> Callable[[str], NamespaceKV]:
    """Bind the store's KV entry point to one namespace, once per namespace."""
    cache: dict[str, NamespaceKV] = {}
    store_tag = secrets.token_hex(6)

    def for_namespace(namespace: str) -> NamespaceKV:
        fn = cache.get(namespace)
        if fn is None:
            fn = cache[namespace] = NamespaceKV(store, namespace, store_tag)
        return fn

    return for_namespace


async def open_scratch() -> Store:
    """An in-process store for one dry run: nothing it holds outlives the run."""
    from server.store.connect import open_store

    return await open_store(None, prefix="scratch", isolated=True)


async def build_state(config: Config, token: str, *, store: Store | None = None, pool: Pool | None = None,
                      siblings: Siblings | None = None) -> AppState:
    from sandbox.host.pool import WorkerPool
    from server.calllogs import CallLogs
    from server.recorder import Recorder
    from server.store.connect import open_store

    cat = catalog()
    if store is None:
        store = await open_store(config.redis, prefix=config.prefix)
    if pool is None:
        pool = WorkerPool(size=config.sandbox_workers, memory_mb=config.defaults.budgets.memory_mb,
                          spin_us=config.sandbox_spin_us, box=penalty_box_settings(config))
        await pool.start()
    invalidate = getattr(pool, "invalidate", None)
    if getattr(store, "kv_keeps", False) is True and invalidate is not None:
        store.kv_listen(invalidate)  # workers keep KV answers only while told of changes
    metrics = Metrics()
    table = ScriptTable(store, metrics, siblings)
    dispatcher = Dispatcher(cat, config, table, pool, kv_caller(store))
    state = AppState(
        config=config,
        catalog=cat,
        store=store,
        pool=pool,
        token=token,
        metrics=metrics,
        table=table,
        dispatcher=dispatcher,
        open_scratch=open_scratch,
        callback_networks=config.networks(admin=False),
        admin_networks=config.networks(admin=True),
        siblings=siblings,
    )
    state.recorder = Recorder.create(state)
    state.calllogs = CallLogs.create(state)
    return state


async def start_background(state: AppState) -> None:
    """Load the live scripts (if the store answers) and keep them fresh."""
    with contextlib.suppress(Exception):
        await state.table.refresh()
    state.tasks.append(asyncio.create_task(state.table.watch(), name="scripts-watch"))
    if state.recorder is not None:
        state.tasks.append(asyncio.create_task(state.recorder.run(), name="recorder"))
    if state.calllogs is not None:
        state.tasks.append(asyncio.create_task(state.calllogs.run(), name="calllogs"))
    from server.memory import MemoryWatch
    state.tasks.append(asyncio.create_task(MemoryWatch(state).run(), name="memory-watch"))


async def stop(state: AppState) -> None:
    for task in state.tasks:
        # Cancel until done: 3.11's wait_for can swallow one cancellation.
        for _ in range(50):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
    if state.recorder is not None:
        with contextlib.suppress(Exception):
            await state.recorder.flush()
    if state.calllogs is not None:
        with contextlib.suppress(Exception):
            await state.calllogs.flush()
    if state._live is not None:
        with contextlib.suppress(Exception):
            await state._live.close()
    with contextlib.suppress(Exception):
        await state.pool.close()
    with contextlib.suppress(Exception):
        await state.store.close()
