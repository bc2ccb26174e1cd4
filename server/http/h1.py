"""The HTTP/1.1 protocol below the delegate: an ``asyncio.Protocol`` per connection, parsed by
httptools (llhttp, Node's C parser), speaking Tornado's public ``HTTPConnection`` interface.

Why not Tornado's ``HTTPServer``: its ``HTTP1Connection`` parses in Python and runs a
coroutine, a header timeout and several futures per request; under load that was about
a third of the HTTP process's CPU per callback, more than the callback's own work
(docs/performance.md). Above this module nothing changed: ``CallbackServer`` is the
``HTTPServerConnectionDelegate`` (Tornado's public extension point), each request gets a
``Request`` that implements ``httputil.HTTPConnection`` (``write_headers``, ``write``,
``finish``, ``set_close_callback``), and the admin API's ``tornado.web.Application`` runs
on it unchanged (streamed bodies, flushed and chunked answers included).

HTTP/1.1 as Tornado's server spoke it, which tests/test_callback_bytes.py pins byte for byte:
keep-alive (HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with
``Connection: keep-alive`` and a framed body or GET/HEAD), pipelining (one request at a
time, in order), ``Expect: 100-continue``, chunked request bodies, chunked answers when the
application sets no ``Content-Length``, ``X-Forwarded-For``/``X-Real-Ip``/``X-Scheme``
with ``xheaders``.

Requests the parser refuses get a well-formed answer instead of a bare 400 or a silent close
(docs/storage-and-faults.md, "Bad input"); ``reject`` builds it (``CallbackServer.rejection``):
HTTP 200 with the five common fields (the command's failure-policy answer when the path
names a command) and ``error``, or HTTP 400 ``{"error", "message"}`` on an admin path:

* a malformed message (garbage request line, a version other than HTTP/1.0 or 1.1, control
  bytes in a header, a bad or over-long chunked body, ``Content-Length`` together with
  ``Transfer-Encoding``, a bad or repeated ``Content-Length``): ``bad_http``;
* a request line plus headers over ``max_header_size`` (64 KB): ``headers_too_large``;
* a body that does not complete within ``body_timeout`` of its headers: ``body_timeout``.

The connection is closed after such an answer, since the rest of the stream cannot be
trusted. An answer given before the request's body was read (a refusal from the headers)
also closes the connection; the close "lingers" (``LINGER_S``: our side shut down for
writing, what the client still sends is read and dropped) so the client reads the answer
instead of a reset. Headers that never complete (an idle keep-alive connection, slowloris in
the headers) get no reply: there is no request to answer; the connection is closed after
``idle_connection_timeout`` (checked once a second by one timer for all connections).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools
from tornado import httputil, iostream, netutil

if TYPE_CHECKING:
    from server.http.conn import Server

log = logging.getLogger("scriptgate.http")

# (start line or None, error code, message) -> a whole HTTP response.
Rejecter = Callable[[httputil.RequestStartLine | None, str, str], bytes]
MAX_HEADER_SIZE = 64 * 1024
# A close after an answer given before the body was read: how long to keep reading and
# dropping what the client still sends, so that our close does not reset the answer.
LINGER_S = 2.0
# Body bytes parsed ahead of a delegate that is not ready for them (a streamed admin upload
# awaiting its prepare()): above this, reading from the socket pauses.
MAX_BUFFERED_BODY = 1 << 20
# Pipelined requests parsed but not yet answered: above this, reading pauses.
MAX_QUEUED = 64
CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
NO_BODY_CODES = frozenset({204, 304})
OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")


def response(status: int, reason: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class BadRequest(Exception):
    """A request this layer refuses: ``code`` (bad_http, headers_too_large) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Context:
    """What ``HTTPServerRequest`` and the callback path read from ``connection.context``:
    the client's address, and with ``xheaders`` the one a trusted proxy names."""

    __slots__ = ("address", "address_family", "protocol", "remote_ip", "trusted_downstream", "xheaders")

    def __init__(self, address: Any, family: int, xheaders: bool, trusted_downstream: frozenset[str]) -> None:
        self.address = address
        self.address_family = family
        inet = family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
        self.remote_ip = address[0] if inet else "0.0.0.0"
        self.protocol = "http"
        self.xheaders = xheaders
        self.trusted_downstream = trusted_downstream

    def __str__(self) -> str:
        return self.remote_ip

    def for_request(self, headers: httputil.HTTPHeaders) -> Context:
        """The context of one request: with ``xheaders``, a copy carrying the address and
        scheme the proxy's headers name (so they never leak to the connection's next request)."""
        if not self.xheaders:
            return self
        ctx = Context(self.address, self.address_family, False, self.trusted_downstream)
        forwarded = headers.get("X-Forwarded-For", ctx.remote_ip)
        ip = ctx.remote_ip
        for ip in (part.strip() for part in reversed(forwarded.split(","))):
            if ip not in self.trusted_downstream:  # the last address no trusted proxy added
                break
        ip = headers.get("X-Real-Ip", ip)
        if netutil.is_valid_ip(ip):
            ctx.remote_ip = ip
        scheme = headers.get("X-Scheme", headers.get("X-Forwarded-Proto", ctx.protocol))
        if scheme:
            scheme = scheme.split(",")[-1].strip()
        if scheme in ("http", "https"):
            ctx.protocol = scheme
        return ctx


class Request(httputil.HTTPConnection):
    """One request on a connection, and the ``HTTPConnection`` its delegate answers through."""

    __slots__ = (
        "body_size", "body_timeout", "chunking", "chunks", "close_callback", "complete", "conn", "context",
        "delegate", "disconnect", "failure", "head_done", "headers", "max_body_size", "read_done", "remaining",
        "response_start_line", "start_line", "timer", "write_finished",
    )

    def __init__(self, conn: Connection, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 context: Context, keep_alive: bool) -> None:
        self.conn = conn
        self.start_line = start_line
        self.headers = headers
        self.context = context
        self.delegate: httputil.HTTPMessageDelegate | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.body_size = 0
        self.max_body_size = conn.server.max_body_size
        self.body_timeout = conn.server.body_timeout
        self.timer: asyncio.TimerHandle | None = None
        self.complete = False  # the parser has the whole message
        self.failure: BadRequest | None = None  # its body was refused by the parser
        self.head_done = False  # the delegate has the headers
        self.read_done = False  # the delegate has the whole message (or is past caring)
        self.disconnect = not keep_alive
        self.write_finished = False
        self.response_start_line: httputil.ResponseStartLine | None = None
        self.chunking = False
        self.remaining: int | None = None  # body bytes the answer's Content-Length still owes
        self.close_callback: Callable[[], None] | None = None

    # -- httputil.HTTPConnection -----------------------------------------------------------

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> asyncio.Future[None]:
        self.response_start_line = start_line
        code = start_line.code
        request = self.start_line
        head = request.method == "HEAD"
        self.chunking = (request.version == "HTTP/1.1" and not head and code not in NO_BODY_CODES
                         and not 100 <= code < 200 and "Content-Length" not in headers)
        connection = self._connection_header()
        if connection is not None:
            headers["Connection"] = connection
        if self.chunking:
            headers["Transfer-Encoding"] = "chunked"
        if head or code == 304:
            self.remaining = 0
        elif "Content-Length" in headers:
            self.remaining = int(headers["Content-Length"])
        else:
            self.remaining = None
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers.get_all())
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"Illegal characters (CR or LF) in header: {line!r}")
        data = "\r\n".join(lines).encode("latin1") + b"\r\n\r\n"
        if chunk:
            data += self._framed(chunk)
        return self.conn.send(data)

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        return self.conn.send(self._framed(chunk))

    def answer_ok(self, header_lines: str, body: bytes) -> None:
        """A whole ``200 OK`` answer in one write, then ``finish``: ``header_lines`` ends with
        ``Content-Length`` (``"Name: value\r\n"`` each); ``body`` is left out for HEAD. The
        same bytes as ``write_headers`` + ``finish`` with those headers, without building an
        ``HTTPHeaders`` (the callback path's answer, server/http/callback.py)."""
        self.response_start_line = OK
        connection = self._connection_header()
        if connection is not None:
            header_lines += f"Connection: {connection}\r\n"
        head = b"HTTP/1.1 200 OK\r\n" + header_lines.encode("latin1") + b"\r\n"
        self.conn.send(head if self.start_line.method == "HEAD" else head + body)
        self.finish()

    def _connection_header(self) -> str | None:
        """The answer's ``Connection`` header, if any (Tornado's rules): ``close`` to an
        HTTP/1.1 client when the connection ends after this answer, ``Keep-Alive`` to an
        HTTP/1.0 client that asked for it."""
        if self.conn.server.closing:
            # A graceful stop: the answer says "Connection: close", so the client opens its
            # next connection elsewhere instead of racing our close on this one.
            self.disconnect = True
        if self.start_line.version == "HTTP/1.1":
            return "close" if self.disconnect else None
        if self.headers.get("Connection", "").lower() == "keep-alive":
            return "Keep-Alive"
        return None

    def finish(self) -> None:
        if self.remaining and not self.conn.closed:
            self.conn.abort()
            raise httputil.HTTPOutputError(f"Tried to write {self.remaining} bytes less than Content-Length")
        if self.chunking:
            self.conn.send(b"0\r\n\r\n")
        self.write_finished = True
        if not self.read_done:
            # Answered before the delegate had the whole request (a refusal from the
            # headers): the rest of the body is not read, so the connection cannot be reused.
            self.disconnect = True
        self.conn.answered_one(self)

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.close_callback = callback

    def set_body_timeout(self, timeout: float) -> None:
        self.body_timeout = timeout

    def set_max_body_size(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size

    def close(self) -> None:
        """Cut the connection (an answer that cannot be completed)."""
        self.conn.abort()

    def _framed(self, chunk: bytes) -> bytes:
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining < 0:
                self.conn.abort()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunking and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk


def keep_alive(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
    """Whether the connection stays open after this request (Tornado's rule)."""
    connection = headers.get("Connection")
    if connection is not None:
        connection = connection.lower()
    if start_line.version == "HTTP/1.1":
        return connection != "close"
    if "Content-Length" in headers or headers.get("Transfer-Encoding", "").lower() == "chunked" \
            or start_line.method in ("HEAD", "GET"):
        return connection == "keep-alive"
    return False


class _Stop(Exception):
    """Raised from a parser callback to stop parsing; the reason is in ``Connection.failure``."""


class Connection(asyncio.Protocol):
    """One client connection: parses requests, hands them to the server's delegate one at a
    time (in order: pipelining), writes their answers."""

    def __init__(self, server: Server, address: Any, family: int) -> None:
        self.server = server
        self.context = Context(address, family, server.xheaders, server.trusted_downstream)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Request] = collections.deque()  # parsed, not yet answered
        self.parsing: Request | None = None  # the request whose body is being parsed
        self.url: list[bytes] = []
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.in_head = False  # a request line has begun and its headers are not complete
        self.url_done = False  # the current request line's target is complete
        self.chunk = b""  # the data being parsed
        self.chunk_fresh = False  # nothing of it parsed yet but (maybe) a request's beginning
        self.head_start = b""  # the data the current request began at, when it began a chunk
        self.began = False  # a request began in the data being parsed
        self.head_size = 0  # bytes of the current head (or read while it is incomplete)
        self.buffered = 0  # body bytes parsed but not yet given to a delegate
        self.failure: BadRequest | None = None  # a refused message, answered once the earlier ones are
        self.stopped = False  # nothing more is parsed (a close is coming)
        self.waiting: asyncio.Future[Any] | None = None  # a delegate's awaitable the next step waits for
        self.pumping = False
        self.paused = False  # reading paused (flow control)
        self.writes_paused = False
        self.drain: list[asyncio.Future[None]] = []
        self.closed = False
        self.accepted_at = time.monotonic()
        self.idle_since: float | None = self.accepted_at
        self.answered = 0  # requests answered

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return  # after a refused message, a close, or while lingering: dropped
        self.chunk = data
        self.chunk_fresh = True
        self.began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here: the request is answered, then the connection closed.
            self.stopped = True
            if self.queue:
                self.queue[-1].disconnect = True
        except httptools.HttpParserCallbackError:
            self.stopped = True
            if self.failure is None:  # not our _Stop (which always says why): a bug, not the client's
                log.error("HTTP parser callback failed; connection closed", exc_info=True)
                self.abort()
                return
        except httptools.HttpParserError as exc:
            if not self.stopped:  # bytes after a "Connection: close" request are ignored
                self.failure = BadRequest("bad_http", str(exc))
                self.stopped = True
        if self.failure is not None and self.parsing is not None:
            self.parsing.failure, self.failure = self.failure, None  # its body was refused
        if self.in_head and not self.began and not self.stopped:
            # The whole chunk belongs to a head begun in an earlier one and still not
            # complete (a head begun in this chunk is counted by its url and header events).
            self.head_size += len(data)
            if self.head_size > self.server.max_header_size:
                self.refuse_head()
        self.pump()
        self.flow()

    def flow(self) -> None:
        """Stop reading while the client is ahead of us: body bytes a delegate has not taken
        yet, requests not yet answered, or answers it does not read (the transport's write
        buffer over its high-water mark: a client that pipelines without reading would
        otherwise grow it without bound); read again once it is back under half of those."""
        transport = self.transport
        if transport is None or self.stopped:
            return  # stopped: nothing more is parsed (linger() reads and drops by itself)
        if self.paused:
            if self.buffered <= MAX_BUFFERED_BODY // 2 and len(self.queue) <= MAX_QUEUED // 2 \
                    and not self.writes_paused:
                self.paused = False
                transport.resume_reading()
        elif self.buffered > MAX_BUFFERED_BODY or len(self.queue) > MAX_QUEUED or self.writes_paused:
            self.paused = True
            transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too once the answers are written

    def pause_writing(self) -> None:
        self.writes_paused = True
        self.flow()

    def resume_writing(self) -> None:
        self.writes_paused = False
        waiters, self.drain = self.drain, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        self.pump()
        self.flow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stopped = True
        for req in self.queue:
            if req.timer is not None:
                req.timer.cancel()
            if req.delegate is not None and not req.read_done:
                req.read_done = True
                self._call(req.delegate.on_connection_close)
            callback, req.close_callback = req.close_callback, None
            if callback is not None:
                self._call(callback)
        self.queue.clear()
        for fut in self.drain:
            if not fut.done():
                fut.set_exception(iostream.StreamClosedError())
                fut.exception()
        self.drain = []
        self.server.closed(self)

    # -- the parser's callbacks (httptools) -------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_size = 0
        self.url = []
        self.url_done = False
        self.raw_headers = []
        self.head_start = self.chunk if self.chunk_fresh else b""
        self.began = True

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.url_done = True
        self.raw_headers.append((name, value))
        self.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.url_done = True
        self.idle_since = None
        server = self.server
        if self.head_size > server.max_header_size:
            self.refuse_head()
            raise _Stop
        version = VERSIONS.get(self.parser.get_http_version())
        if version is None:
            self.failure = BadRequest("bad_http", "Malformed HTTP version in HTTP Request-Line")
            raise _Stop
        start_line = httputil.RequestStartLine(self.parser.get_method().decode("latin1"),
                                               b"".join(self.url).decode("latin1"), version)
        headers = httputil.HTTPHeaders()
        for name, value in self.raw_headers:
            headers.add(name.decode("latin1"), value.decode("latin1").strip(" \t"))
        length = headers.get("Content-Length")
        if length is not None and int(length) > server.max_body_size:
            self.failure = BadRequest("bad_http", "Content-Length too long")
            raise _Stop
        req = Request(self, start_line, headers, self.context.for_request(headers), keep_alive(start_line, headers))
        self.queue.append(req)
        self.parsing = req

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.body_size += len(body)
        if req.body_size > req.max_body_size:
            self.failure = BadRequest("bad_http", "chunked body too large")
            raise _Stop
        req.chunks.append(body)
        self.buffered += len(body)
        self.chunk_fresh = False

    def on_message_complete(self) -> None:
        self.chunk_fresh = False
        req = self.parsing
        self.parsing = None
        if req is not None:
            req.complete = True
            if req.disconnect:
                self.stopped = True  # the client said it sends nothing more

    def refuse_head(self) -> None:
        self.failure = BadRequest("headers_too_large",
                                  f"request line and headers are larger than {self.server.max_header_size} bytes")
        self.stopped = True

    # -- handing requests to the delegate ----------------------------------------------------

    def pump(self) -> None:
        """Move the oldest request on as far as it can go now; then the next one."""
        if self.pumping or self.closed:
            return
        self.pumping = True
        try:
            self._pump()
        finally:
            self.pumping = False

    def _pump(self) -> None:
        queue = self.queue
        # Not while the client does not read our answers (writes paused): the next request
        # waits, so the write buffer holds at most about one answer past its high-water mark.
        while queue and self.waiting is None and not self.closed and not self.writes_paused:
            req = queue[0]
            delegate = req.delegate
            if delegate is None:
                req.delegate = delegate = self.server.delegate.start_request(self, req)
                if self._wait(delegate.headers_received, req.start_line, req.headers):
                    return
            if not req.head_done:
                req.head_done = True
                if req.headers.get("Expect") == "100-continue" and not req.write_finished:
                    self.send(CONTINUE)
            chunks = req.chunks
            while chunks:
                chunk = chunks.popleft()
                self.buffered -= len(chunk)
                if not req.write_finished and self._wait(delegate.data_received, chunk):
                    return
            if not req.complete and not req.write_finished:
                if req.failure is not None:
                    self.refuse(req, req.failure)
                    return
                if req.timer is None and req.body_timeout:
                    req.timer = asyncio.get_running_loop().call_later(req.body_timeout, self.body_timed_out, req)
                break
            if not req.read_done:
                req.read_done = True
                if req.timer is not None:
                    req.timer.cancel()
                if not req.write_finished:
                    self._call(delegate.finish)
                    if self.closed:
                        return
            if not req.write_finished:
                break  # the answer comes later: answered_one() pumps again
            queue.popleft()
            # The delegate answers through the request (its ``conn``): without this the
            # pair is a reference cycle, left for the cyclic GC, whose collections of a
            # thousand of them a second stalled callbacks by 1-4 ms (measured at p99).
            req.delegate = None
            self.answered += 1
            if req.disconnect:
                self.close_after_answer(req)
                return
        if not queue and not self.closed:
            if self.failure is not None:
                self.answer_refusal(self.refused_start_line(), self.failure)
                return
            if self.idle_since is None and not self.in_head:
                self.idle_since = time.monotonic()
        self.flow()

    def _wait(self, method: Callable[..., Any], *args: Any) -> bool:
        """Call a delegate's method; True when it returned an awaitable still pending (the
        pump resumes once it is done)."""
        try:
            result = method(*args)
        except Exception:
            log.error("uncaught exception in an HTTP request's delegate", exc_info=True)
            self.abort()
            return True
        if result is None:
            return False
        fut = asyncio.ensure_future(result)
        if fut.done():
            return self._failed(fut)
        self.waiting = fut
        fut.add_done_callback(self._resume)
        return True

    def _resume(self, fut: asyncio.Future[Any]) -> None:
        self.waiting = None
        if not self._failed(fut):
            self.pump()

    def _failed(self, fut: asyncio.Future[Any]) -> bool:
        if fut.cancelled():
            self.abort()
            return True
        exc = fut.exception()
        if exc is None:
            return False
        if not isinstance(exc, iostream.StreamClosedError):
            log.error("uncaught exception in an HTTP request's delegate", exc_info=exc)
        self.abort()
        return True

    def _call(self, method: Callable[[], Any]) -> None:
        try:
            method()
        except Exception:
            log.error("uncaught exception in an HTTP request's delegate", exc_info=True)
            self.abort()

    def answered_one(self, req: Request) -> None:
        """``req``'s answer is complete (Request.finish)."""
        if req.timer is not None:
            req.timer.cancel()
        req.close_callback = None
        self.pump()

    def body_timed_out(self, req: Request) -> None:
        if self.closed or req.complete or not self.queue or self.queue[0] is not req:
            return
        timeout = req.body_timeout
        log.info("request body from %s not complete after %gs: answered and closed", self.context, timeout)
        self.refuse(req, BadRequest("body_timeout", f"request body not complete within {timeout:g} s"))

    def refuse(self, req: Request, failure: BadRequest) -> None:
        """Refuse the oldest request, whose body cannot be read: answer (unless its answer
        has begun), close, and tell its delegate the connection is gone."""
        self.stopped = True
        req.read_done = True
        if req.timer is not None:
            req.timer.cancel()
        if req.response_start_line is None:
            self.answer_refusal(req.start_line, failure)
        else:
            self.abort()
        if req.delegate is not None:
            self._call(req.delegate.on_connection_close)

    def refused_start_line(self) -> httputil.RequestStartLine | None:
        """The refused message's method and target when they were read (so a command's
        failure policy still answers a request whose headers were malformed), else None."""
        if not self.url_done:
            # Refused in the request line (a method llhttp does not know): read it here
            # when the request began the data being parsed.
            parts = self.head_start.lstrip(b"\r\n").partition(b"\r\n")[0].split(b" ")
            if len(parts) != 3 or not parts[1].startswith(b"/"):
                return None
            return httputil.RequestStartLine(parts[0].decode("latin1"), parts[1].decode("latin1"), "HTTP/1.1")
        try:
            method = self.parser.get_method().decode("latin1")
        except httptools.HttpParserError:
            return None
        return httputil.RequestStartLine(method, b"".join(self.url).decode("latin1"), "HTTP/1.1")

    def answer_refusal(self, start_line: httputil.RequestStartLine | None, failure: BadRequest) -> None:
        """Answer a message this layer refused, then close."""
        if failure.code == "bad_http":
            log.info("Malformed HTTP message from %s: %s", self.context, failure)
            message = f"malformed HTTP request: {str(failure)[:200]}"
        else:
            message = str(failure)
        self.send(self.server.reject(start_line, failure.code, message))
        self.linger()

    # -- writing and closing ---------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[None]:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(iostream.StreamClosedError())
            fut.exception()
            return fut
        transport.write(data)
        if self.writes_paused:
            fut = asyncio.get_running_loop().create_future()
            self.drain.append(fut)
            return fut
        return self.server.written()

    def close_after_answer(self, req: Request) -> None:
        if req.complete:
            self.stopped = True
            if self.transport is not None:
                self.transport.close()  # after the answer is written
        else:
            self.linger()

    def linger(self) -> None:
        """Close after the answer without resetting it: shut our side down for writing,
        keep reading (and dropping) what the client still sends for up to LINGER_S."""
        self.stopped = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def abort(self) -> None:
        self.stopped = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- what a graceful stop asks ------------------------------------------------------------

    @property
    def in_request(self) -> bool:
        """A request has begun and its answer is not written yet."""
        return self.in_head or bool(self.queue)

    def unfinished(self, now: float, first_request_wait_s: float) -> bool:
        """Whether a graceful stop must still wait for it: a request is being read or
        answered, or it is new and its first request may still be on the way (a client
        that connected just before the stop has sent it, or is about to; closing would reset
        it). An idle keep-alive connection is finished: its client reopens elsewhere."""
        if self.in_request:
            return True
        return self.answered == 0 and now - self.accepted_at < first_request_wait_s
