"""The endpoint OpenIM calls: ``POST [/{base/path}]/{callbackCommand}``.

The command is the last path segment (OpenIM builds ``url + "/" + command``); the query
string is ignored. When the path names no known command, it comes from the body's
``callbackCommand``: with a query string in OpenIM's ``url:`` (``.../callbackExample?contenttype=json``)
OpenIM posts to ``/callbackExample?contenttype=json/callbackXxxCommand``, which puts the
command into the query string. When path and body name different known commands, the
path wins (it is where OpenIM said it posts) and a warning is logged and counted.
Every answer is HTTP 200 with JSON carrying the five common reply fields, errors too
(plus an ``error`` object: ``{"code", "message"}``), because OpenIM ignores the status
code and fails the user's action on a body it cannot decode: a wrong method, an unknown
command, a body that is not JSON or too large, a client outside ``allow_cidrs``, a wrong
secret prefix. Requests Tornado refuses before this handler runs are answered the same
way where Tornado allows it (server/http/conn.py).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from server import reply
from server.http.common import StreamedBody, client_allowed
from server.logfmt import callback_fields
from server.service.callbacks import policy_reply

if TYPE_CHECKING:
    from server.app import AppState
    from server.catalog import Catalog, Command
    from server.service.callbacks import Outcome


def command_from_path(path: str, prefix: str) -> str | None:
    """The callbackCommand named by ``path``, or None when the secret prefix doesn't match."""
    if prefix:
        head = path[: len(prefix)]
        # Constant time: the prefix is a shared secret.
        if not hmac.compare_digest(head.encode(), prefix.encode()):
            return None
        path = path[len(prefix) :]
        if path and not path.startswith("/"):
            return None
    for segment in reversed(path.split("/")):
        if segment:
            return segment
    return ""


log = logging.getLogger("scriptgate.http")
_MISMATCH_LOG_EVERY = 1000  # after the first 10, one line per this many mismatches
_mismatches = 0


def command_from_body(catalog: Catalog, path_cmd: Command | None, payload: dict[str, Any]) -> tuple[Command | None, str]:
    """(the command a callback is for, where it came from: path | body | mismatch), given
    the path's command (None if the path names no known command) and the parsed body;
    (None, "") when neither names one. Both HTTP paths use this rule."""
    named = payload.get("callbackCommand")
    if path_cmd is not None:
        if type(named) is str and named and named != path_cmd.name:
            return path_cmd, "mismatch"
        return path_cmd, "path"
    cmd = catalog.get(named) if type(named) is str else None
    return (cmd, "body") if cmd is not None else (None, "")


def note_command_source(state: AppState, cmd: Command, source: str, payload: dict[str, Any]) -> None:
    """Count (and for a mismatch, log) a callback whose command was not the path's alone."""
    if source == "path":
        return
    state.metrics.command_source.labels(source).inc()
    if source == "mismatch":
        global _mismatches
        _mismatches += 1
        if _mismatches <= 10 or _mismatches % _MISMATCH_LOG_EVERY == 0:
            named = str(payload.get("callbackCommand"))[:80]
            oid = str(payload.get("operationID", ""))[:128]
            log.warning("callback path names %s but the body's callbackCommand is %r: answered as %s "
                        "(operationID=%s; %d such callbacks so far)", cmd.name, named, cmd.name,
                        oid or "-", _mismatches, extra=callback_fields(cmd.name, oid))


def unknown_command_message(path_name: str, payload: Any) -> str:
    shown = path_name if len(path_name) <= 80 else path_name[:80] + "..."
    named = payload.get("callbackCommand") if type(payload) is dict else None
    if type(named) is str and named:
        body = named if len(named) <= 80 else named[:80] + "..."
        return f"unknown callbackCommand {shown!r} (path) and {body!r} (body)"
    return f"unknown callbackCommand {shown!r}"


def replied(state: AppState, cmd: Command, payload: dict[str, Any], operation_id: str, outcome: Outcome,
            started: float) -> None:
    """Once a callback's reply is ready, just before it is written (both HTTP paths):
    metrics, then the recording."""
    elapsed = time.perf_counter() - started
    metrics = state.metrics
    metrics.observe(cmd.name, outcome.verdict, outcome.error.kind if outcome.error else None, elapsed)
    for fix in outcome.fixes:
        metrics.reply_fixes.labels(cmd.name, fix).inc()
    recorder = state.recorder
    if recorder is not None:
        recorder.submit(cmd, payload, operation_id, outcome, elapsed)
    calllogs = state.calllogs
    if calllogs is not None:
        oid = operation_id or payload.get("operationID")
        calllogs.submit(cmd.name, oid[:128] if type(oid) is str else "", outcome, elapsed)


@tornado.web.stream_request_body
class CallbackHandler(StreamedBody):
    state: AppState

    def initialize(self, state: AppState) -> None:
        self.state = state
        self.cmd: Command | None = None
        self.path_cmd: Command | None = None
        self.path_name = ""

    def limit_for_request(self) -> int:
        return self.state.config.max_body_bytes

    def callback_error(self, code: str, message: str) -> None:
        if self._finished:
            return
        base = policy_reply(self.state.dispatcher.settings[self.cmd.name]) if self.cmd else None
        self.state.metrics.bad_requests.labels(code).inc()
        self.clear()
        self.set_status(200)  # OpenIM ignores the status; the body says what went wrong
        self.set_header("Content-Type", "application/json")
        self.finish(reply.error_body(code, message, base))

    def too_large(self, limit: int) -> None:
        self.callback_error("payload_too_large", f"request body is larger than {limit} bytes")

    def json_error(self, status: int, code: str, message: str, headers: Any = None, **extra: Any) -> None:
        self.callback_error(code, message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own refusals (a method outside SUPPORTED_METHODS: TRACE, CONNECT, a made-up
        # one) and unhandled exceptions: still a five-field answer, never HTML or a traceback.
        exc = kwargs.get("exc_info")
        if exc and not isinstance(exc[1], tornado.web.HTTPError):
            log.error("unhandled error on %s %s", self.request.method, self.request.path, exc_info=exc)
        if status_code == 405:
            code, message = "method_not_allowed", "callbacks are sent with POST"
        elif status_code >= 500:
            code, message = "internal_error", "internal error (see the server log)"
        else:
            code, message = "bad_request", self._reason
        self.callback_error(code, message)

    def prepare(self) -> None:
        state = self.state
        if not client_allowed(self.request.remote_ip, state.callback_networks):
            self.callback_error("forbidden", "client address is not in allow_cidrs")
            return
        name = command_from_path(self.request.path, state.config.path_prefix)
        if name is None:
            self.callback_error("not_found", "no such endpoint")
            return
        self.path_name = name
        self.path_cmd = self.cmd = state.catalog.get(name)
        if self.cmd is None and self.request.method != "POST":
            self.callback_error("unknown_command", unknown_command_message(name, None))
            return
        if self.request.method != "POST":
            self.callback_error("method_not_allowed", "callbacks are sent with POST")
            return
        super().prepare()

    async def post(self, *_: Any) -> None:
        started = time.perf_counter()
        if self._too_large:
            self.too_large(self._limit)
            return
        raw = self.body
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if self.cmd is None:
                self.callback_error("unknown_command", unknown_command_message(self.path_name, None))
                return
            text = str(exc)
            if "UTF-8" in text or "utf-8" in text:
                self.callback_error("invalid_utf8", "request body is not valid UTF-8")
            else:
                self.callback_error("invalid_json", f"request body is not valid JSON: {text[:200]}")
            return
        if type(payload) is not dict:
            if self.cmd is None:
                self.callback_error("unknown_command", unknown_command_message(self.path_name, None))
                return
            self.callback_error("invalid_body", "request body must be a JSON object")
            return
        self.cmd, source = command_from_body(self.state.catalog, self.path_cmd, payload)
        if self.cmd is None:
            self.callback_error("unknown_command", unknown_command_message(self.path_name, payload))
            return
        note_command_source(self.state, self.cmd, source, payload)
        problem = self.cmd.check_request(payload)
        if problem:
            self.callback_error("invalid_field", problem)
            return
        operation_id = self.request.headers.get("operationID", "")
        outcome = await self.state.dispatcher.dispatch(self.cmd, raw, payload, operation_id or None)
        self.set_header("Content-Type", "application/json")
        body = reply.encode(outcome.reply)
        # Before the write: the record is queued before the client can read the reply.
        replied(self.state, self.cmd, payload, operation_id, outcome, started)
        self.finish(body)

    # Any other method on a callback path: answered in prepare(), never HTML.
    get = put = delete = patch = head = options = post  # type: ignore[assignment]
