"""The HTTP server below the delegate: answers for requests Tornado refuses, and accepting
connections when the process is out of file descriptors.

Requests Tornado's HTTP/1 parser refuses never reach our handlers; Tornado answers them with
a bare ``400 Bad Request`` and no body, which OpenIM reads as a failed call. ``Server``
makes them well-formed answers instead (docs/storage-and-faults.md, "Bad input"):

* a malformed message (garbage request line, control bytes in a header, a bad or
  over-long chunked body, ``Content-Length`` together with ``Transfer-Encoding``,
  a bad ``Content-Length``): Tornado raises ``HTTPInputError`` and writes its fixed
  400 line on the stream; ``_IOStream.write`` swaps it for our reply;
* a request line plus headers over ``max_header_size`` (64 KB): Tornado's IOStream gives up
  the read (``UnsatisfiableReadError``) and closes the socket itself, without a word;
  ``_IOStream.close`` answers first (what the client sent so far is drained, so the close
  does not turn into a reset that would destroy the answer);
* a body that does not complete within ``body_timeout`` of its headers: Tornado closes
  silently; ``_Connection._read_body`` runs that timer itself and answers before closing.

The reply is the callback path's (HTTP 200, the five common fields with the command's
failure-policy answer when the path names a command, plus ``error``) unless the request
line names an admin path (then HTTP 400 and ``{"error", "message"}``); the connection is
closed after it, since the rest of the stream cannot be trusted. Headers that never
complete (idle keep-alive, slowloris in the headers) get no reply: there is no request to
answer, and the connection is closed after ``idle_connection_timeout``.

Out of file descriptors (EMFILE/ENFILE at ``accept``), Tornado's accept handler raises from
the event loop on every wake-up: one traceback per attempt, thousands per second, while
pending connections wait anyway. ``_accept_handler`` instead stops watching the listening
socket for a back-off (50 ms doubling to 1 s, reset by the next accepted connection),
logs one line per ``FD_LOG_EVERY_S`` with the count, and resumes by itself: connections
wait in the kernel's backlog until descriptors are free again.

This is the one module that reaches below Tornado's public API, because Tornado has no hook
for the three refusals above: ``_Connection`` overrides ``HTTP1Connection._read_body`` and
reads ``_body_timeout``, ``_request_start_line``, ``_write_finished`` and
``_response_start_line``; ``_ServerConnection`` replaces ``HTTP1ServerConnection._server_request_loop``
to use ``_Connection``; ``Server.handle_stream`` builds the ``_HTTPRequestContext`` that
``HTTPServer`` would (the client address, ``xheaders``). tests/test_bad_input.py and
tests/test_callback_bytes.py pin what they answer; re-check them on a Tornado upgrade.
The listening sockets and connections are kept by ``Server`` itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.ioloop import IOLoop

log = logging.getLogger("scriptgate.http")

# Tornado's answer to a malformed message (http1connection.HTTP1Connection._read_message).
TORNADO_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
# (start line or None, error code, message) -> a whole HTTP response.
Rejecter = Callable[[httputil.RequestStartLine | None, str, str], bytes]
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
FD_LOG_EVERY_S = 10.0
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


def response(status: int, reason: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _Connection(HTTP1Connection):
    def __init__(self, stream: iostream.IOStream, params: Any, context: Any, reject: Rejecter,
                 closing: Callable[[], bool]) -> None:
        super().__init__(stream, False, params, context)
        if isinstance(stream, _IOStream):
            stream.owner = self
        self.rejecter = reject
        self.closing = closing

    @property
    def in_request(self) -> bool:
        """Its request line has arrived and its answer is not written yet."""
        return getattr(self, "_request_start_line", None) is not None and not self._write_finished

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> Any:
        if self.closing():
            # A graceful stop: the answer says "Connection: close" (Tornado adds it for an
            # HTTP/1.1 request when it will disconnect), so the client opens its next
            # connection elsewhere instead of racing our close on this one.
            self._disconnect_on_finish = True
        return super().write_headers(start_line, headers, chunk)

    def rejection(self, code: str, message: str) -> bytes:
        return self.rejecter(getattr(self, "_request_start_line", None), code, message)

    async def _answer_and_close(self, code: str, message: str) -> None:
        stream = self.stream
        if stream is None or stream.closed():
            return
        if not self._write_finished and self._response_start_line is None:
            try:
                await stream.write(self.rejection(code, message))
            except iostream.StreamClosedError:
                pass
        stream.close()

    def _read_body(self, code: int, headers: httputil.HTTPHeaders, delegate: httputil.HTTPMessageDelegate) -> Any:
        body = super()._read_body(code, headers, delegate)
        timeout = self._body_timeout
        if body is None or timeout is None:
            return body
        self._body_timeout = None  # our timer, not Tornado's silent one
        return self._body_within(body, timeout)

    async def _body_within(self, body: Any, timeout: float) -> None:
        # asyncio.timeout, not tornado.gen.with_timeout: no extra future, callback chain and
        # Tornado timeout per request (with_timeout was ~9% of the HTTP process's samples).
        try:
            async with asyncio.timeout(timeout):
                await body
        except TimeoutError:
            log.info("request body from %s not complete after %gs: answered and closed", self.context, timeout)
            await self._answer_and_close("body_timeout", f"request body not complete within {timeout:g} s")
            raise iostream.StreamClosedError() from None


# Classic BPF, run on each segment that reaches a listening TCP socket (data starts at the
# TCP header): drop it if the SYN flag (byte 13, bit 0x02) is set, else keep it.
_SYN_DROP = (
    (0x30, 0, 0, 13),          # ldb [13]
    (0x45, 0, 1, 0x02),        # jset #0x02 -> next, else skip one
    (0x06, 0, 0, 0),           # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep
)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


def _drop_syns(sock: socket.socket) -> bool:
    """Attach the SYN-dropping filter (Linux); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in _SYN_DROP))
    try:
        # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: native layout.
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER,
                        struct.pack("HP", len(_SYN_DROP), ctypes.addressof(code)))
    except OSError as exc:
        log.debug("could not filter SYNs on the listening socket: %s", exc)
        return False
    return True


class _IOStream(iostream.IOStream):
    """Set as the class of each accepted connection's stream (handle_stream)."""

    reject: Rejecter
    max_header_size: int
    owner: _Connection | None = None  # the connection reading from it

    def write(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """As IOStream's, except that Tornado's bare 400 becomes our answer. (An override,
        not a proxy object: forwarding every attribute Tornado reads cost ~4% of the
        HTTP process under load.)"""
        owner = self.owner
        if owner is not None and data == TORNADO_400:
            # Called from Tornado's `except HTTPInputError` block: the exception says why.
            exc = sys.exception()
            message = str(exc) if exc is not None else "malformed HTTP request"
            data = owner.rejection("bad_http", f"malformed HTTP request: {message[:200]}")
        return super().write(data, *args, **kwargs)

    def close(self, exc_info: Any = False) -> None:
        if exc_info and not self.closed():
            exc = sys.exception() if exc_info is True else exc_info[1] if isinstance(exc_info, tuple) else exc_info
            if isinstance(exc, iostream.UnsatisfiableReadError):
                self._answer_oversized_head()
        super().close(exc_info)
        self.owner = None  # no stream <-> connection cycle left for the GC

    def _answer_oversized_head(self) -> None:
        body = self.reject(None, "headers_too_large",
                           f"request line and headers are larger than {self.max_header_size} bytes")
        sock = self.socket
        try:
            for _ in range(64):  # at most 4 MB, then close anyway
                if not sock.recv(65536):
                    break
        except OSError:  # BlockingIOError: drained
            pass
        try:
            sock.send(body)  # small: fits the socket's send buffer, sent before the close
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _ServerConnection(HTTP1ServerConnection):
    def __init__(self, stream: iostream.IOStream, params: Any, context: Any, reject: Rejecter,
                 closing: Callable[[], bool]) -> None:
        super().__init__(stream, params, context)
        self.rejecter = reject
        self.closing = closing
        self.accepted_at = time.monotonic()
        self.answered = 0  # requests answered on it
        self.current: _Connection | None = None

    def unfinished(self, now: float, first_request_wait_s: float) -> bool:
        """Whether a graceful stop must still wait for it: a request is being read or
        answered, or it is new and its first request may still be on the way (a client
        that connected just before the stop has sent it, or is about to; closing would reset
        it). An idle keep-alive connection is finished: its client reopens elsewhere."""
        if self.current is not None and self.current.in_request:
            return True
        return self.answered == 0 and now - self.accepted_at < first_request_wait_s

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        # Tornado's loop (tornado/http1connection.py), with our _Connection.
        try:
            while True:
                conn = self.current = _Connection(self.stream, self.params, self.context, self.rejecter, self.closing)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (iostream.StreamClosedError, iostream.UnsatisfiableReadError, asyncio.CancelledError):
                    return
                except Exception:
                    log.error("uncaught exception on a connection", exc_info=True)
                    conn.close()
                    return
                self.answered += 1
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class FdExhaustion:
    """Counts accept failures for lack of descriptors; logs one line per FD_LOG_EVERY_S."""

    def __init__(self, every_s: float = FD_LOG_EVERY_S) -> None:
        self.every_s = every_s
        self.total = 0
        self.unlogged = 0
        self.logged_at = -1e9
        self.backoff = 0.0

    def failed(self, exc: OSError) -> float:
        """Note one failure; the back-off (seconds) before accepting again."""
        self.total += 1
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= self.every_s:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            log.error("out of file descriptors (%s, limit %s, %s open): pausing accept; %d failed accepts "
                      "since the last such line (%d in all); connections wait in the listen backlog",
                      errno.errorcode.get(exc.errno or 0, exc.errno), soft, _open_fds(), self.unlogged, self.total)
            self.logged_at = now
            self.unlogged = 0
        self.backoff = min(BACKOFF_MAX_S, self.backoff * 2) if self.backoff else BACKOFF_FIRST_S
        return self.backoff

    def accepted(self) -> None:
        if self.backoff:
            self.backoff = 0.0
            log.warning("accepting connections again (file descriptors available)")


def _open_fds() -> int | str:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return "?"


def add_accept_handler(sock: socket.socket, callback: Callable[[socket.socket, Any], None],
                       fds: FdExhaustion) -> Callable[[], None]:
    """tornado.netutil.add_accept_handler, with a back-off when descriptors run out."""
    io_loop = IOLoop.current()
    removed = False
    paused: Any = None

    def resume() -> None:
        nonlocal paused
        paused = None
        if not removed:
            io_loop.add_handler(sock, accept, IOLoop.READ)

    def accept(fd: Any, events: int) -> None:
        nonlocal paused
        for _ in range(128):  # as Tornado: bounded, so one busy socket cannot starve the loop
            if removed:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_FDS:
                    raise
                delay = fds.failed(exc)
                io_loop.remove_handler(sock)
                paused = io_loop.call_later(delay, resume)
                return
            fds.accepted()
            callback(connection, address)

    def remove() -> None:
        nonlocal removed
        if paused is not None:
            io_loop.remove_timeout(paused)
        else:
            io_loop.remove_handler(sock)
        removed = True

    io_loop.add_handler(sock, accept, IOLoop.READ)
    return remove


class Server(HTTPServer):
    """Tornado's HTTPServer with the connection and accept behaviour described above.

    ``reject`` builds the answer to a refused request (CallbackServer.rejection). The
    listening sockets and the open connections are kept here (``listening``,
    ``connections``) rather than in TCPServer's and HTTPServer's private fields, so that
    ``stop_accepting`` can take what the kernel has queued before closing them."""

    def initialize(self, *args: Any, reject: Rejecter, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.reject = reject
        self.fds = FdExhaustion()
        # fd -> (listening socket, the function that stops watching it)
        self.listening: dict[int, tuple[socket.socket, Callable[[], None]]] = {}
        self.connections: set[_ServerConnection] = set()
        self.closing = False  # set by stop_accepting: a graceful stop has begun

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            self.listening[sock.fileno()] = (sock, add_accept_handler(sock, self.accepted, self.fds))

    def accepted(self, connection: socket.socket, address: Any) -> None:
        """A connection accepted on a listening socket (TCPServer's, without TLS: this server has none)."""
        try:
            stream = _IOStream(connection, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
            stream.reject = self.reject
            stream.max_header_size = self.conn_params.max_header_size
            self.handle_stream(stream, address)
        except Exception:
            log.error("error in connection callback", exc_info=True)

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = _ServerConnection(stream, self.conn_params, context, self.reject, self.is_closing)
        self.connections.add(conn)
        conn.start_serving(self)

    def is_closing(self) -> bool:
        return self.closing

    def unfinished(self, first_request_wait_s: float) -> int:
        """Connections a graceful stop still waits for (``_ServerConnection.unfinished``)."""
        now = time.monotonic()
        return sum(1 for conn in self.connections if conn.unfinished(now, first_request_wait_s))

    def on_close(self, server_conn: object) -> None:
        self.connections.discard(server_conn)  # type: ignore[arg-type]

    async def close_all_connections(self) -> None:
        while self.connections:
            await next(iter(self.connections)).close()

    def stop(self) -> None:
        for sock, remove in self.listening.values():
            remove()
            sock.close()
        self.listening.clear()

    def refuse_new_handshakes(self) -> None:
        """The first step of a graceful stop: the listening sockets drop new SYNs (a socket
        filter) but keep accepting the handshakes already under way. Closing a listener
        resets the connections whose handshake it has answered but not yet finished, and
        their clients have connected already: they see their callback fail (the rolling
        restart test saw one or two per restart under load). A dropped SYN is sent again by
        the client after about a second and then reaches the new instance, or is refused.
        From now on every answer closes its connection."""
        self.closing = True
        for sock, _remove in self.listening.values():
            _drop_syns(sock)

    def stop_accepting(self) -> None:
        """Close the listening sockets after accepting what the kernel has queued on them:
        closing a socket resets the connections in its accept queue, which a client would see
        as a failed callback (its request may be sent already). From now on every answer
        closes its connection."""
        self.closing = True
        for sock, remove in self.listening.values():
            remove()  # no more accept callbacks from the loop
            while True:
                try:
                    connection, address = sock.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                self.accepted(connection, address)
            sock.close()
        self.listening.clear()
