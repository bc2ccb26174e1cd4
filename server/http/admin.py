"""The admin API's route table (who may call what), ``/healthz``, ``/metrics`` and the
OpenAPI document. The handlers live by job in server/http/admin_*.py; what they share
(authentication, scopes, errors) in server/http/admin_base.py."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from server import tokens
from server.http.admin_base import AdminHandler, HTTPFail, bool_arg
from server.http.admin_kv import KVKeyHandler, KVListHandler, KVMembersHandler
from server.http.admin_records import AuditHandler, LogsHandler, LogsStreamHandler, RecordingsHandler
from server.http.admin_scripts import (
    ActivateHandler,
    ScriptHandler,
    ScriptsHandler,
    TestHandler,
    VersionHandler,
    VersionsHandler,
)
from server.http.admin_tokens import TokenHandler, TokensHandler
from server.http.common import JSONErrorMixin
from server.memory import isolation_health

if TYPE_CHECKING:
    from server.service.state import AppState

# /healthz tells the store's state as of at most HEALTH_FRESH_S ago: a store call answered
# within it counts, otherwise a ping bounded by HEALTH_PING_S is made. Together at most
# ~100 ms between the store stopping to answer and /healthz saying so.
HEALTH_FRESH_S = 0.05
HEALTH_PING_S = 0.05


async def store_answers(store: Any) -> bool:
    """Does the store answer now? A paused Redis keeps its connections open, so the last
    call's outcome alone would say "ok" for seconds."""
    last_ok = store.health.last_ok
    if store.healthy and last_ok is not None and time.time() - last_ok < HEALTH_FRESH_S:
        return True
    try:
        async with asyncio.timeout(HEALTH_PING_S):
            return bool(await store.ping())
    except TimeoutError:
        return False


class HealthHandler(JSONErrorMixin):
    def initialize(self, state: AppState) -> None:
        self.state = state

    async def get(self) -> None:
        state = self.state
        store_ok = await store_answers(state.store)
        reasons = [] if store_ok else [f"store unavailable: {state.store.health.last_reason or 'no answer'}"]
        if not state.table.loaded:
            reasons.append("live scripts not loaded yet")
        if (lost := state.table.problem()) is not None:
            reasons.append(lost)
        if state.draining:
            reasons.append("draining: shutting down")
        status = "degraded" if reasons else "ok"
        body = {
            "status": status,
            "reasons": reasons,
            "registry": state.table.describe(),
            "store": state.store.describe(),
            "scripts_loaded": state.table.loaded,
            "live_scripts": len(state.table.snapshot()),
            "sandbox": state.pool.stats(),
            "after_acks": state.dispatcher.after.describe(),
            **isolation_health(state),
            "uptime_s": round(time.time() - state.started_at, 1),
        }
        try:
            strict = bool_arg(self.get_query_argument("strict", None), False, "strict")
        except HTTPFail as fail:
            self.json_error(fail.status, fail.code, fail.message)
            return
        self.set_status(503 if strict and status != "ok" else 200)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))


class MetricsHandler(AdminHandler):
    async def prepare(self) -> None:
        self.admin = not self.state.config.metrics_public
        await super().prepare()

    def get(self) -> None:
        self.state.metrics.store_up.set(1 if self.state.store.healthy else 0)
        self.state.metrics.refresh(self.state)
        self.set_header("Content-Type", self.state.metrics.content_type)
        self.finish(self.state.metrics.render())


OPENAPI_PATH = Path(__file__).resolve().parent.parent / "data" / "openapi.json"


@functools.cache
def openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()


class OpenAPIHandler(AdminHandler):
    # The description of the API is no secret (it ships with the code) and tools that render
    # it rarely send a token; admin_allow_cidrs still applies, as to every admin route.
    admin = False
    query = {"GET": frozenset()}

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.finish(openapi_document())


R, D, K, A = tokens.READ, tokens.DEPLOY, tokens.KV_WRITE, tokens.ADMIN


def routes(state: AppState) -> list[tuple[str, type, dict[str, Any]]]:
    """The admin route table: pattern, handler, and the scope each method needs (the one
    definition of who may do what; tests/test_admin_auth.py checks every route x scope)."""
    cmd = r"([^/]+)"
    table: list[tuple[str, type, dict[str, str] | None]] = [
        (r"/healthz", HealthHandler, None),
        (r"/metrics", MetricsHandler, {"GET": R}),
        (r"/admin/scripts/?", ScriptsHandler, {"GET": R}),
        (rf"/admin/scripts/{cmd}/versions/?", VersionsHandler, {"GET": R}),
        (rf"/admin/scripts/{cmd}/versions/([^/]+)", VersionHandler, {"GET": R}),
        (rf"/admin/scripts/{cmd}/activate", ActivateHandler, {"POST": D}),
        (rf"/admin/scripts/{cmd}/test", TestHandler, {"POST": D}),
        (rf"/admin/scripts/{cmd}", ScriptHandler, {"GET": R, "PUT": D, "DELETE": D}),
        (r"/admin/kv/?", KVListHandler, {"GET": R}),
        (r"/admin/kv/(.+)/members", KVMembersHandler, {"POST": K}),
        (r"/admin/kv/(.+)", KVKeyHandler, {"GET": R, "PUT": K, "DELETE": K}),
        (rf"/admin/recordings/{cmd}", RecordingsHandler, {"GET": R}),
        (r"/admin/audit/?", AuditHandler, {"GET": R}),
        (r"/admin/logs/stream", LogsStreamHandler, {"GET": R}),
        (r"/admin/logs/?", LogsHandler, {"GET": R}),
        (r"/admin/tokens/?", TokensHandler, {"GET": A, "POST": A}),
        (r"/admin/tokens/([^/]+)", TokenHandler, {"DELETE": A}),
        (r"/admin/openapi\.json", OpenAPIHandler, None),
    ]
    return [(p, h, {"state": state} if scopes is None else {"state": state, "scopes": scopes})
            for p, h, scopes in table]

