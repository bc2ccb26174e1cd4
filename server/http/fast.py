"""A lean path for well-formed callbacks, in front of the Tornado application.

Tornado's ``RequestHandler``/``Application`` machinery costs more CPU per callback than
everything else in the HTTP process. ``FastCallbacks`` is the ``HTTPServer``'s delegate:
it answers the happy path of a callback (``POST`` over HTTP/1.1 to a known command, from an
allowed client, with a ``Content-Length`` within ``max_body_bytes``, a JSON object body
that passes the command's request checks) itself, and hands everything else to the
application unchanged:

* a callback whose path names no known command (OpenIM's ``url`` with a query string)
  is answered here when its body's ``callbackCommand`` names one (``command_from_body``,
  the same rule as the application's);
* a request that is not eligible by its start line and headers goes to
  ``app.start_request`` at once, untouched (admin API, 403/404/405/413, chunked bodies, ...);
* a body that does not decode or check is *replayed* into a fresh application delegate
  (same start line, headers and body), so every error reply, metric and log line comes
  from the one implementation in ``server.http.callback``;
* the reply is written with the headers ``RequestHandler`` sends for it, in its order
  (``Server``, ``Content-Type``, ``Date``, ``Content-Length``): byte for byte the same
  response (tests/test_http_fast.py compares them);
* an exception in dispatch is answered like ``CallbackHandler.write_error`` answers it
  (200, the five fields of the failure policy and ``error``), never a traceback.

The connection layer (``HTTP1Connection``) is Tornado's on both paths: request parsing,
``Expect: 100-continue``, keep-alive, pipelining and body timeouts behave the same.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import orjson
import tornado
import tornado.web
from tornado import httputil
from tornado.routing import PathMatches

from server import reply
from server.app import access_log
from server.catalog import Command
from server.http import conn as http_conn
from server.http.callback import CallbackHandler, command_from_body, command_from_path, note_command_source, replied
from server.http.common import client_allowed
from server.http.common import log as http_log
from server.logfmt import callback_fields
from server.service.callbacks import policy_reply

if TYPE_CHECKING:
    from server.app import AppState

SERVER = f"TornadoServer/{tornado.version}"
# RequestHandler writes its start line with an empty version; HTTP1Connection writes HTTP/1.1.
OK = httputil.ResponseStartLine("", 200, httputil.responses[200])
INTERNAL_MESSAGE = "internal error (see the server log)"
DIGITS = re.compile(r"[0-9]+")
PATH_CACHE_LIMIT = 4096
# eligible(): the path is a callback path that names no known command; the body decides.
FROM_BODY = object()


class _Path:
    """What ``PathMatches.match`` reads of a request."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class _DateCache:
    """``Date`` as ``RequestHandler.clear`` formats it, computed once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.text = httputil.format_timestamp(now)
            self.second = second
        return self.text


class FastCallbacks(httputil.HTTPServerConnectionDelegate):
    """The ``HTTPServer`` delegate: the fast path for eligible callbacks, else ``app``."""

    def __init__(self, app: tornado.web.Application, state: AppState, enabled: bool = True) -> None:
        self.app = app
        self.state = state
        self.max_body = state.config.max_body_bytes
        self.prefix = state.config.path_prefix
        self.catalog = state.catalog
        self.dispatcher = state.dispatcher
        self.dates = _DateCache()
        self.tasks: set[asyncio.Task[None]] = set()
        # path -> command, for paths seen to be eligible (misses are recomputed each time:
        # command_from_path compares the secret prefix in constant time).
        self._paths: dict[str, Command] = {}
        self._rules = list(app.wildcard_router.rules)
        settings = app.settings
        self.enabled = (
            enabled
            and not settings.get("xsrf_cookies")
            and not settings.get("cross_origin_protection")
            and not app.transforms
            and not app.default_router.rules[:-1]  # no host-specific handlers before the wildcard
            and all(isinstance(rule.matcher, PathMatches) for rule in self._rules)
        )

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        if not self.enabled:
            return self.app.start_request(server_conn, request_conn)
        return _Request(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def command_for(self, path: str) -> Command | object | None:
        """The command a callback path names, if the application routes it to CallbackHandler
        (FROM_BODY when it names no known command)."""
        cmd = self._paths.get(path)
        if cmd is not None:
            return cmd
        target = None
        probe = _Path(path)
        for rule in self._rules:
            if rule.matcher.match(probe) is not None:
                target = rule
                break
        if target is None or target.target is not CallbackHandler or target.target_kwargs.get("state") is not self.state:
            return None
        name = command_from_path(path, self.prefix)
        if name is None:
            return None
        cmd = self.catalog.get(name)
        if cmd is None:
            return FROM_BODY
        if len(self._paths) < PATH_CACHE_LIMIT:
            self._paths[path] = cmd
        return cmd

    def eligible(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 request_conn: Any) -> Command | object | None:
        if start_line.method != "POST" or start_line.version != "HTTP/1.1":
            return None
        if "Transfer-Encoding" in headers:
            return None
        length = headers.get("Content-Length")
        if length is None or DIGITS.fullmatch(length) is None or int(length) > self.max_body:
            return None
        networks = self.state.callback_networks
        if networks and not client_allowed(getattr(request_conn.context, "remote_ip", None), networks):
            return None
        return self.command_for(start_line.path.partition("?")[0])

    def rejection(self, start_line: httputil.RequestStartLine | None, code: str, message: str) -> bytes:
        """The answer to a request Tornado refused (server/http/conn.py): an admin path gets
        400 with ``{"error", "message"}``; anything else is treated as a callback: 200 with
        the five fields (the command's failure-policy answer when the path names one)."""
        path = start_line.path.partition("?")[0] if start_line is not None else ""
        if path.startswith("/admin") or path in ("/healthz", "/metrics"):
            return http_conn.response(400, "Bad Request", orjson.dumps({"error": code, "message": message}))
        cmd = self.command_for(path) if path else None
        base = policy_reply(self.dispatcher.settings[cmd.name]) if isinstance(cmd, Command) else None
        self.state.metrics.bad_requests.labels(code).inc()
        return http_conn.response(200, "OK", reply.error_body(code, message, base))

    def headers(self, length: int) -> httputil.HTTPHeaders:
        headers = httputil.HTTPHeaders()
        headers["Server"] = SERVER
        headers["Content-Type"] = "application/json"
        headers["Date"] = self.dates.now()
        headers["Content-Length"] = str(length)
        return headers


class _Request(httputil.HTTPMessageDelegate):
    """One request on a connection: answered here, or passed on to the application."""

    __slots__ = (
        "app_delegate",
        "chunks",
        "closed",
        "cmd",
        "conn",
        "outer",
        "req_headers",
        "server_conn",
        "start_line",
        "t0",
    )

    def __init__(self, outer: FastCallbacks, server_conn: object, conn: Any) -> None:
        self.outer = outer
        self.server_conn = server_conn
        self.conn = conn
        self.app_delegate: httputil.HTTPMessageDelegate | None = None
        self.cmd: Command | object | None = None
        self.chunks: list[bytes] = []
        self.closed = False

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        cmd = self.outer.eligible(start_line, headers, self.conn)
        if cmd is None:
            self.app_delegate = delegate = self.outer.app.start_request(self.server_conn, self.conn)
            return delegate.headers_received(start_line, headers)
        self.cmd = cmd
        self.start_line = start_line
        self.req_headers = headers
        self.t0 = time.time()
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.app_delegate is not None:
            return self.app_delegate.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def on_connection_close(self) -> None:
        # Called instead of finish(): the client went away (or the request was malformed).
        if self.app_delegate is not None:
            self.app_delegate.on_connection_close()
            return
        self.closed = True
        self.chunks = []

    def finish(self) -> None:
        if self.app_delegate is not None:
            self.app_delegate.finish()
            return
        started = time.perf_counter()
        chunks = self.chunks
        self.chunks = []
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            payload = orjson.loads(raw)
            ok = type(payload) is dict
            if ok:
                path_cmd = None if self.cmd is FROM_BODY else self.cmd
                cmd, source = command_from_body(self.outer.catalog, path_cmd, payload)  # type: ignore[arg-type]
                ok = cmd is not None and not cmd.check_request(payload)
        except Exception:
            ok = False
        if not ok:
            self._replay(raw)
            return
        note_command_source(self.outer.state, cmd, source, payload)
        self.conn.set_close_callback(self._on_close)
        tasks = self.outer.tasks
        task = asyncio.ensure_future(self._respond(cmd, raw, payload, started))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _on_close(self) -> None:
        self.closed = True

    # -- the slow path, for a body it must answer (invalid JSON, field, ...) --------------

    def _replay(self, raw: bytes) -> None:
        """Give the whole request to a fresh application delegate, as Tornado would have.

        Called from finish(), so the connection's context (the client address with
        ``xheaders``) is still the request's when the application reads it."""
        delegate = self.app_delegate = self.outer.app.start_request(self.server_conn, self.conn)
        ready = delegate.headers_received(self.start_line, self.req_headers)
        if ready is None:
            self._replay_body(delegate, raw)
        else:
            asyncio.ensure_future(ready).add_done_callback(lambda _: self._replay_body(delegate, raw))

    @staticmethod
    def _replay_body(delegate: httputil.HTTPMessageDelegate, raw: bytes) -> None:
        # The streamed handler's data_received is synchronous (StreamedBody).
        if raw:
            delegate.data_received(raw)
        try:
            delegate.finish()
        except asyncio.InvalidStateError:  # the client left meanwhile; the handler was told
            pass

    # -- the fast path ---------------------------------------------------------------------

    async def _respond(self, cmd: Command, raw: bytes, payload: dict[str, Any], started: float) -> None:
        outer = self.outer
        try:
            operation_id = self.req_headers.get("operationID", "")
            outcome = await outer.dispatcher.dispatch(cmd, raw, payload, operation_id or None)
            body = reply.encode(outcome.reply)
        except asyncio.CancelledError:
            self._internal_error(cmd, None)
            raise
        except Exception as exc:
            self._internal_error(cmd, exc)
            return
        try:  # before the write: the record is queued before the client can read the reply
            replied(outer.state, cmd, payload, operation_id, outcome, started)
        except Exception:
            oid = operation_id or str(payload.get("operationID") or "")[:128]
            http_log.error("after the reply to %s operationID=%s", self.start_line.path, oid or "-", exc_info=True,
                           extra=callback_fields(cmd.name, oid))
        self._write(OK, body)

    def _internal_error(self, cmd: Command, exc: BaseException | None) -> None:
        if exc is not None:
            http_log.error("unhandled error on %s %s", self.start_line.method, self.start_line.path.partition("?")[0],
                           exc_info=exc)
        # As CallbackHandler.write_error: the five fields (the failure policy's answer), HTTP 200.
        self.outer.state.metrics.bad_requests.labels("internal_error").inc()
        base = policy_reply(self.outer.dispatcher.settings[cmd.name])
        self._write(OK, reply.error_body("internal_error", INTERNAL_MESSAGE, base))

    def _write(self, start_line: httputil.ResponseStartLine, body: bytes) -> None:
        conn = self.conn
        conn.set_close_callback(None)
        if not self.closed:
            conn.write_headers(start_line, self.outer.headers(len(body)), body)
            conn.finish()
        status = start_line.code
        if status >= 500:
            access_log.error("%d %s %.2fms", status, self.start_line.path.partition("?")[0],
                             1000 * (time.time() - self.t0))
        elif access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%d %s %s %.2fms", status, self.start_line.method, self.start_line.path.partition("?")[0],
                             1000 * (time.time() - self.t0))
