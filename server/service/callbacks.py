"""Answer a callback: one callback in, one OpenIM reply out (``answer``).

HTTP (server/http/callback.py) → ``answer`` → ``Dispatcher.dispatch`` → sandbox worker pool → ``judge`` (what the script returned,
checked against what OpenIM does with the reply: docs/openim.md) → reply encoder →
``record_outcome`` (metrics, recording, per-callback log). Any failure (script error, budget,
invalid result, KV outage, overload, deadline) becomes the command's failure-policy reply
(``policy_reply``, the one statement of the failure policy); the deadline is always met. ``judge`` also keeps the
script's meaning where OpenIM would lose it: a deny with an unusable errCode is still a
deny (M2), a narrowed invitation is refused (M1), field names are matched the way Go's
decoder matches them, and an invalid result says why in the reply (M3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sandbox.api import (
    ALLOW,
    BUDGET,
    DENY,
    ERRCODE_MAX,
    ERRCODE_MIN,
    ERROR,
    INVALID_RESULT,
    MAX_REJECT_TEXT,
    MODIFY,
    UNAVAILABLE,
    RunResult,
    ScriptError,
    bounded,
)
from sandbox.host.deadline import Deadline
from server import reply
from server.catalog import Catalog, Command
from server.config import CommandSettings, Config
from server.logfmt import callback_fields
from server.scripts_table import ScriptTable
from server.service.after import EarlyAcks

if TYPE_CHECKING:
    from server.service.state import Pool

log = logging.getLogger("scriptgate.dispatch")
http_log = logging.getLogger("scriptgate.http")

NO_SCRIPT = "none"  # verdict label when no script is live for the command
# Time kept back from the command deadline for encoding and writing the reply.
REPLY_MARGIN_S = 0.02

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
    fixes: tuple[str, ...] = ()  # metric labels of Judged.fixes
    # An after-callback answered before its script ran (server/service/after.py): the
    # recording and the per-callback log say so.
    early_ack: bool = False




def policy_reply(settings: CommandSettings) -> dict[str, Any]:
    """The failure policy: what OpenIM is told when ScriptGate cannot say what the script
    means (script error, budget, deadline, unreachable store, a refused request, an internal
    error). ``open``: continue unchanged; ``closed``: reject with the configured code and texts."""
    if settings.failure_policy == "closed":
        return reply.reject(settings.reject_errcode, settings.reject_errmsg, settings.reject_errdlt)
    return reply.continue_with()


@dataclass
class Judged:
    """What a *before* callback's sandbox result turns into."""

    reply: dict[str, Any]
    verdict: str
    error: ScriptError | None = None
    # Replies ScriptGate changed so that OpenIM does what the script means (metric labels:
    # deny_errcode, deny_text, invite_narrowed), each with a sentence for the log.
    fixes: list[tuple[str, str]] = field(default_factory=list)


def deny_reply(fields: Any, settings: CommandSettings) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A deny is always a deny: values OpenIM cannot use are mapped, not turned into a continue.

    OpenIM fails the user's action with errCode only when it is a usable code (an int32
    that is not one of its own small codes); anything else becomes
    ``deny_errcode_fallback``. errMsg/errDlt that are not text become ""; longer than
    MAX_REJECT_TEXT characters, they are cut. Each change is returned as a fix."""
    if type(fields) is not dict:
        fields = {}
    fixes: list[tuple[str, str]] = []
    code = fields.get("errCode")
    if type(code) is not int or not ERRCODE_MIN <= code <= ERRCODE_MAX:
        shown = code if type(code) is int else repr(code)[:64]
        fixes.append(("deny_errcode", f"deny() errCode {shown} is outside {ERRCODE_MIN}..{ERRCODE_MAX}: "
                                      f"sent as {settings.deny_errcode_fallback} (deny_errcode_fallback)"))
        code = settings.deny_errcode_fallback
    texts = []
    for name in ("errMsg", "errDlt"):
        text = fields.get(name, "")
        if type(text) is not str:
            fixes.append(("deny_text", f"deny() {name} is not a string: sent as \"\""))
            text = ""
        elif len(text) > MAX_REJECT_TEXT:
            fixes.append(("deny_text", f"deny() {name} is longer than {MAX_REJECT_TEXT} characters: cut"))
            text = text[:MAX_REJECT_TEXT]
        texts.append(text)
    return reply.reject(code, texts[0], texts[1]), fixes


def check_deny(fields: dict[str, Any]) -> str | None:
    """Why OpenIM could not use these deny fields as they are (they are mapped, see deny_reply)."""
    fixes = deny_reply(fields, CommandSettings())[1]
    return fixes[0][1] if fixes else None


def _listed(ids: list[str], limit: int = MAX_REJECT_TEXT) -> str:
    """``u2, u3`` cut to about ``limit`` characters, saying how many were left out."""
    text = ", ".join(ids)
    if len(text) <= limit:
        return text
    shown: list[str] = []
    size = 0
    for i, uid in enumerate(ids):
        size += len(uid) + 2
        if size > limit - 24:
            return ", ".join(shown) + f", ... (+{len(ids) - i} more)"
        shown.append(uid)
    return text  # pragma: no cover - the loop returns


def invite_reply(settings: CommandSettings, request: dict[str, Any], kept: list[str]) -> Judged:
    """beforeInviteJoinGroup with ``invitedUserIDs``: OpenIM (main and v3.8) ignores the list
    in the reply, so a narrowed list becomes a rejection (or refusedMembersAccount)."""
    sent = request.get("invitedUserIDs") or []
    invited = set(sent)
    extra = [uid for uid in dict.fromkeys(kept) if uid not in invited]
    if extra:
        message = (f"invitedUserIDs may only leave users out of the invitation; not invited: {_listed(extra, 200)} "
                   "(OpenIM would not add them)")
        return failed(settings, ScriptError(INVALID_RESULT, bounded(message)))
    keep = set(kept)
    removed = [uid for uid in dict.fromkeys(sent) if uid not in keep]
    if not removed:
        return Judged(reply.continue_with({"invitedUserIDs": kept}), MODIFY)
    why = f"invitation narrowed by the script; refused: {_listed(removed, 200)}"
    if settings.invite_narrowing == "reject":
        body = reply.reject(settings.invite_narrowing_errcode, "invitation refused", "refused: " + _listed(removed))
        return Judged(body, DENY, fixes=[("invite_narrowed", why + " (sent as a rejection: invite_narrowing = reject)")])
    body = reply.continue_with({"invitedUserIDs": kept, "refusedMembersAccount": removed})
    return Judged(body, MODIFY, fixes=[("invite_narrowed", why + " (sent as refusedMembersAccount)")])


def judge(command: Command, settings: CommandSettings, result: RunResult, request: dict[str, Any] | None) -> Judged:
    """Turn a sandbox result into the reply for a *before* callback.

    ``request`` (the callback body) is needed for commands whose replies are checked
    against it (``Command.needs_request``); None is treated as an empty request."""
    if result.verdict == ALLOW:
        return Judged(reply.continue_with(), ALLOW)
    if result.verdict == MODIFY:
        fields, err = command.canonical_reply(result.fields if type(result.fields) is dict else {})
        if err is None and command.needs_request:
            req = request if request is not None else {}
            err = command.trap_problem(req, fields)
            if err is None and command.invite_narrowing and fields.get("invitedUserIDs") is not None:
                return invite_reply(settings, req, fields["invitedUserIDs"])
        if err is None:
            return Judged(reply.continue_with(fields), MODIFY)
        error = ScriptError(INVALID_RESULT, bounded(err))
    elif result.verdict == DENY:
        body, fixes = deny_reply(result.fields, settings)
        return Judged(body, DENY, fixes=fixes)
    elif result.verdict == ERROR and result.error is not None:
        error = result.error
    else:
        error = ScriptError(INVALID_RESULT, "sandbox returned an unknown verdict")
    return failed(settings, error)


def failed(settings: CommandSettings, error: ScriptError) -> Judged:
    """A *before* callback whose script's meaning is unknown (``error``): the failure policy's
    reply (``policy_reply``); for an invalid result it also says why in ``error``."""
    body = policy_reply(settings)
    if error.kind == INVALID_RESULT:
        # Never silent: OpenIM's decoder ignores the extra key; people reading replies see it.
        body["error"] = {"kind": INVALID_RESULT, "message": error.message}
    return Judged(body, ERROR, error)


def verdict_reply(
    command: Command, settings: CommandSettings, result: RunResult, request: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str, ScriptError | None]:
    """``judge`` as (reply, verdict, error)."""
    judged = judge(command, settings, result, request)
    return judged.reply, judged.verdict, judged.error


class _RateLimitedLog:
    """Script errors are logged with their reason, but a failing script under load must not
    turn the log into the bottleneck: at most ``per_second`` lines per command."""

    def __init__(self, per_second: int = 5) -> None:
        self.per_second = per_second
        self._window: dict[str, tuple[int, int]] = {}

    def allowed(self, command: str) -> bool:
        now = int(time.monotonic())
        second, count = self._window.get(command, (now, 0))
        if second != now:
            second, count = now, 0
        count += 1
        self._window[command] = (second, count)
        return count <= self.per_second

    def error(self, command: str, version: int | None, error: ScriptError, operation_id: str = "") -> None:
        if self.allowed(command):
            log.warning("script error in %s v%s operationID=%s: %s: %s", command, version, operation_id or "-",
                        error.kind, error.message, extra=callback_fields(command, operation_id, version))

    def fix(self, command: str, version: int | None, message: str, operation_id: str = "") -> None:
        if self.allowed(command):
            log.warning("reply changed in %s v%s operationID=%s: %s", command, version, operation_id or "-", message,
                        extra=callback_fields(command, operation_id, version))


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        config: Config,
        table: ScriptTable,
        pool: Pool,  # sandbox.host.pool.WorkerPool, or a test's fake
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
        self.inflight = 0
        self.after = EarlyAcks(config.after_ack_max_pending, self._errors.allowed)
        # Per command, background runs take at most half of the pool's queue for one command
        # (sandbox/host/pool.py max_queue): a full queue would refuse the script ("sandbox
        # overloaded") of a callback already acknowledged, and the other half stays for
        # callbacks answered after their script.
        max_queue = getattr(pool, "max_queue", None)
        self._after_cap = max(1, max_queue // 2) if type(max_queue) is int else None

    def acks_early(self, command: Command) -> bool | None:
        """Answer this callback now and run its script right after? Only an after-callback
        with a live script (its reply is then the plain continue whatever the script does);
        None when early acknowledgements are off or it is not such a callback, False when
        the bound is reached (counted in ``after.inline``)."""
        if not self.after.accepting or command.is_before or not self.table.loaded:
            return None
        if self.table.get(command.name) is None:
            return None
        return self.after.has_room(command.name, self._after_cap)

    async def dispatch(self, command: Command, payload_json: bytes, payload: dict[str, Any] | None = None,
                       operation_id: str | None = None) -> Outcome:
        """``operation_id``: for log lines (default: the body's operationID)."""
        request = _Request(payload_json, payload, operation_id)
        self.inflight += 1  # a graceful stop waits for these (serve.drain)
        try:
            outcome = await self._dispatch(command, request)
        finally:
            self.inflight -= 1
        if command.is_before and command.echoed:
            command.with_echo(request.data(), outcome.reply)
        return outcome

    async def _dispatch(self, command: Command, request: _Request) -> Outcome:
        payload_json = request.raw
        settings = self.settings[command.name]
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + settings.deadline_ms / 1000 - REPLY_MARGIN_S
        if not self.table.loaded:
            # The store has never been reachable since start: we cannot know which
            # script is live, so the failure policy decides.
            err = ScriptError(UNAVAILABLE, "script registry not loaded yet: store unreachable")
            return self._finish(command, settings, failed(settings, err), None, None, started, request)
        active = self.table.get(command.name)
        if active is None:
            return Outcome(reply.continue_with(), NO_SCRIPT)
        try:
            # A timeout (asyncio.timeout_at's semantics, at a third of its cost), not wait_for:
            # no extra Task per callback (wait_for wraps the call in one), and on 3.11 wait_for
            # can swallow a cancellation that races the result (see redis_store.py watch()).
            async with Deadline(loop, max(deadline, loop.time()) + REPLY_MARGIN_S / 2):
                result = await self.pool.run(
                    source=active.source,
                    sha256=active.sha256,
                    payload_json=payload_json,
                    budgets=settings.budgets,
                    kv=self.kv_for(settings.namespace),
                    deadline=deadline,
                    key=command.name,  # own queue, share of workers and penalty box
                    group=settings.namespace,
                )
        except TimeoutError:
            result = RunResult.failed(BUDGET, f"deadline exceeded: no reply within {settings.deadline_ms} ms")
        except Exception as exc:  # the pool must not fail a callback; log and apply policy
            log.exception("sandbox failure on %s operationID=%s", command.name, request.operation_id() or "-",
                          extra=callback_fields(command.name, request.operation_id(), active.version))
            result = RunResult.failed(UNAVAILABLE, f"sandbox failure: {type(exc).__name__}")
        if command.is_before:
            judged = judge(command, settings, result, request.data() if command.needs_request else None)
        elif result.verdict == ERROR:
            judged = Judged(reply.continue_with(), ERROR, result.error)
        else:
            judged = Judged(reply.continue_with(), result.verdict)
        return self._finish(command, settings, judged, active.version, result, started, request)

    def _finish(
        self,
        command: Command,
        settings: CommandSettings,
        judged: Judged,
        version: int | None,
        result: RunResult | None,
        started: float,
        request: _Request,
    ) -> Outcome:
        if judged.error is not None:
            self._errors.error(command.name, version, judged.error, request.operation_id())
        for _label, message in judged.fixes:
            self._errors.fix(command.name, version, message, request.operation_id())
        elapsed = (asyncio.get_running_loop().time() - started) * 1000
        return Outcome(
            reply=judged.reply,
            verdict=judged.verdict,
            version=version,
            error=judged.error,
            logs=result.logs if result else [],
            kv_ops=result.kv_ops if result else 0,
            elapsed_ms=round(elapsed, 3),
            fixes=tuple(label for label, _ in judged.fixes),
        )


class _Request:
    """The callback body as bytes, parsed only when something needs its values."""

    __slots__ = ("_data", "_operation_id", "raw")

    def __init__(self, raw: bytes, data: dict[str, Any] | None, operation_id: str | None) -> None:
        self.raw = raw
        self._data = data
        self._operation_id = operation_id

    def data(self) -> dict[str, Any]:
        if self._data is None:
            try:
                data = orjson.loads(self.raw)
            except orjson.JSONDecodeError:
                data = None
            self._data = data if type(data) is dict else {}
        return self._data

    def operation_id(self) -> str:
        if self._operation_id is None:
            value = self.data().get("operationID")
            self._operation_id = value if type(value) is str else ""
        return self._operation_id[:128]


class AnswerContext(Protocol):
    """What answering a callback needs of the process (server.service.state.AppState has it)."""

    dispatcher: Dispatcher
    metrics: Any  # server.metrics.Metrics
    recorder: Any  # server.recorder.Recorder | None
    calllogs: Any  # server.calllogs.CallLogs | None


def answer(ctx: AnswerContext, command: Command, raw: bytes, payload: dict[str, Any], operation_id: str,
           started: float) -> bytes | Coroutine[Any, Any, bytes]:
    """The use case "answer a callback": run the command's live script on the request (``raw``,
    already parsed as ``payload`` and checked), encode the reply, record the outcome, and
    return the reply bytes. ``operation_id``: the request's header (or ""); ``started``:
    ``time.perf_counter()`` when the request was complete.

    The reply is returned at once (``bytes``) when it does not wait for a script (an
    early-acknowledged after-callback, below), else as a coroutine to await: the caller
    needs no task for an answer it can write right away.

    The outcome is recorded before the reply is returned, so it is queued before the client
    can read the reply; a failure to record is logged and never costs the reply.

    An after-callback with a live script is answered at once with the plain continue (the
    bytes it gets after its script, as OpenIM ignores the reply: server/service/after.py)
    while at most ``after_ack_max_pending`` such runs are pending; its script then runs in the
    background through this same path (``_run_after``) and its outcome is recorded when known.
    Its outcome is recorded then."""
    dispatcher = ctx.dispatcher
    early = dispatcher.acks_early(command)
    if early:
        oid = operation_id or _operation_id(payload)
        dispatcher.after.start(command.name, oid, _run_after(ctx, command, raw, payload, operation_id, started))
        ctx.metrics.after_acked(command.name)
        return reply.encode(reply.continue_with())
    if early is False:
        ctx.metrics.after_inline(command.name)
    return _answer_after_script(ctx, command, raw, payload, operation_id, started)


async def _answer_after_script(ctx: AnswerContext, command: Command, raw: bytes, payload: dict[str, Any],
                               operation_id: str, started: float) -> bytes:
    outcome = await ctx.dispatcher.dispatch(command, raw, payload, operation_id or None)
    body = reply.encode(outcome.reply)
    _record_safely(ctx, command, payload, operation_id, outcome, started)
    return body


async def _run_after(ctx: AnswerContext, command: Command, raw: bytes, payload: dict[str, Any], operation_id: str,
                     started: float) -> None:
    """The script of an early-acknowledged after-callback: the same dispatch (pool, fair
    queue, budgets, deadline) and the same recording, with the outcome it really produced."""
    outcome = await ctx.dispatcher.dispatch(command, raw, payload, operation_id or None)
    outcome.early_ack = True
    _record_safely(ctx, command, payload, operation_id, outcome, started)


def _operation_id(payload: dict[str, Any]) -> str:
    return str(payload.get("operationID") or "")[:128]


def _record_safely(ctx: AnswerContext, command: Command, payload: dict[str, Any], operation_id: str,
                   outcome: Outcome, started: float) -> None:
    try:
        record_outcome(ctx, command, payload, operation_id, outcome, started)
    except Exception:
        oid = operation_id or _operation_id(payload)
        http_log.error("after the reply to %s operationID=%s", command.name, oid or "-", exc_info=True,
                       extra=callback_fields(command.name, oid))


def record_outcome(ctx: AnswerContext, command: Command, payload: dict[str, Any], operation_id: str,
                   outcome: Outcome, started: float) -> None:
    """Once a callback's outcome is known: its metrics, its recording and its per-callback log
    line. The elapsed time runs from ``started`` (request complete) to now: for an early
    acknowledgement, to the end of its background script run, not to the acknowledgement."""
    elapsed = time.perf_counter() - started
    metrics = ctx.metrics
    metrics.observe(command.name, outcome.verdict, outcome.error.kind if outcome.error else None, elapsed)
    for fix in outcome.fixes:
        metrics.reply_fixes.labels(command.name, fix).inc()
    recorder = ctx.recorder
    if recorder is not None:
        recorder.submit(command, payload, operation_id, outcome, elapsed)
    calllogs = ctx.calllogs
    if calllogs is not None:
        oid = operation_id or payload.get("operationID")
        calllogs.submit(command.name, oid[:128] if type(oid) is str else "", outcome, elapsed)
