"""The offline environment behind ``scriptgate run`` and ``scriptgate replay``.

It is the server's own machinery minus HTTP: the same sandbox ``WorkerPool``, the same
``Dispatcher`` (deadline, budgets, failure policy, ``verdict_reply``), the same per-command
settings from an optional config file, and an embedded in-memory store
(``open_store(None)``) seeded from a KV snapshot. Nothing here touches a live server.

KV snapshot format (written by ``scriptgate kv-snapshot``, or by hand)::

    {"namespace": "default",
     "keys": [{"key": "blocklist:users", "type": "set", "value": ["u1", "u2"], "ttl": null},
              {"key": "limit:u1", "type": "string", "value": "3", "ttl": 60}]}

``type`` is one of string / set / hash / list; ``value`` is a string, a list of strings
(set, list) or an object of strings (hash); ``ttl`` is seconds left or null. Keys are
script-level names (no server prefix). Writes made by scripts during a run stay in memory
and are discarded at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sandbox.api import BUDGET, CompileIssue, script_sha
from server.catalog import Catalog, Command, catalog
from server.config import CommandSettings, Config
from server.config import load as load_config
from server.service.callbacks import Dispatcher, Outcome
from server.store.base import ActiveScript
from server.store.keys import NAMESPACE_RULE, is_namespace

if TYPE_CHECKING:
    from server.service.state import Pool, Store

KV_TYPES = ("string", "set", "hash", "list")
# The pool reports this when no worker was free before the deadline. Offline, that is an
# artefact of this machine (a worker being replaced after a failing call), never of the
# script, so such calls are retried instead of being reported as budget errors.
_NO_WORKER = "no sandbox worker was free"
_RETRIES = 3


class OfflineError(Exception):
    """An expected failure of an offline command: printed as one line."""


@dataclass
class Snapshot:
    namespace: str
    keys: list[dict[str, Any]]


def _check_entry(where: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise OfflineError(f"{where}: must be an object {{key, type, value, ttl}}")
    key, kind, value, ttl = entry.get("key"), entry.get("type"), entry.get("value"), entry.get("ttl")
    if type(key) is not str or not key:
        raise OfflineError(f"{where}: key must be a non-empty string")
    if kind not in KV_TYPES:
        raise OfflineError(f"{where} ({key!r}): type must be one of {', '.join(KV_TYPES)}")
    if kind == "string":
        ok = type(value) is str
    elif kind in ("set", "list"):
        ok = type(value) is list and all(type(v) is str for v in value)
    else:
        ok = type(value) is dict and all(type(v) is str for v in value.values())
    if not ok:
        shape = {"string": "a string", "set": "a list of strings", "list": "a list of strings"}.get(
            kind, "an object of strings"
        )
        raise OfflineError(f"{where} ({key!r}): a {kind} value must be {shape}")
    if ttl is not None and (type(ttl) is not int or ttl < 1):
        raise OfflineError(f"{where} ({key!r}): ttl must be a positive integer or null")
    return {"key": key, "type": kind, "value": value, "ttl": ttl}


def parse_snapshot(data: Any, name: str = "snapshot") -> Snapshot:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise OfflineError(f'{name}: expected {{"namespace": ..., "keys": [{{key, type, value, ttl}}, ...]}}')
    namespace = data.get("namespace", "default")
    if not is_namespace(namespace):
        raise OfflineError(f"{name}: namespace must match {NAMESPACE_RULE}")
    keys = [_check_entry(f"{name}: keys[{i}]", e) for i, e in enumerate(data["keys"])]
    return Snapshot(namespace, keys)


def load_snapshot(path: str) -> Snapshot:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise OfflineError(f"cannot read KV snapshot {path}: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OfflineError(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    return parse_snapshot(data, path)


async def seed(store: Any, snapshot: Snapshot) -> int:
    # Empty collections cannot exist in Redis; skipping them matches what the live
    # store would hold.
    count = 0
    for entry in snapshot.keys:
        if entry["type"] != "string" and not entry["value"]:
            continue
        await store.kv_write(snapshot.namespace, entry["key"], entry["type"], entry["value"], entry["ttl"], "offline")
        count += 1
    return count


class StaticTable:
    """The one script an offline run is about, shaped like ``ScriptTable`` for the
    ``Dispatcher`` (which only needs ``loaded`` and ``get``)."""

    loaded = True

    def __init__(self) -> None:
        self._scripts: dict[str, ActiveScript] = {}

    def set(self, command: str, source: str, version: int = 0) -> ActiveScript:
        script = ActiveScript(command, version, script_sha(source), source)
        self._scripts[command] = script
        return script

    def get(self, command: str) -> ActiveScript | None:
        return self._scripts.get(command)


@dataclass
class OfflineEnv:
    config: Config
    catalog: Catalog
    pool: Pool
    store: Store
    table: StaticTable
    dispatcher: Dispatcher
    snapshot_namespace: str | None = None  # where the KV snapshot was seeded, if any
    notes: list[str] = field(default_factory=list)  # things the user should know (printed once)

    def settings(self, command: str) -> CommandSettings:
        return self.dispatcher.settings[command]

    def command(self, name: str) -> Command:
        cmd = self.catalog.get(name)
        if cmd is None:
            raise OfflineError(f"unknown callbackCommand {name!r}")
        return cmd

    async def check(self, source: str) -> list[CompileIssue]:
        """The server's upload-time validation, in a sandbox worker."""
        return await self.pool.check(source)

    def load(self, command: Command, source: str) -> None:
        self.table.set(command.name, source)

    async def run(self, command: Command, payload_json: bytes) -> Outcome:
        """One callback through the server's dispatch path (the script set by ``load``)."""
        outcome = await self.dispatcher.dispatch(command, payload_json)
        for _ in range(_RETRIES):
            err = outcome.error
            if err is None or err.kind != BUDGET or _NO_WORKER not in err.message:
                break
            outcome = await self.dispatcher.dispatch(command, payload_json)
        return outcome

    async def close(self) -> None:
        try:
            await self.pool.close()
        finally:
            await self.store.close()

    async def __aenter__(self) -> OfflineEnv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def default_workers() -> int:
    # One worker per core, the host process included: more only adds context switches.
    return max(1, min(8, os.cpu_count() or 1))


def quiet_logs() -> None:
    """Offline commands report script errors themselves; the server's rate-limited
    per-error log lines and worker recycling notes would only interleave with that."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("scriptgate.dispatch").setLevel(logging.CRITICAL)
        logging.getLogger("scriptgate.sandbox").setLevel(logging.ERROR)


async def open_env(
    *,
    config_path: str | None = None,
    snapshot_path: str | None = None,
    workers: int | None = None,
    pool: Any = None,
    store: Any = None,
) -> OfflineEnv:
    """Start the offline environment. ``pool``/``store`` may be injected (tests)."""
    cat = catalog()
    config = load_config(config_path, set(cat.commands))
    snapshot = load_snapshot(snapshot_path) if snapshot_path else None
    quiet_logs()
    if store is None:
        from server.store.connect import open_store

        store = await open_store(None, prefix="offline", isolated=True)
    notes: list[str] = []
    try:
        if snapshot is not None:
            n = await seed(store, snapshot)
            notes.append(f"KV: {n} keys from {snapshot_path} in namespace {snapshot.namespace!r}")
        if pool is None:
            from sandbox.host.pool import WorkerPool

            size = workers or default_workers()
            pool = WorkerPool(size=size, memory_mb=config.defaults.budgets.memory_mb, max_queue=64 * size)
            await pool.start()
    except BaseException:
        await store.close()
        raise
    table = StaticTable()

    def kv_for(namespace: str) -> Any:
        async def call(op: str, args: list[Any]) -> Any:
            return await store.kv_call(namespace, op, args)

        return call

    dispatcher = Dispatcher(cat, config, table, pool, kv_for)  # type: ignore[arg-type]
    return OfflineEnv(config, cat, pool, store, table, dispatcher, snapshot.namespace if snapshot else None, notes)


def namespace_note(env: OfflineEnv, command: str) -> str | None:
    """A warning when the snapshot was seeded where this command's script cannot see it."""
    ns = env.snapshot_namespace
    want = env.settings(command).namespace
    if ns is not None and ns != want:
        return (
            f"note: the KV snapshot is in namespace {ns!r} but {command} uses namespace {want!r} "
            "(set it with --config); the script will not see the snapshot"
        )
    return None


def run_sync(coro: Any) -> Any:
    """Run an offline coroutine from the CLI."""
    return asyncio.run(coro)
