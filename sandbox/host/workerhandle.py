"""The host's handle on one worker process: its start-up messages, its frames, its death.

``Worker`` owns the process (reaped through a pidfd, the template's report or polling) and
its socket (``Conn``, a BufferedProtocol decoding frames with ``sandbox.protocol``). It acts on
nothing a worker sends before checking the message's shape: a worker that floods, sends
out of turn or breaks framing is killed. What the pool does with a worker (calls, KV,
recycling) is in ``sandbox.host.pool``, ``kvrelay`` and ``recycling``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import protocol
from sandbox.api import bounded
from sandbox.host.forker import ForkedProc

if TYPE_CHECKING:
    from sandbox.host.pool import WorkerPool

log = logging.getLogger("scriptgate.sandbox")

STARTING, IDLE, BUSY, DEAD = "starting", "idle", "busy", "dead"
# What the host's record of one kept Redis key costs beyond its name (set entry, str object).
KEPT_OVERHEAD = 120
# Messages a worker may have sent ahead during a call before the host stops reading from it.
INBOX_PAUSE = 8


def worker_env() -> dict[str, str]:
    """The complete environment of a worker: nothing inherited from the host, where the
    admin token and Redis credentials live."""
    root = Path(__file__).resolve().parents[2]  # the directory holding the sandbox package
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONPATH": str(root),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",
    }


class Conn(asyncio.BufferedProtocol):
    """Reads frames from one worker and hands each message to it.

    A BufferedProtocol: the transport reads into our buffer (recv_into). A plain
    Protocol makes asyncio allocate a fresh 256 KiB bytes object per read, which costs
    more than the rest of a KV round trip (measured: 59 vs 31 us per ping-pong).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.decoder = protocol.FrameDecoder(protocol.MAX_FROM_WORKER)
        self.buffer = bytearray(protocol.RECV_CHUNK)
        self.view = memoryview(self.buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        worker = self.worker
        try:
            frames = self.decoder.feed(self.view[:nbytes])
        except protocol.ProtocolError as exc:
            worker.kill(f"protocol: {exc}")
            return
        for msg, body in frames:
            if worker.state == DEAD:
                return
            if body:
                worker.kill("protocol: unexpected frame body")
                return
            worker.on_message(msg)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.on_eof()


class Worker:
    """Host-side handle of one worker process."""

    def __init__(self, pool: WorkerPool, proc: subprocess.Popen | ForkedProc, pidfd: int | None) -> None:
        self.pool = pool
        self.proc = proc
        self.pid = proc.pid
        self.pidfd = pidfd
        self.loop = pool._loop
        self.transport: asyncio.Transport | None = None
        self.state = STARTING
        self.ready: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self.waiter: asyncio.Future[dict[str, Any] | None] | None = None
        # During a call (``open_inbox``): messages that came while the host was not waiting
        # for one, in order (a write not waited for is followed by the worker's next frame
        # at once); reading pauses at INBOX_PAUSE of them, so a flood stays in the socket.
        self.inbox: collections.deque[dict[str, Any]] | None = None
        self._paused = False
        self.calls = 0
        self.call_kv_ops = 0  # kv frames of its current call
        # Its own call limit, between half and all of the pool's: workers that started
        # together and share the load evenly would otherwise all be recycled at once (cheap
        # when forked from the template, ~5 ms; ~0.15-0.3 s of CPU each when started directly).
        self.call_limit = max(1, round(pool.max_calls_per_worker * (0.5 + 0.5 * pool._rng.random())))
        self.cpu = 0.0
        self.retire = False  # the worker said its state is unknown after its last call
        self.known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.killed_reason: str | None = None  # set when the host killed it
        # The call's task while it awaits the host's KV store: if the worker dies then,
        # the await is cancelled so the call ends now, not at its deadline.
        self.kv_task: asyncio.Task | None = None
        self.death_cancelled = False
        self.confine: dict[str, Any] = {}
        self.info: dict[str, Any] = {}  # the whole ready message (tests read "pre")
        # Kept KV answers (sandbox/worker/readcache.py): their scope and the Redis keys they hang on.
        self.scope: str | None = None
        self.kept: set[str] = set()
        self.kept_whole: dict[str, int] = {}  # Redis keys whose whole set it holds -> bytes
        self.kept_bytes = 0
        self.key: str | None = None  # the command whose call holds it (FairQueue accounting)
        self.kv_since = 0.0  # loop time its call started waiting on the KV store (0: not waiting)
        self.call_started = 0.0  # loop time its current call started (0: no call)
        self.lowered = False  # runs at the lower CPU priority for this call
        self._poll_handle: asyncio.TimerHandle | None = None
        if isinstance(proc, ForkedProc):
            proc.on_exit = self._reap  # the template reaps it and reports the status
            if proc.returncode is not None:  # it died before we got here
                self.loop.call_soon(self._reap)
        elif pidfd is not None:
            self.loop.add_reader(pidfd, self._reap)
        else:  # no pidfd (old kernel): poll for the exit
            self._poll_handle = self.loop.call_later(0.05, self._poll_exit)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.state != DEAD

    def _reap(self) -> None:
        rc = self.proc.poll()
        if rc is None:
            return  # spurious wake-up
        if self.pidfd is not None:
            if not isinstance(self.proc, ForkedProc):
                self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        if not self.exited.done():
            self.exited.set_result(rc)
        if self.state != DEAD:
            self._mark_dead(None)

    def _poll_exit(self) -> None:
        if self.proc.poll() is None:
            self._poll_handle = self.loop.call_later(0.05, self._poll_exit)
        else:
            self._reap()

    def _mark_dead(self, reason: str | None) -> None:
        was_ready = self.state != STARTING
        self.state = DEAD
        if reason is not None and self.killed_reason is None:
            self.killed_reason = reason
        if self.transport is not None:
            self.transport.abort()
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError(reason or "worker exited during startup"))
            self.ready.exception()  # retrieved here: start() may have given up already
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # None = gone; never an exception nobody retrieves
        if self.kv_task is not None and not self.kv_task.done():
            self.death_cancelled = True
            self.kv_task.cancel()
        self.pool._worker_gone(self, replace=was_ready)

    def kill(self, reason: str) -> None:
        """SIGKILL now (idempotent). The exit is reaped asynchronously by ``_reap``."""
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        elif self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                self.proc.kill()
        if self.state != DEAD:
            if not reason.startswith("recycle"):
                log.warning("sandbox worker %d killed: %s", self.pid, reason)
            self._mark_dead(reason)

    def on_eof(self) -> None:
        if self.state == DEAD:
            return
        # The worker closed its end: it is exiting (crash, limit) or misbehaving. Keep
        # the exit status for classification; kill it if it does not go away promptly.
        self._mark_dead(None)
        self.loop.call_later(0.5, self._kill_if_running)

    def _kill_if_running(self) -> None:
        if not self.exited.done():
            self.kill("closed its channel but kept running")

    # --- messages ----------------------------------------------------------------------

    def keep(self, rkey: str) -> None:
        """The worker may now keep answers read from Redis key ``rkey``."""
        if rkey not in self.kept:
            self.kept.add(rkey)
            self.kept_bytes += len(rkey) + KEPT_OVERHEAD

    def keep_whole(self, rkey: str, size: int) -> None:
        """...and the whole set at ``rkey`` (``size``: sandbox.kvops.whole_set_bytes)."""
        self.kept_whole[rkey] = size
        self.kept_bytes += size

    def drop_kept(self, rkey: str) -> bool:
        """The worker no longer holds answers for ``rkey``; False if it held none."""
        if rkey not in self.kept:
            return False
        self.kept.discard(rkey)
        self.kept_bytes -= len(rkey) + KEPT_OVERHEAD + self.kept_whole.pop(rkey, 0)
        return True

    def forget_kept(self) -> None:
        """The worker's kept KV answers are gone (it was told to drop them all)."""
        self.kept.clear()
        self.kept_whole.clear()
        self.kept_bytes = 0

    def expect(self) -> asyncio.Future[dict[str, Any] | None]:
        if self.state == DEAD:
            raise WorkerGone()
        fut = self.loop.create_future()
        inbox = self.inbox
        if inbox:
            fut.set_result(inbox.popleft())
            if self._paused and len(inbox) < INBOX_PAUSE and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
        else:
            self.waiter = fut
        return fut

    def open_inbox(self) -> None:
        self.inbox = collections.deque()

    def close_inbox(self) -> None:
        """End of the call: a message after this is unsolicited (the worker is killed)."""
        self.inbox = None
        if self._paused and self.transport is not None and self.state != DEAD:
            self._paused = False
            self.transport.resume_reading()

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def on_message(self, msg: dict[str, Any]) -> None:
        if self.state == STARTING:
            if msg["t"] == protocol.READY and type(msg.get("confine")) is dict and not self.ready.done():
                self.ready.set_result(msg)
            elif msg["t"] == protocol.FATAL:
                self.kill(f"startup failed: {bounded(str(msg.get('msg')), 300)}")
            else:
                self.kill("protocol: unexpected message during startup")
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            inbox = self.inbox
            if inbox is None:
                # Nobody asked: a message outside a call. Never buffered.
                self.kill(f"protocol: unsolicited {bounded(msg['t'], 20)!r} message")
                return
            inbox.append(msg)
            if len(inbox) >= INBOX_PAUSE and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            return
        self.waiter = None
        waiter.set_result(msg)

    async def wait_exit(self, until: float) -> int | None:
        if not self.exited.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(max(until, self.loop.time() + 0.01)):
                    await asyncio.shield(self.exited)
        return self.exited.result() if self.exited.done() else None


class WorkerStartError(RuntimeError):
    """A worker process could not be started or did not become ready in time."""


class WorkerGone(Exception):
    """The worker died or was killed while a call was waiting on it."""
