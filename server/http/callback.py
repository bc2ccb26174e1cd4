"""The endpoint OpenIM calls: ``POST [/{base/path}]/{callbackCommand}``, and the HTTP server's
delegate that sends every other request to the Tornado application.

``CallbackServer`` is the ``HTTPServer``'s delegate (Tornado's public extension point,
``httputil.HTTPServerConnectionDelegate``). For each request it starts a ``CallbackExchange``
(an ``httputil.HTTPMessageDelegate``), which looks at the start line: a path of the admin
API, ``/healthz`` or ``/metrics`` goes to the application (``Application.start_request``),
untouched; any other path is a callback and is answered here, without ``RequestHandler``
(whose machinery costs more CPU per callback than everything else in the HTTP process).
The HTTP/1.1 layer below both (server/http/h1.py) does request parsing, ``Expect: 100-continue``,
keep-alive, pipelining and ``Connection`` headers, as Tornado's ``HTTP1Connection`` did.

The command is the last path segment (OpenIM builds ``url + "/" + command``); the query
string is ignored. When the path names no known command, it comes from the body's
``callbackCommand``: with a query string in OpenIM's ``url:`` (``.../callbackExample?contenttype=json``)
OpenIM posts to ``/callbackExample?contenttype=json/callbackXxxCommand``, which puts the
command into the query string. When path and body name different known commands, the
path wins (it is where OpenIM said it posts) and a warning is logged and counted.

Every answer is HTTP 200 with JSON carrying the five common reply fields, errors too
(plus an ``error`` object: ``{"code", "message"}``, and the command's failure-policy answer
when the path names a command), because OpenIM ignores the status code and fails the user's
action on a body it cannot decode: a wrong method, an unknown command, a body that is not
JSON or too large, a client outside ``allow_cidrs``, a wrong secret prefix. What can be
refused from the start line and headers is answered before the body is read (the connection
is then closed, as the body was not read); a body over ``max_body_bytes`` is read and
discarded (up to ``DISCARD_LIMIT`` more bytes) and then answered, so the client reads the
answer rather than a broken pipe. Requests the HTTP parser refuses before a delegate sees
them are answered the same way (``CallbackServer.rejection``, server/http/h1.py).

The reply's headers are the ones ``RequestHandler`` sent, in its order (``Server``,
``Content-Type``, ``Date``, ``Etag`` for GET and HEAD, ``Content-Length``): byte for byte the
same response as before this path replaced the handler (tests/test_callback_bytes.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
import tornado
from tornado import httputil

from server import reply
from server.catalog import Catalog, Command
from server.http import h1
from server.http.common import client_allowed
from server.logfmt import callback_fields
from server.service.callbacks import answer, policy_reply

if TYPE_CHECKING:
    import tornado.web

    from server.service.state import AppState

log = logging.getLogger("scriptgate.http")
access_log = logging.getLogger("scriptgate.access")

SERVER = f"TornadoServer/{tornado.version}"
# The methods RequestHandler served; any other one was refused before any other check.
HANDLER_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"})
POST_ONLY = "callbacks are sent with POST"
INTERNAL_MESSAGE = "internal error (see the server log)"
# An oversized body is read and thrown away up to this many bytes past the limit, then answered.
DISCARD_LIMIT = 16 << 20
PATH_CACHE_LIMIT = 4096
_MISMATCH_LOG_EVERY = 1000  # after the first 10, one line per this many mismatches
_mismatches = 0


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


def command_from_body(catalog: Catalog, path_cmd: Command | None, payload: dict[str, Any]) -> tuple[Command | None, str]:
    """(the command a callback is for, where it came from: path | body | mismatch), given
    the path's command (None if the path names no known command) and the parsed body;
    (None, "") when neither names one."""
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


class _DateCache:
    """``Date`` as ``RequestHandler`` formatted it, computed once per second."""

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


class CallbackServer(httputil.HTTPServerConnectionDelegate):
    """The ``HTTPServer``'s delegate: callbacks are answered by ``CallbackExchange``, every
    other request by ``app``, whose routes are ``app_paths`` (regular expressions of whole paths)."""

    def __init__(self, app: tornado.web.Application, state: AppState, app_paths: Iterable[str]) -> None:
        self.app = app
        self.state = state
        self.app_path = re.compile("|".join(f"(?:{pattern})" for pattern in app_paths))
        self.max_body = state.config.max_body_bytes
        self.prefix = state.config.path_prefix
        self.catalog = state.catalog
        self.dispatcher = state.dispatcher
        self.dates = _DateCache()
        self.fixed_lines = f"Server: {SERVER}\r\nContent-Type: application/json\r\n"
        self.tasks: set[asyncio.Task[None]] = set()  # callbacks being answered (strong references)
        # path -> (command name, command or None), for callback paths whose prefix matched
        # (misses are recomputed each time: command_from_path compares the secret prefix in
        # constant time).
        self._paths: dict[str, tuple[str, Command | None]] = {}

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return CallbackExchange(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def callback_path(self, path: str) -> tuple[str, Command | None] | None:
        """(the command name, the command if known) a callback path names; None when the
        secret prefix does not match."""
        named = self._paths.get(path)
        if named is not None:
            return named
        name = command_from_path(path, self.prefix)
        if name is None:
            return None
        named = (name, self.catalog.get(name))
        if len(self._paths) < PATH_CACHE_LIMIT:
            self._paths[path] = named
        return named

    def is_app_path(self, path: str) -> bool:
        return path not in self._paths and self.app_path.fullmatch(path) is not None

    def rejection(self, start_line: httputil.RequestStartLine | None, code: str, message: str) -> bytes:
        """The answer to a request the HTTP layer refused (server/http/h1.py): an admin path gets
        400 with ``{"error", "message"}``; anything else is treated as a callback: 200 with
        the five fields (the command's failure-policy answer when the path names one)."""
        path = start_line.path.partition("?")[0] if start_line is not None else ""
        if path.startswith("/admin") or path in ("/healthz", "/metrics"):
            return h1.response(400, "Bad Request", orjson.dumps({"error": code, "message": message}))
        named = self.callback_path(path) if path else None
        return h1.response(200, "OK", self.error_body(named[1] if named is not None else None, code, message))

    def error_body(self, cmd: Command | None, code: str, message: str) -> bytes:
        """A refused callback's body (counted): the five fields (the failure policy's answer
        when the command is known) and ``error``."""
        base = policy_reply(self.dispatcher.settings[cmd.name]) if cmd is not None else None
        self.state.metrics.bad_requests.labels(code).inc()
        return reply.error_body(code, message, base)

    def header_lines(self, body: bytes, method: str) -> str:
        """The answer's headers, as ``RequestHandler`` sent them and in its order (``Server``,
        ``Content-Type``, ``Date``, ``Etag`` for GET and HEAD, ``Content-Length``), as lines
        for ``h1.Request.answer_ok``."""
        etag = f'Etag: "{hashlib.sha1(body).hexdigest()}"\r\n' if method == "GET" or method == "HEAD" else ""
        return f"{self.fixed_lines}Date: {self.dates.now()}\r\n{etag}Content-Length: {len(body)}\r\n"


class CallbackExchange(httputil.HTTPMessageDelegate):
    """One request on a connection: a callback answered here, or a request passed on to the
    application (``app_delegate``)."""

    __slots__ = (
        "answered",
        "app_delegate",
        "chunks",
        "closed",
        "cmd",
        "conn",
        "limit",
        "method",
        "name",
        "path",
        "request_headers",
        "server",
        "server_conn",
        "size",
        "t0",
        "too_large",
    )

    def __init__(self, server: CallbackServer, server_conn: object, conn: Any) -> None:
        self.server = server
        self.server_conn = server_conn
        self.conn = conn
        self.app_delegate: httputil.HTTPMessageDelegate | None = None
        self.cmd: Command | None = None  # the path's command; the body's once it is known
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.answered = False
        self.closed = False

    # -- the start line and headers: the application's request, or checks that need no body --

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        path = start_line.path.partition("?")[0]
        server = self.server
        if server.is_app_path(path):
            self.app_delegate = delegate = server.app.start_request(self.server_conn, self.conn)
            return delegate.headers_received(start_line, headers)
        self.t0 = time.time()
        self.method = start_line.method
        self.path = path
        self.request_headers = headers
        self.name = ""
        self.limit = server.max_body
        self.check_head(headers)
        return None

    def check_head(self, headers: httputil.HTTPHeaders) -> None:
        """Refuse what the start line and headers already tell (in the order RequestHandler checked)."""
        method = self.method
        if method not in HANDLER_METHODS:
            self.refuse("method_not_allowed", POST_ONLY)
            return
        server = self.server
        networks = server.state.callback_networks
        if networks and not client_allowed(getattr(self.conn.context, "remote_ip", None), networks):
            self.refuse("forbidden", "client address is not in allow_cidrs")
            return
        named = server.callback_path(self.path)
        if named is None:
            self.refuse("not_found", "no such endpoint")
            return
        self.name, self.cmd = named
        if method != "POST":
            if self.cmd is None:
                self.refuse("unknown_command", unknown_command_message(self.name, None))
            else:
                self.refuse("method_not_allowed", POST_ONLY)
            return
        length = headers.get("Content-Length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                self.refuse("bad_request", "invalid Content-Length")
                return
            if declared > self.limit + DISCARD_LIMIT:
                self.refuse_too_large()
            elif declared > self.limit:
                self.too_large = True

    # -- the body --------------------------------------------------------------------------

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.app_delegate is not None:
            return self.app_delegate.data_received(chunk)
        if self.answered:
            return None
        self.size += len(chunk)
        if self.too_large or self.size > self.limit:
            self.too_large = True
            self.chunks = []
            if self.size > self.limit + DISCARD_LIMIT:
                self.refuse_too_large()
            return None
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
        if self.answered:
            return
        started = time.perf_counter()
        if self.too_large:
            self.refuse_too_large()
            return
        chunks = self.chunks
        self.chunks = []
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        payload = self.checked(raw)
        if payload is None:
            return
        cmd = self.cmd
        assert cmd is not None  # checked() refused the request otherwise
        operation_id = self.request_headers.get("operationID", "")
        try:
            answered = answer(self.server.state, cmd, raw, payload, operation_id, started)
        except Exception as exc:
            log.error("unhandled error on %s %s", self.method, self.path, exc_info=exc)
            self.refuse("internal_error", INTERNAL_MESSAGE)
            return
        if type(answered) is bytes:  # not waiting for a script: no task needed
            self.write(answered)
            return
        self.conn.set_close_callback(self.on_close)
        tasks = self.server.tasks
        task = asyncio.ensure_future(self.respond(answered))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def checked(self, raw: bytes) -> dict[str, Any] | None:
        """The body as a JSON object for a known command (``self.cmd`` set to it) that passes
        the command's request checks; None when it was refused instead."""
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            text = str(exc)
            if self.cmd is None:
                self.refuse("unknown_command", unknown_command_message(self.name, None))
            elif "UTF-8" in text or "utf-8" in text:
                self.refuse("invalid_utf8", "request body is not valid UTF-8")
            else:
                self.refuse("invalid_json", f"request body is not valid JSON: {text[:200]}")
            return None
        if type(payload) is not dict:
            if self.cmd is None:
                self.refuse("unknown_command", unknown_command_message(self.name, None))
            else:
                self.refuse("invalid_body", "request body must be a JSON object")
            return None
        cmd, source = command_from_body(self.server.catalog, self.cmd, payload)
        if cmd is None:
            self.refuse("unknown_command", unknown_command_message(self.name, payload))
            return None
        self.cmd = cmd
        note_command_source(self.server.state, cmd, source, payload)
        problem = cmd.check_request(payload)
        if problem:
            self.refuse("invalid_field", problem)
            return None
        return payload

    def on_close(self) -> None:
        self.closed = True

    # -- answers ---------------------------------------------------------------------------

    async def respond(self, answering: Awaitable[bytes]) -> None:
        try:
            body = await answering
        except asyncio.CancelledError:
            self.refuse("internal_error", INTERNAL_MESSAGE)
            raise
        except Exception as exc:
            log.error("unhandled error on %s %s", self.method, self.path, exc_info=exc)
            self.refuse("internal_error", INTERNAL_MESSAGE)
            return
        self.write(body)

    def refuse_too_large(self) -> None:
        self.refuse("payload_too_large", f"request body is larger than {self.limit} bytes")

    def refuse(self, code: str, message: str) -> None:
        """An error answer: HTTP 200 (OpenIM ignores the status), the five fields (the failure
        policy's answer when the command is known) and ``error``."""
        if self.answered:
            return
        self.write(self.server.error_body(self.cmd, code, message))

    def write(self, body: bytes) -> None:
        self.answered = True
        conn = self.conn
        conn.set_close_callback(None)
        if not self.closed:
            method = self.method
            conn.answer_ok(self.server.header_lines(body, method), body)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%d %s %s %.2fms", 200, self.method, self.path, 1000 * (time.time() - self.t0))
