"""Dispatch: one callback in, one OpenIM reply out.

HTTP → ``Dispatcher.dispatch`` → sandbox worker pool → ``verdict_reply`` (validation of
what the script returned against the command's mutable fields) → reply encoder. Any
failure (script error, budget, invalid result, KV outage, overload, deadline) becomes
the command's failure-policy reply; the deadline is always met.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sandbox.api import (
    ALLOW,
    BUDGET,
    DENY,
    ERROR,
    INVALID_RESULT,
    MODIFY,
    UNAVAILABLE,
    RunResult,
    ScriptError,
    bounded,
)
from server import reply
from server.catalog import Catalog, Command
from server.config import ERRCODE_MAX, ERRCODE_MIN, CommandSettings, Config
from server.scripts_table import ScriptTable

log = logging.getLogger("scriptgate.dispatch")

NO_SCRIPT = "none"  # verdict label when no script is live for the command
# Time kept back from the command deadline for encoding and writing the reply.
REPLY_MARGIN_S = 0.02
MAX_REJECT_TEXT = 4096

KVCall = Callable[[str, list[Any]], Awaitable[Any]]


@dataclass
class Outcome:
    reply: dict[str, Any]
    verdict: str  # allow | modify | deny | error | none
    version: int | None = None
    error: ScriptError | None = None
    logs: list[str] = field(default_factory=list)
    kv_ops: int = 0
    elapsed_ms: float = 0.0


def policy_reply(settings: CommandSettings) -> dict[str, Any]:
    if settings.failure_policy == "closed":
        return reply.reject(settings.reject_errcode, settings.reject_errmsg, settings.reject_errdlt)
    return reply.continue_with()


def check_deny(fields: dict[str, Any]) -> str | None:
    code = fields.get("errCode")
    if type(code) is not int or not ERRCODE_MIN <= code <= ERRCODE_MAX:
        return f"deny() errCode must be an integer in {ERRCODE_MIN}..{ERRCODE_MAX} (OpenIM turns others into 500)"
    for name in ("errMsg", "errDlt"):
        value = fields.get(name, "")
        if type(value) is not str:
            return f"deny() {name} must be a string"
        if len(value) > MAX_REJECT_TEXT:
            return f"deny() {name} is longer than {MAX_REJECT_TEXT} characters"
    return None


def verdict_reply(command: Command, settings: CommandSettings, result: RunResult) -> tuple[dict[str, Any], str, ScriptError | None]:
    """Turn a sandbox result into (reply, verdict, error) for a *before* callback."""
    if result.verdict == ALLOW:
        return reply.continue_with(), ALLOW, None
    if result.verdict == MODIFY:
        err = command.check_reply_fields(result.fields)
        if err is None:
            return reply.continue_with(result.fields), MODIFY, None
        error = ScriptError(INVALID_RESULT, bounded(err))
    elif result.verdict == DENY:
        err = check_deny(result.fields)
        if err is None:
            f = result.fields
            return reply.reject(f["errCode"], f.get("errMsg", ""), f.get("errDlt", "")), DENY, None
        error = ScriptError(INVALID_RESULT, bounded(err))
    elif result.verdict == ERROR and result.error is not None:
        error = result.error
    else:
        error = ScriptError(INVALID_RESULT, "sandbox returned an unknown verdict")
    return policy_reply(settings), ERROR, error


class _RateLimitedLog:
    """Script errors are logged with their reason, but a failing script under load must not
    turn the log into the bottleneck: at most ``per_second`` lines per command."""

    def __init__(self, per_second: int = 5) -> None:
        self.per_second = per_second
        self._window: dict[str, tuple[int, int]] = {}

    def error(self, command: str, version: int | None, error: ScriptError) -> None:
        now = int(time.monotonic())
        second, count = self._window.get(command, (now, 0))
        if second != now:
            second, count = now, 0
        count += 1
        self._window[command] = (second, count)
        if count <= self.per_second:
            log.warning("script error in %s v%s: %s: %s", command, version, error.kind, error.message)


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        config: Config,
        table: ScriptTable,
        pool: Any,  # sandbox.pool.WorkerPool (duck-typed so tests can inject a fake)
        kv_for: Callable[[str], KVCall],
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.table = table
        self.pool = pool
        self.kv_for = kv_for
        self.settings: dict[str, CommandSettings] = {
            name: config.settings_for(name) for name in catalog.commands
        }
        self._errors = _RateLimitedLog()

    async def dispatch(self, command: Command, payload_json: bytes, payload: dict[str, Any] | None = None) -> Outcome:
        outcome = await self._dispatch(command, payload_json)
        if command.is_before and command.echo_fields:
            if payload is None:
                payload = orjson.loads(payload_json)
            command.with_echo(payload, outcome.reply)
        return outcome

    async def _dispatch(self, command: Command, payload_json: bytes) -> Outcome:
        settings = self.settings[command.name]
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + settings.deadline_ms / 1000 - REPLY_MARGIN_S
        if not self.table.loaded:
            # The store has never been reachable since start: we cannot know which
            # script is live, so the failure policy decides.
            err = ScriptError(UNAVAILABLE, "script registry not loaded yet: store unreachable")
            return self._finish(command, settings, policy_reply(settings), ERROR, None, err, None, started)
        active = self.table.get(command.name)
        if active is None:
            return Outcome(reply.continue_with(), NO_SCRIPT)
        try:
            result = await asyncio.wait_for(
                self.pool.run(
                    source=active.source,
                    sha256=active.sha256,
                    payload_json=payload_json,
                    budgets=settings.budgets,
                    kv=self.kv_for(settings.namespace),
                    deadline=deadline,
                    key=command.name,  # own queue, share of workers and penalty box
                    group=settings.namespace,
                ),
                timeout=max(0.0, deadline - loop.time()) + REPLY_MARGIN_S / 2,
            )
        except TimeoutError:
            result = RunResult.failed(BUDGET, f"deadline exceeded: no reply within {settings.deadline_ms} ms")
        except Exception as exc:  # the pool must not fail a callback; log and apply policy
            log.exception("sandbox failure on %s", command.name)
            result = RunResult.failed(UNAVAILABLE, f"sandbox failure: {type(exc).__name__}")
        if command.is_before:
            body, verdict, error = verdict_reply(command, settings, result)
        else:
            body = reply.continue_with()
            verdict, error = (ERROR, result.error) if result.verdict == ERROR else (result.verdict, None)
        return self._finish(command, settings, body, verdict, active.version, error, result, started)

    def _finish(
        self,
        command: Command,
        settings: CommandSettings,
        body: dict[str, Any],
        verdict: str,
        version: int | None,
        error: ScriptError | None,
        result: RunResult | None,
        started: float,
    ) -> Outcome:
        if error is not None:
            self._errors.error(command.name, version, error)
        elapsed = (asyncio.get_running_loop().time() - started) * 1000
        return Outcome(
            reply=body,
            verdict=verdict,
            version=version,
            error=error,
            logs=result.logs if result else [],
            kv_ops=result.kv_ops if result else 0,
            elapsed_ms=round(elapsed, 3),
        )
