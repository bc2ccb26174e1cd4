"""The endpoint OpenIM calls: ``POST [/{base/path}]/{callbackCommand}``.

The command is the last path segment (OpenIM builds ``url + "/" + command``); the query
string is ignored. Every answer is HTTP JSON carrying the five common reply fields, even
errors, because OpenIM ignores the status code and fails the user's action on a body it
cannot decode.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from server import reply
from server.dispatch import policy_reply
from server.http_common import StreamedBody, client_allowed

if TYPE_CHECKING:
    from server.app import AppState
    from server.catalog import Command
    from server.dispatch import Outcome


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


def replied(state: AppState, cmd: Command, payload: dict[str, Any], operation_id: str, outcome: Outcome,
            started: float) -> None:
    """After a callback's reply is written (both HTTP paths): metrics, then the recording."""
    elapsed = time.perf_counter() - started
    state.metrics.observe(cmd.name, outcome.verdict, outcome.error.kind if outcome.error else None, elapsed)
    recorder = state.recorder
    if recorder is not None:
        recorder.submit(cmd, payload, operation_id, outcome, elapsed)


@tornado.web.stream_request_body
class CallbackHandler(StreamedBody):
    state: AppState

    def initialize(self, state: AppState) -> None:
        self.state = state
        self.cmd: Command | None = None

    def limit_for_request(self) -> int:
        return self.state.config.max_body_bytes

    def callback_error(self, status: int, code: str, message: str) -> None:
        if self._finished:
            return
        base = policy_reply(self.state.dispatcher.settings[self.cmd.name]) if self.cmd else None
        self.state.metrics.bad_requests.labels(code).inc()
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(reply.error_body(code, message, base))

    def too_large(self, limit: int) -> None:
        self.callback_error(413, "payload_too_large", f"request body is larger than {limit} bytes")

    def json_error(self, status: int, code: str, message: str, headers: Any = None, **extra: Any) -> None:
        self.callback_error(status, code, message)

    def prepare(self) -> None:
        state = self.state
        if not client_allowed(self.request.remote_ip, state.callback_networks):
            self.callback_error(403, "forbidden", "client address is not in allow_cidrs")
            return
        name = command_from_path(self.request.path, state.config.path_prefix)
        if name is None:
            self.callback_error(404, "not_found", "no such endpoint")
            return
        self.cmd = state.catalog.get(name)
        if self.cmd is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            self.callback_error(404, "unknown_command", f"unknown callbackCommand {shown!r}")
            return
        if self.request.method != "POST":
            self.callback_error(405, "method_not_allowed", "callbacks are sent with POST")
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
            text = str(exc)
            if "UTF-8" in text or "utf-8" in text:
                self.callback_error(400, "invalid_utf8", "request body is not valid UTF-8")
            else:
                self.callback_error(400, "invalid_json", f"request body is not valid JSON: {text[:200]}")
            return
        if type(payload) is not dict:
            self.callback_error(400, "invalid_body", "request body must be a JSON object")
            return
        assert self.cmd is not None
        problem = self.cmd.check_request(payload)
        if problem:
            self.callback_error(400, "invalid_field", problem)
            return
        outcome = await self.state.dispatcher.dispatch(self.cmd, raw, payload)
        self.set_header("Content-Type", "application/json")
        self.finish(reply.encode(outcome.reply))
        replied(self.state, self.cmd, payload, self.request.headers.get("operationID", ""), outcome, started)

    # Any other method on a callback path: answered in prepare() (405), never HTML.
    get = put = delete = patch = head = options = post  # type: ignore[assignment]
