"""Assembly of one HTTP process: store, sandbox pool, live-script table, dispatcher,
Tornado application, and their start/stop order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.web

from server import lint
from server.catalog import Catalog, catalog
from server.config import Config, penalty_box_settings
from server.http.admin import routes as admin_routes
from server.http.common import NotFoundHandler
from server.metrics import Metrics
from server.scripts_table import ScriptTable
from server.service.callbacks import Dispatcher
from server.service.tester import Tester

log = logging.getLogger("scriptgate.app")


@dataclass
class AppState:
    config: Config
    catalog: Catalog
    store: Any
    pool: Any
    token: str
    metrics: Metrics
    table: ScriptTable
    dispatcher: Dispatcher
    tester: Tester
    recorder: Any = None
    calllogs: Any = None  # server.calllogs.CallLogs, None when [logs] enabled = false
    _live: Any = None
    callback_networks: list[Any] = field(default_factory=list)
    admin_networks: list[Any] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    siblings: Any = None  # server/sync.py: this instance's HTTP processes (None: not served)
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

    def live_logs(self) -> Any:
        """This process's live-log hub (made by the first tail)."""
        if self._live is None:
            from server.calllogs import LiveHub

            self._live = LiveHub(self.store)
        return self._live

    def lint(self, command: str, source: str) -> list[dict[str, Any]]:
        """Warnings for an upload (for the configured OpenIM line)."""
        cmd = self.catalog.get(command)
        return [w.to_json() for w in lint.warnings(cmd, source, self.config.openim)] if cmd else []

    def lint_errors(self, command: str, source: str) -> list[lint.Finding]:
        """Findings that refuse an upload (server/lint.py)."""
        cmd = self.catalog.get(command)
        return lint.errors(cmd, source, self.config.openim) if cmd else []


class NamespaceKV:
    """The store's KV entry point bound to one namespace, as the sandbox pool calls it.

    With the store's client-side cache on, it also lets workers keep answers (the
    ``scope``/``ready``/``peek`` protocol in sandbox/host/pool.py); the scope names this store
    object and the namespace, so answers never cross stores or namespaces."""

    __slots__ = ("_keeps", "_ns", "_store", "scope")

    def __init__(self, store: Any, namespace: str, store_tag: str) -> None:
        self._store = store
        self._ns = namespace
        self._keeps = getattr(store, "kv_keeps", False) is True
        self.scope = f"{store_tag}:{namespace}"

    async def __call__(self, op: str, args: list[Any]) -> Any:
        return await self._store.kv_call(self._ns, op, args)

    def ready(self) -> bool:
        return self._keeps and self._store.kv_cache_ready()

    def peek(self, op: str, args: list[Any]) -> tuple[Any, str] | None:
        return self._store.kv_peek(self._ns, op, args)


def kv_caller(store: Any) -> Any:
    """Bind the store's KV entry point to one namespace, once per namespace."""
    cache: dict[str, NamespaceKV] = {}
    store_tag = secrets.token_hex(6)

    def for_namespace(namespace: str) -> NamespaceKV:
        fn = cache.get(namespace)
        if fn is None:
            fn = cache[namespace] = NamespaceKV(store, namespace, store_tag)
        return fn

    return for_namespace


async def build_state(config: Config, token: str, *, store: Any = None, pool: Any = None,
                      siblings: Any = None) -> AppState:
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
    if getattr(store, "kv_keeps", False) is True and hasattr(pool, "invalidate"):
        store.kv_listen(pool.invalidate)  # workers keep KV answers only while told of changes
    metrics = Metrics()
    table = ScriptTable(store, metrics, siblings)
    dispatcher = Dispatcher(cat, config, table, pool, kv_caller(store))

    async def open_scratch() -> Any:
        return await open_store(None, prefix="scratch", isolated=True)

    state = AppState(
        config=config,
        catalog=cat,
        store=store,
        pool=pool,
        token=token,
        metrics=metrics,
        table=table,
        dispatcher=dispatcher,
        tester=Tester(dispatcher, store, open_scratch),
        callback_networks=config.networks(admin=False),
        admin_networks=config.networks(admin=True),
        siblings=siblings,
    )
    state.recorder = Recorder.create(state)
    state.calllogs = CallLogs.create(state)
    return state


access_log = logging.getLogger("scriptgate.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log at DEBUG only: a line per callback would cost more than the callback."""
    status = handler.get_status()
    if status >= 500:
        access_log.error("%d %s %.2fms", status, handler.request.path, 1000 * handler.request.request_time())
    elif access_log.isEnabledFor(logging.DEBUG):
        access_log.debug("%d %s %s %.2fms", status, handler.request.method, handler.request.path,
                         1000 * handler.request.request_time())


ADMIN_NOT_FOUND = r"/admin(/.*)?"


def app_paths(state: AppState) -> list[str]:
    """The paths the application answers (every other path is a callback: server/http/callback.py)."""
    return [pattern for pattern, *_ in admin_routes(state)] + [ADMIN_NOT_FOUND]


def make_app(state: AppState) -> tornado.web.Application:
    """The admin API, /healthz and /metrics (callbacks never reach it: server/http/callback.py)."""
    handlers: list[Any] = list(admin_routes(state))
    handlers.append((ADMIN_NOT_FOUND, NotFoundHandler))
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        compress_response=False,
        serve_traceback=False,
        xheaders=state.config.trust_proxy,
        log_function=log_request,
    )


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
