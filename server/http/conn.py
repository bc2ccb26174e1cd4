"""The listening side of the HTTP server: accepting connections (each then speaks HTTP/1.1
through ``server.http.h1.Connection``), out-of-descriptor back-off, idle sweeps and the
graceful stop.

Out of file descriptors (EMFILE/ENFILE at ``accept``), the accept handler stops watching the
listening socket for a back-off (50 ms doubling to 1 s, reset by the next accepted
connection), logs one line per ``FD_LOG_EVERY_S`` with the count, and resumes by itself:
connections wait in the kernel's backlog until descriptors are free again.
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

from tornado import httputil

from server.http.h1 import MAX_HEADER_SIZE, Connection, Rejecter

log = logging.getLogger("scriptgate.http")

OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
FD_LOG_EVERY_S = 10.0
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
SWEEP_EVERY_S = 1.0


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
    """Accept connections on ``sock`` as the loop reports them, with a back-off when
    descriptors run out; returns the function that stops watching it."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    removed = False
    paused: asyncio.TimerHandle | None = None

    def resume() -> None:
        nonlocal paused
        paused = None
        if not removed:
            loop.add_reader(fd, accept)

    def accept() -> None:
        nonlocal paused
        for _ in range(128):  # bounded, so one busy socket cannot starve the loop
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
                loop.remove_reader(fd)
                paused = loop.call_later(delay, resume)
                return
            fds.accepted()
            callback(connection, address)

    def remove() -> None:
        nonlocal removed
        if paused is not None:
            paused.cancel()
        else:
            loop.remove_reader(fd)
        removed = True

    loop.add_reader(fd, accept)
    return remove


class Server:
    """The listening sockets, the open connections and what they share.

    ``delegate`` gets every request (``start_request``) and every closed connection
    (``on_close``); ``reject`` builds the answer to a request this layer refuses
    (CallbackServer.rejection)."""

    def __init__(self, delegate: httputil.HTTPServerConnectionDelegate, *, reject: Rejecter,
                 xheaders: bool = False, trusted_downstream: list[str] | None = None,
                 max_body_size: int = 100 * 1024 * 1024, max_header_size: int = MAX_HEADER_SIZE,
                 idle_connection_timeout: float = 3600.0, body_timeout: float | None = None) -> None:
        self.delegate = delegate
        self.reject = reject
        self.xheaders = xheaders
        self.trusted_downstream = frozenset(trusted_downstream or ())
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.idle_timeout = idle_connection_timeout
        self.body_timeout = body_timeout
        self.fds = FdExhaustion()
        # fd -> (listening socket, the function that stops watching it)
        self.listening: dict[int, tuple[socket.socket, Callable[[], None]]] = {}
        self.connections: set[Connection] = set()
        self.closing = False  # set by refuse_new_handshakes: a graceful stop has begun
        self._starting: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._written: asyncio.Future[None] | None = None

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            sock.setblocking(False)
            self.listening[sock.fileno()] = (sock, add_accept_handler(sock, self.accepted, self.fds))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_EVERY_S, self.sweep)

    def accepted(self, sock: socket.socket, address: Any) -> None:
        """A connection accepted on a listening socket (plain TCP: this server has no TLS)."""
        try:
            sock.setblocking(False)
            conn = Connection(self, address, sock.family)
            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.connect_accepted_socket(lambda: conn, sock))
        except Exception:
            log.error("error setting up an accepted connection", exc_info=True)
            sock.close()
            return
        self._starting.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[Any]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("an accepted connection could not be set up: %s", task.exception())

    def written(self) -> asyncio.Future[None]:
        """The done future a write returns when the transport took it all (shared: awaiting
        a done future is free, creating one per write is not)."""
        fut = self._written
        if fut is None:
            fut = self._written = asyncio.get_running_loop().create_future()
            fut.set_result(None)
        return fut

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        try:
            self.delegate.on_close(conn)
        except Exception:
            log.error("error in the delegate's on_close", exc_info=True)

    def sweep(self) -> None:
        """Close connections idle longer than idle_connection_timeout (no request begun, or
        headers that never complete); re-arms itself while the server listens."""
        now = time.monotonic()
        limit = self.idle_timeout
        for conn in list(self.connections):
            since = conn.idle_since
            if since is not None and now - since > limit and conn.transport is not None:
                conn.stopped = True
                conn.transport.close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_EVERY_S, self.sweep) if self.listening or self.connections else None

    def unfinished(self, first_request_wait_s: float) -> int:
        """Connections a graceful stop still waits for (``Connection.unfinished``)."""
        now = time.monotonic()
        return sum(1 for conn in self.connections if conn.unfinished(now, first_request_wait_s))

    async def close_all_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        while self.connections:  # connection_lost runs on the loop's next turns
            await asyncio.sleep(0)

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
