"""Asyncio pool of pre-started sandbox worker processes (``sandbox.worker.main``).

Scripts never run in the host process. Each call is sent to an idle worker over its own
socketpair (``sandbox.protocol``); KV operations come back to the host, which owns the
store, as ``kv`` frames that it re-validates and answers. The host always answers on time:

* waiting for a free worker counts against the caller's ``deadline``;
* a call that has not finished by ``min(deadline, start + wall budget + grace)`` gets its
  worker SIGKILLed (reaped and replaced in the background) and a ``budget`` error;
* a worker that dies by itself (address-space limit, SIGXCPU, segfault) fails only the
  call it was running, and is replaced;
* a worker that breaks the protocol (oversized or malformed frames, messages it was not
  asked for, more KV operations than the budget) is killed on the spot. Workers are
  untrusted: nothing they send is acted on before its shape is checked.

Workers are recycled (killed quietly and replaced) after ``max_calls_per_worker`` calls
(each worker after its own share of 50-100% of it, so recycles do not coincide)
and after any call that ended in a budget, policy or invalid-result error, so a call that
misbehaved never shares a process with a later one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sandbox import kvops, protocol
from sandbox.api import (
    ALLOW,
    BUDGET,
    DENY,
    ERROR,
    ERROR_KINDS,
    INVALID_RESULT,
    MODIFY,
    POLICY,
    UNAVAILABLE,
    Budgets,
    CompileIssue,
    KVRefused,
    KVUnavailable,
    RunResult,
    ScriptError,
    bounded,
)
from sandbox.host.fairness import BoxSettings, FairQueue, PenaltyBox
from sandbox.host.forker import ForkedProc, Forker, ForkError

log = logging.getLogger("scriptgate.sandbox")

KVCall = Callable[[str, list], Awaitable[Any]]
# A KVCall may also offer answers workers can keep (see sandbox/worker/readcache.py), through:
#   scope: str                  store + namespace the answers belong to
#   ready() -> bool             apply pending invalidations now; False = keep nothing this call
#   peek(op, args) -> (value, redis_key) | None   synchronous cache hit that the store will
#                               invalidate through WorkerPool.invalidate(redis_key)
_MAX_KEPT = 50_000  # Redis keys a worker may hold answers for (bounds the host's record)
# ... and their bytes (key length + set overhead), so long key names cannot make the host's
# record of them ~35 MB per worker.
_MAX_KEPT_BYTES = 4 * 1024 * 1024
_KEPT_OVERHEAD = 120
_INV_ALL = protocol.encode({"t": protocol.INV, "all": True})

_STARTING, _IDLE, _BUSY, _DEAD = "starting", "idle", "busy", "dead"
_VERDICTS = (ALLOW, MODIFY, DENY, ERROR)
_MAX_ISSUES = 100
_MAX_LOG_LINES = 10_000
# A worker that reports this much CPU used is replaced before its hard RLIMIT_CPU
# (protocol.LIFETIME_CPU_S) could cut a legitimate call short.
_CPU_RECYCLE_S = protocol.LIFETIME_CPU_S / 2


# Callers that name no command (tests, tools) share one key; admin checks have their own.
_ANON, _ADMIN = "", "\x00admin"
_SURPLUS = "recycle: surplus worker after a KV stall"


class _Waiter:
    """A caller queued for a worker (``FairQueue`` item)."""

    __slots__ = ("deadline", "fut", "refusal", "sha")

    def __init__(self, fut: asyncio.Future[_Worker | None], sha: str, deadline: float) -> None:
        self.fut = fut
        self.sha = sha
        self.deadline = deadline
        self.refusal: str | None = None  # set with a None result: why it gets no worker

    def done(self) -> bool:
        return self.fut.done()


class WorkerStartError(RuntimeError):
    """A worker process could not be started or did not become ready in time."""


class _WorkerGone(Exception):
    """The worker died or was killed while a call was waiting on it."""


class _Violation(Exception):
    """The worker broke the protocol; ``result`` is what the call returns."""

    def __init__(self, reason: str, result: RunResult | None = None) -> None:
        super().__init__(reason)
        self.result = result or RunResult.failed(INVALID_RESULT, "sandbox worker sent a malformed message")


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


class _Conn(asyncio.BufferedProtocol):
    """Reads frames from one worker and hands each message to it.

    A BufferedProtocol: the transport reads into our buffer (recv_into). A plain
    Protocol makes asyncio allocate a fresh 256 KiB bytes object per read, which costs
    more than the rest of a KV round trip (measured: 59 vs 31 us per ping-pong).
    """

    def __init__(self, worker: _Worker) -> None:
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
            if worker.state == _DEAD:
                return
            if body:
                worker.kill("protocol: unexpected frame body")
                return
            worker.on_message(msg)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.on_eof()


class _Worker:
    """Host-side handle of one worker process."""

    def __init__(self, pool: WorkerPool, proc: subprocess.Popen | ForkedProc, pidfd: int | None) -> None:
        self.pool = pool
        self.proc = proc
        self.pid = proc.pid
        self.pidfd = pidfd
        self.loop = pool._loop
        self.transport: asyncio.Transport | None = None
        self.state = _STARTING
        self.ready: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self.waiter: asyncio.Future[dict[str, Any] | None] | None = None
        self.calls = 0
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
        return self.state != _DEAD

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
        if self.state != _DEAD:
            self._mark_dead(None)

    def _poll_exit(self) -> None:
        if self.proc.poll() is None:
            self._poll_handle = self.loop.call_later(0.05, self._poll_exit)
        else:
            self._reap()

    def _mark_dead(self, reason: str | None) -> None:
        was_ready = self.state != _STARTING
        self.state = _DEAD
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
        if self.state != _DEAD:
            if not reason.startswith("recycle"):
                log.warning("sandbox worker %d killed: %s", self.pid, reason)
            self._mark_dead(reason)

    def on_eof(self) -> None:
        if self.state == _DEAD:
            return
        # The worker closed its end: it is exiting (crash, limit) or misbehaving. Keep
        # the exit status for classification; kill it if it does not go away promptly.
        self._mark_dead(None)
        self.loop.call_later(0.5, self._kill_if_running)

    def _kill_if_running(self) -> None:
        if not self.exited.done():
            self.kill("closed its channel but kept running")

    # --- messages ----------------------------------------------------------------------

    def expect(self) -> asyncio.Future[dict[str, Any] | None]:
        if self.state == _DEAD:
            raise _WorkerGone()
        fut = self.loop.create_future()
        self.waiter = fut
        return fut

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def on_message(self, msg: dict[str, Any]) -> None:
        if self.state == _STARTING:
            if msg["t"] == protocol.READY and type(msg.get("confine")) is dict and not self.ready.done():
                self.ready.set_result(msg)
            elif msg["t"] == protocol.FATAL:
                self.kill(f"startup failed: {bounded(str(msg.get('msg')), 300)}")
            else:
                self.kill("protocol: unexpected message during startup")
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Nobody asked: a flood, or a message outside a call. Never buffered.
            self.kill(f"protocol: unsolicited {bounded(msg['t'], 20)!r} message")
            return
        self.waiter = None
        waiter.set_result(msg)

    async def wait_exit(self, until: float) -> int | None:
        if not self.exited.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(max(until, self.loop.time() + 0.01)):
                    await asyncio.shield(self.exited)
        return self.exited.result() if self.exited.done() else None


class WorkerPool:
    """Pre-started sandbox workers; see the module docstring for the guarantees.

    Sharing between commands (``run(key=command)``; ``sandbox/host/fairness.py``):

    * Each command has its own FIFO queue and holds at most ``share`` workers at once
      (default ``size - 1``, at least 1). A command whose calls all burn their wall budget
      (``while True: pass``) fills only its own share and queue: every other command
      still finds a free worker, at once when it is the only other one busy. A free
      worker goes to the waiting command holding the fewest workers (max-min fairness),
      so several saturating commands split the pool evenly and a quiet one is served
      next. The queue limit (``max_queue``) is per command, so a flood overflows
      ("sandbox overloaded") only the command that floods. Once commands of two KV
      namespaces have called, a namespace (a team) too holds at most ``share`` workers
      and free workers go to the namespace holding fewest first.
    * The penalty box refuses, without taking a worker, the calls of a command that
      keeps hitting its budgets (3 of its last 10 calls by default): for 1 s, then 2, 4
      ... 60 s, one probation call at a time when the box opens. The refusal is a
      ``budget`` error, so the dispatcher answers with the command's failure policy. A
      command with a recent budget hit also runs at a lower CPU priority (when the host
      may restore it: root), so its spins do not slow other commands' workers on a host
      with fewer CPUs than workers.
    * A call waiting on the KV store keeps its worker (the script's state lives there:
      the worker cannot be handed to someone else mid-call). Instead, when callers are
      queued and some calls have been waiting on the store for more than ``kv_stall_ms``,
      the pool starts one extra worker per stalled call (at most ``kv_extra``, default
      ``size``): the stalled calls use no CPU, so extra processes cost memory, not CPU,
      and commands that make no KV calls keep running while Redis is slow. Extra workers
      are stopped as they come free once the stall is over. A stall of a single command
      is contained by its share already; the extras cover several stalled commands.
    """

    def __init__(
        self,
        size: int = 4,
        memory_mb: int = 512,
        max_calls_per_worker: int = 10_000,
        *,
        max_queue: int | None = None,
        grace_ms: int = 100,
        start_timeout: float = 15.0,
        script_cache: int = protocol.SCRIPT_CACHE_SIZE,
        worker_stderr: bool = False,
        spin_us: int = 0,
        recycles_per_s: float | None = None,
        test_hooks: bool = False,
        worker_cmd: list[str] | None = None,
        fork_template: bool = True,
        share: int | None = None,
        box: BoxSettings | None = None,
        kv_extra: int | None = None,
        kv_stall_ms: int = 50,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.memory_mb = memory_mb
        self.max_calls_per_worker = max_calls_per_worker
        self._rng = random.Random()
        self._base_nice: int | None = os.getpriority(os.PRIO_PROCESS, 0) if os.geteuid() == 0 else None
        self.max_queue = max_queue if max_queue is not None else max(64, 64 * size)
        self.grace = grace_ms / 1000
        self.start_timeout = start_timeout
        self.script_cache = script_cache
        self._stderr = None if worker_stderr else subprocess.DEVNULL
        self._test_hooks = test_hooks
        self.spin_us = spin_us  # see protocol.BlockingChannel; 0 suits busy or shared hosts
        # Recycling after every failed call must not become a fork bomb when one broken
        # script fails on every callback: at most this many error-triggered recycles per
        # second (token bucket, burst = size); beyond it the worker is reused, which the
        # runtime's clean stops allow. Deaths and wall-time kills are never rate limited.
        self.recycles_per_s = recycles_per_s if recycles_per_s is not None else float(size)
        self._recycle_tokens = float(size)
        self._recycle_stamp = 0.0
        self.recycle_skipped = 0
        self._worker_cmd = worker_cmd  # tests: a fake (hostile) worker
        # Workers are forked from a warmed-up template process (sandbox/worker/template.py) when
        # it is up: ~1 ms instead of ~0.2 s of CPU per start, so recycles do not stall
        # live callbacks. Without it (not started, dead, a fake worker) they start directly.
        self._use_template = fork_template and worker_cmd is None and hasattr(os, "pidfd_open")
        self._forker: Forker | None = None
        self._template_failures = 0
        self.template_starts = 0
        self._env = worker_env()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        # Fair shares (see the class docstring): at most `share` workers per command.
        self.share = share if share is not None else max(1, size - 1)
        self._fair: FairQueue[_Waiter] = FairQueue(self.share)
        self.box = PenaltyBox(box or BoxSettings())
        # Workers started beyond `size` while calls wait on a stalled KV store.
        self.kv_extra = kv_extra if kv_extra is not None else size
        self.kv_stall = kv_stall_ms / 1000
        self._kv_waiting = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._pending = 0  # replacement or extra workers scheduled but not yet in _workers
        self.demote_after = 0.05
        self.demote_nice = 19  # the lowest priority: a spin gets only otherwise idle CPU
        # A queued call whose deadline is closer than this gets no worker (see _dispatch).
        self.min_start = 0.02
        self._demote_timer: asyncio.TimerHandle | None = None
        self.demoted = 0
        self.extra_spawned = self.extra_stopped = 0
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)
        self._budget_wire: dict[Budgets, dict[str, int]] = {}
        self._started = False
        self._closing = False
        self._spawn_failures = 0
        self.spawned = self.killed = self.recycled = self.calls = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start ``size`` workers concurrently; return when all are ready."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        if self._use_template:
            await self._start_template()
        results = await asyncio.gather(*(self._spawn() for _ in range(self.size)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise WorkerStartError(f"{len(errors)} of {self.size} sandbox workers failed to start: {errors[0]}")

    async def close(self) -> None:
        self._closing = True
        for timer in (self._stall_timer, self._demote_timer):
            if timer is not None:
                timer.cancel()
        for waiter in self._fair.drain():
            if not waiter.fut.done():
                waiter.fut.cancel()
        for task in list(self._tasks):
            task.cancel()
        workers = list(self._workers)
        for w in workers:
            w.kill("recycle: pool closed")
        exits = [w.exited for w in workers if not w.exited.done()]
        if exits:
            await asyncio.wait(exits, timeout=5)
        if self._forker is not None:
            self._forker.close()
            self._forker = None

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _command(self, fd: int) -> list[str]:
        tail = ["--fd", str(fd), "--memory-mb", str(self.memory_mb), "--parent", str(os.getpid())]
        if self.spin_us:
            tail += ["--spin-us", str(self.spin_us)]
        if self._test_hooks:
            tail.append("--test-hooks")
        if self._worker_cmd is not None:
            return [*self._worker_cmd, *tail]
        # -P: no script dir on sys.path, -s: no user site, -B: never write .pyc
        return [sys.executable, "-P", "-s", "-B", "-m", "sandbox.worker", *tail]

    def _set_priority(self, pid: int, starting: bool, by: int = 10) -> None:
        """A starting worker (confinement; without the template also imports and warm-up:
        ~0.3 s of CPU) runs at a lower CPU priority, so a recycle or a replacement takes idle
        CPU instead of stalling live callbacks.
        Only with the privilege to restore the priority once it is ready (root)."""
        if self._base_nice is None:
            return
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, min(19, self._base_nice + by) if starting else self._base_nice)

    def _popen_args(self) -> dict[str, Any]:
        return {
            "env": self._env,
            "cwd": "/",
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.DEVNULL,
            "stderr": self._stderr,
            "start_new_session": True,  # the host's terminal signals are not the worker's
        }

    async def _start_template(self) -> None:
        forker = Forker(self._loop, self._template_died)
        cmd = [*self._command(-1), "--template"]
        try:
            await forker.start(cmd, cmd.index("--fd") + 1, self.start_timeout, **self._popen_args())
        except (OSError, ForkError, TimeoutError) as exc:
            self._template_failures += 1
            log.warning("sandbox template process did not start (%s); starting workers directly", exc)
            return
        self._template_failures = 0
        self.template_starts += 1
        if self._closing:
            forker.close()
            return
        self._forker = forker

    def _template_died(self) -> None:
        self._forker = None
        if self._closing:
            return
        task = self._loop.create_task(self._restart_template())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart_template(self) -> None:
        # Back off while it keeps failing; workers start directly meanwhile.
        await asyncio.sleep(min(30.0, 0.5 * 2 ** min(self._template_failures, 6)))
        if not self._closing and self._forker is None:
            await self._start_template()
            if self._forker is None and not self._closing:
                self._template_died()

    async def _spawn(self, on_added: Callable[[], None] | None = None) -> _Worker:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc: subprocess.Popen | ForkedProc | None = None
            if self._forker is not None:
                try:
                    proc = await self._forker.fork(child_sock)
                except ForkError as exc:
                    log.warning("sandbox template could not fork a worker (%s); starting it directly", exc)
            if proc is None:
                proc = subprocess.Popen(
                    self._command(child_sock.fileno()), pass_fds=(child_sock.fileno(),), close_fds=True,
                    **self._popen_args(),
                )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self._set_priority(proc.pid, starting=True)
        try:
            pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        worker = _Worker(self, proc, pidfd)
        self._workers.add(worker)
        if on_added is not None:
            on_added()
        self.spawned += 1
        try:
            parent_sock.setblocking(False)
            await self._loop.create_unix_connection(lambda: _Conn(worker), sock=parent_sock)
            async with asyncio.timeout(self.start_timeout):
                ready = await worker.ready
        except BaseException as exc:
            worker.kill(f"startup failed: {exc!r}")
            if isinstance(exc, (Exception, TimeoutError)):
                raise WorkerStartError(f"sandbox worker did not start: {worker.killed_reason}") from None
            raise
        self._set_priority(proc.pid, starting=False)
        worker.confine = ready["confine"]
        worker.info = ready
        for warning in worker.confine.get("warnings") or []:
            log.warning("sandbox worker %d: %s", worker.pid, warning)
        if self._closing:
            worker.kill("recycle: pool closed")
            raise WorkerStartError("pool closed")
        worker.state = _BUSY
        self._release(worker)
        return worker

    def _worker_gone(self, worker: _Worker, replace: bool) -> None:
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        reason = worker.killed_reason or ""
        if reason.startswith(_SURPLUS):
            self.extra_stopped += 1
        elif reason.startswith("recycle"):
            if not self._closing:
                self.recycled += 1
        else:
            self.killed += 1
        # A worker that never became ready is retried by whoever spawned it (_replace);
        # replacing it here too would multiply spawns while something is broken. An extra
        # worker (KV stall) is not replaced: the pool shrinks back to `size`.
        if replace and not self._closing and len(self._workers) + self._pending < self.size:
            self._schedule_spawn()
        else:
            self._dispatch()  # its holder's key may be below its share again

    def _schedule_spawn(self, extra: bool = False) -> None:
        self._pending += 1
        task = self._loop.create_task(self._replace(extra))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, extra: bool = False) -> None:
        # Back off while spawning keeps failing (broken install, fork limits) instead of
        # burning CPU in a tight respawn loop; callers meanwhile wait or time out.
        added = False

        def on_added() -> None:
            nonlocal added
            added = True
            self._pending -= 1

        try:
            if self._spawn_failures:
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self._spawn_failures, 6)))
            await self._spawn(on_added)
            self._spawn_failures = 0
            if extra:
                self.extra_spawned += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._spawn_failures += 1
            log.error("could not start a replacement sandbox worker: %s", exc)
            if not self._closing and not extra:
                self._schedule_spawn()
        finally:
            if not added:
                self._pending -= 1

    # --- handing out workers -----------------------------------------------------------

    def _release(self, worker: _Worker) -> None:
        if worker.state == _DEAD:
            return
        worker.state = _IDLE
        worker.key = None
        self._idle.append(worker)
        self._dispatch()
        if worker.state == _IDLE and len(self._workers) > self.size + self._kv_waiting:
            # An extra worker started for a KV stall that is over: shrink back.
            worker.kill(_SURPLUS)

    def _dispatch(self) -> None:
        """Hand idle workers to waiters, fairest first (``FairQueue.next_waiter``).

        A waiter whose command was boxed while it queued, or whose deadline is too close
        for a call to be worth starting (``min_start``), gets no worker: it would only be
        killed at its deadline, and a killed worker must be replaced before anyone else
        can use it."""
        now = self._loop.time() if self._idle else 0.0
        while self._idle:
            nxt = self._fair.next_waiter()
            if nxt is None:
                return
            key, waiter = nxt
            refusal = self.box.closed(key)
            if refusal is None and waiter.deadline - now < self.min_start:
                refusal = "budget exceeded: wall time (no sandbox worker was free before the deadline)"
            if refusal is not None:
                waiter.refusal = refusal
                waiter.fut.set_result(None)
                continue
            worker = self._take_idle(waiter.sha)
            assert worker is not None
            self._fair.hold(key)
            worker.key = key
            waiter.fut.set_result(worker)

    def _take_idle(self, sha: str) -> _Worker | None:
        idle = self._idle
        if not idle:
            return None
        # Prefer a worker that already compiled this script; else the most recent one.
        for i in range(len(idle) - 1, -1, -1):
            if sha in idle[i].known:
                worker = idle.pop(i)
                break
        else:
            worker = idle.pop()
        worker.state = _BUSY
        return worker

    def _unhold(self, worker: _Worker, key: str) -> None:
        """The call of ``key`` is over with ``worker`` (which may be dead already)."""
        if worker.key == key:
            worker.key = None
        self._fair.unhold(key)

    def _reclaim(self, fut: asyncio.Future[_Worker | None], key: str) -> None:
        # The waiter gave up (deadline or cancellation); if a worker was handed to it in
        # the meantime, give that worker to the next caller.
        if fut.done():
            if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                worker = fut.result()
                assert worker is not None
                self._unhold(worker, key)
                self._release(worker)
        else:
            fut.cancel()

    async def _acquire(self, sha: str, deadline: float, key: str = _ANON,
                       group: str | None = None) -> _Worker | RunResult:
        """A worker for one call of ``key``, held (``FairQueue``) until ``_unhold``."""
        if self._closing or not self._started:
            return RunResult.failed(UNAVAILABLE, "sandbox is not running")
        fair = self._fair
        fair.set_group(key, group)
        if fair.may_take(key):
            worker = self._take_idle(sha)
            if worker is not None:
                fair.hold(key)
                worker.key = key
                return worker
        # Bounded per command: a flooded command overflows its own queue only.
        if fair.queued(key) >= self.max_queue:
            return RunResult.failed(BUDGET, "sandbox overloaded")
        fut: asyncio.Future[_Worker | None] = self._loop.create_future()
        waiter = _Waiter(fut, sha, deadline)
        fair.push(key, waiter)
        self._watch_stalls()
        try:
            async with asyncio.timeout_at(deadline):
                got = await fut
            if got is None:
                return RunResult.failed(BUDGET, waiter.refusal or "sandbox unavailable")
            return got
        except TimeoutError:
            self._reclaim(fut, key)
            return RunResult.failed(BUDGET, "budget exceeded: wall time (no sandbox worker was free before the deadline)")
        except asyncio.CancelledError:
            self._reclaim(fut, key)
            if self._closing and fut.cancelled():
                return RunResult.failed(UNAVAILABLE, "sandbox is shutting down")
            raise

    def _demote_tick(self) -> None:
        """Lower the CPU priority of calls running longer than ``demote_after`` (callbacks
        take a few ms; a call still running after 50 ms is a spin or a heavy script), so on
        a host with fewer CPUs than workers they do not slow the short calls of others.
        Runs while calls are out; one timer for the pool, not one per call."""
        self._demote_timer = None
        if self._closing:
            return
        now = self._loop.time()
        running = False
        for w in self._workers:
            if w.call_started and w.state == _BUSY:
                running = True
                if not w.lowered and now - w.call_started >= self.demote_after:
                    w.lowered = True
                    self.demoted += 1
                    self._set_priority(w.pid, starting=True, by=self.demote_nice)
        if running:
            self._demote_timer = self._loop.call_later(self.demote_after, self._demote_tick)

    # --- KV stalls ---------------------------------------------------------------------

    def _watch_stalls(self) -> None:
        if self._stall_timer is None and self.kv_extra > 0 and not self._closing:
            self._stall_timer = self._loop.call_later(self.kv_stall, self._check_stalls)

    def _check_stalls(self) -> None:
        """Callers are queued: start an extra worker for each call that has been waiting
        on the KV store longer than ``kv_stall`` (up to ``kv_extra``), so calls that make
        no KV calls are not held up by a slow store."""
        self._stall_timer = None
        if self._closing or not self._fair.has_eligible():
            return
        now = self._loop.time()
        stalled = sum(1 for w in self._workers if w.kv_since and now - w.kv_since >= self.kv_stall)
        want = self.size + min(stalled, self.kv_extra)
        for _ in range(want - len(self._workers) - self._pending):
            self._schedule_spawn(extra=True)
        self._watch_stalls()

    def _finish(self, worker: _Worker, result: RunResult | None) -> None:
        """Return a worker after a call, or retire it."""
        if worker.state == _DEAD:
            return
        error = result.error if result is not None else None
        if worker.retire:
            worker.kill("recycle: a KV operation was interrupted (stack or memory limit)")
        elif error is not None and error.kind in (BUDGET, POLICY, INVALID_RESULT) and self._recycle_token():
            worker.kill(f"recycle: after a {error.kind} error")
        elif worker.calls >= worker.call_limit:
            worker.kill("recycle: call limit reached")
        elif worker.cpu >= _CPU_RECYCLE_S:
            worker.kill("recycle: CPU time limit approaching")
        else:
            self._release(worker)

    def _recycle_token(self) -> bool:
        now = self._loop.time()
        burst = float(self.size)
        self._recycle_tokens = min(burst, self._recycle_tokens + (now - self._recycle_stamp) * self.recycles_per_s)
        self._recycle_stamp = now
        if self._recycle_tokens >= 1.0:
            self._recycle_tokens -= 1.0
            return True
        self.recycle_skipped += 1
        return False

    def busy(self) -> bool:
        """A call is out to a worker (the host loop may poll briefly: sandbox/host/spin.py)."""
        return any(w.state == _BUSY for w in self._workers)

    # --- kept KV answers ------------------------------------------------------------------

    def invalidate(self, key: str | None) -> None:
        """The store saw ``key`` change (None: everything). Tell every worker keeping an
        answer for it; the frame goes out before anything else sent to that worker."""
        for worker in self._workers:
            if not worker.kept or worker.state == _DEAD or worker.transport is None:
                continue
            if key is None:
                worker.kept.clear()
                worker.kept_bytes = 0
                worker.send(_INV_ALL)
            elif key in worker.kept:
                worker.kept.discard(key)
                worker.kept_bytes -= len(key) + _KEPT_OVERHEAD
                worker.send(protocol.encode({"t": protocol.INV, "k": [key]}))

    def _keep_scope(self, worker: _Worker, kv: Any) -> str | None:
        """The scope whose kept answers this call may use, or None (checked per call)."""
        ready = getattr(kv, "ready", None)
        if ready is None or not ready():  # ready() applies pending invalidations first
            return None
        scope = kv.scope
        if worker.scope != scope:
            worker.kept.clear()  # the worker empties its cache when it sees a new scope
            worker.kept_bytes = 0
            worker.scope = scope
        return scope

    # --- calls -------------------------------------------------------------------------

    async def run(
        self,
        *,
        source: str,
        sha256: str,
        payload_json: bytes,
        budgets: Budgets,
        kv: KVCall,
        deadline: float,
        key: str = _ANON,
        group: str | None = None,
    ) -> RunResult:
        """Run ``handle(payload)`` of ``source`` in a worker; always returns by ``deadline``.

        ``key`` names the caller's command: it gets its own queue and share of the
        workers, and its own place in the penalty box; ``group`` its KV namespace, whose
        commands share a namespace's share (see the class docstring)."""
        refused = self.box.admit(key)
        if refused is not None:
            return RunResult.failed(BUDGET, refused)
        while True:
            acquired = await self._acquire(sha256, deadline, key, group)
            if isinstance(acquired, RunResult):
                self.box.cancel(key)
                return acquired
            if acquired.alive:
                break
            self._unhold(acquired, key)
        worker = acquired
        try:
            result = await self._call(worker, key, source, sha256, payload_json, budgets, kv, deadline)
        except BaseException:
            self._unhold(worker, key)
            self._dispatch()
            self.box.cancel(key)
            raise
        return result

    async def _call(self, worker: _Worker, key: str, source: str, sha256: str, payload_json: bytes,
                    budgets: Budgets, kv: KVCall, deadline: float) -> RunResult:
        loop = self._loop
        # A command that hit its budgets lately runs at a lower CPU priority from the start,
        # any other call once it has run for `demote_after` (see _demote_tick), so long calls
        # take CPU from nobody's short calls (needs the privilege to restore it: root).
        worker.lowered = self._base_nice is not None and self.box.suspect(key)
        if worker.lowered:
            self._set_priority(worker.pid, starting=True, by=self.demote_nice)
        start = loop.time()
        worker.call_started = start
        if self._base_nice is not None and self._demote_timer is None:
            self._demote_timer = loop.call_later(self.demote_after, self._demote_tick)
        wall_limit = start + budgets.wall_ms / 1000 + self.grace
        limit = min(deadline, wall_limit)
        call_id = next(self._ids)
        head: dict[str, Any] = {"t": protocol.RUN, "id": call_id, "sha": sha256, "b": self._wire(budgets)}
        if sha256 not in worker.known:
            head["src"] = source
        scope = self._keep_scope(worker, kv)
        if scope is not None:
            head["cs"] = scope
        worker.calls += 1
        self.calls += 1
        kv_ops = 0
        result: RunResult | None = None
        cut = False
        try:
            async with asyncio.timeout_at(limit):
                fut = worker.expect()
                worker.send(protocol.encode(head, payload_json))
                while True:
                    msg = await fut
                    if msg is None:
                        raise _WorkerGone()
                    kind = msg["t"]
                    if msg.get("id") != call_id:
                        raise _Violation("message for another call")
                    if kind == protocol.DONE:
                        result = self._parse_done(worker, msg, sha256)
                        break
                    if kind == protocol.KV:
                        kv_ops += 1
                        if kv_ops > budgets.kv_ops:
                            raise _Violation(
                                "kv flood",
                                RunResult.failed(BUDGET, f"budget exceeded: kv operations (limit {budgets.kv_ops})"),
                            )
                        worker.kv_task = asyncio.current_task()
                        worker.kv_since = loop.time()
                        self._kv_waiting += 1
                        try:
                            reply = await self._kv_reply(msg, call_id, budgets, kv,
                                                         worker if scope is not None else None)
                        finally:
                            worker.kv_task = None
                            worker.kv_since = 0.0
                            self._kv_waiting -= 1
                        fut = worker.expect()
                        worker.send(reply)
                    elif kind == protocol.NEED and "src" not in head:
                        head["src"] = source
                        fut = worker.expect()
                        worker.send(protocol.encode(head, payload_json))
                    else:
                        raise _Violation(f"unexpected {bounded(kind, 20)!r} message during a call")
        except TimeoutError:
            worker.kill("call exceeded its time limit")
            if limit == wall_limit:
                result = RunResult.failed(BUDGET, f"budget exceeded: wall time (limit {budgets.wall_ms} ms)")
            else:
                # Cut by the request's deadline after time spent queued: the script's fault
                # only if it had run for half its wall budget by then.
                cut = loop.time() - start < budgets.wall_ms / 2000
                result = RunResult.failed(BUDGET, "budget exceeded: wall time (request deadline reached)")
        except _WorkerGone:
            result = await self._death_result(worker, budgets, limit)
        except _Violation as exc:
            worker.kill(f"protocol: {exc}")
            result = exc.result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if worker.death_cancelled and task is not None and task.uncancel() == 0:
                # Only our own cancellation (the worker died during a KV await).
                result = await self._death_result(worker, budgets, limit)
            else:
                worker.kill("call cancelled")  # state unknown: never reuse
                raise
        except BaseException:
            worker.kill("call failed in the host")
            raise
        worker.call_started = 0.0
        if worker.lowered and worker.alive:
            self._set_priority(worker.pid, starting=False)
        worker.lowered = False
        self._unhold(worker, key)
        error = result.error
        self.box.record(key, error is not None and error.kind == BUDGET and not cut,
                        error.message if error is not None else "")
        self._finish(worker, result)
        if not worker.alive:
            self._dispatch()
        # Answers a worker kept never reach us: take its count, capped by the budget.
        result.kv_ops = max(kv_ops, min(result.kv_ops, budgets.kv_ops))
        result.elapsed_ms = round((loop.time() - start) * 1000, 3)
        return result

    def _wire(self, budgets: Budgets) -> dict[str, int]:
        wire = self._budget_wire.get(budgets)
        if wire is None:
            if len(self._budget_wire) > 256:
                self._budget_wire.clear()
            wire = self._budget_wire[budgets] = budgets.to_wire()
        return wire

    async def _kv_reply(self, msg: dict[str, Any], call_id: int, budgets: Budgets, kv: KVCall,
                        keeper: _Worker | None) -> bytes:
        def error(kind: str, text: str) -> bytes:
            return protocol.encode({"t": protocol.KVR, "id": call_id, "err": kind, "msg": bounded(text)})

        try:
            # The worker checked this too, but it is untrusted: check again before the store.
            op, args = kvops.validate(msg.get("op"), msg.get("args"), budgets.kv_key_bytes, budgets.kv_value_bytes)
        except KVRefused as exc:
            return error(protocol.KV_ERR, str(exc))
        if keeper is not None and len(keeper.kept) < _MAX_KEPT and keeper.kept_bytes < _MAX_KEPT_BYTES:
            # Synchronous: no invalidation can run between the hit and recording the key.
            hit = kv.peek(op.name, args)  # type: ignore[attr-defined]
            if hit is not None:
                rkey = hit[1]
                if rkey not in keeper.kept:
                    keeper.kept.add(rkey)
                    keeper.kept_bytes += len(rkey) + _KEPT_OVERHEAD
                try:
                    return protocol.encode({"t": protocol.KVR, "id": call_id, "ok": hit[0], "c": rkey})
                except TypeError:
                    keeper.kept.discard(rkey)
                    keeper.kept_bytes -= len(rkey) + _KEPT_OVERHEAD
        try:
            value = await kv(op.name, args)
        except KVRefused as exc:
            return error(protocol.KV_ERR, str(exc))
        except KVUnavailable as exc:
            return error(protocol.KV_UNAVAILABLE, str(exc) or "KV store unavailable")
        except Exception as exc:  # never leak host internals into a script's view
            log.warning("kv %s failed: %r", op.name, exc)
            return error(protocol.KV_UNAVAILABLE, "KV store unavailable")
        try:
            return protocol.encode({"t": protocol.KVR, "id": call_id, "ok": value})
        except TypeError:
            log.warning("kv %s returned unencodable %s", op.name, type(value).__name__)
            return error(protocol.KV_UNAVAILABLE, "KV store returned unusable data")

    def _parse_done(self, worker: _Worker, msg: dict[str, Any], sha: str) -> RunResult:
        """Rebuild a RunResult from untrusted wire data, accepting only the exact shape."""
        cpu = msg.get("cpu")
        if type(cpu) in (int, float):
            worker.cpu = float(cpu)
        if msg.get("retire") is True:  # the worker's state is unknown after this call
            worker.retire = True
        if msg.get("cached") is True:
            worker.known[sha] = None
            worker.known.move_to_end(sha)
            while len(worker.known) > self.script_cache:
                worker.known.popitem(last=False)
        r = msg.get("r")
        bad = _Violation("malformed result", RunResult.failed(INVALID_RESULT, "sandbox worker returned a malformed result"))
        if type(r) is not dict:
            raise bad
        verdict, fields, err, logs = r.get("verdict"), r.get("fields", {}), r.get("error"), r.get("logs", [])
        if verdict not in _VERDICTS or type(fields) is not dict or type(logs) is not list:
            raise bad
        if len(logs) > _MAX_LOG_LINES or any(type(line) is not str for line in logs):
            raise bad
        error: ScriptError | None = None
        if err is not None:
            if type(err) is not dict or err.get("kind") not in ERROR_KINDS or type(err.get("message")) is not str:
                raise bad
            error = ScriptError(err["kind"], bounded(err["message"]))
        if (verdict == ERROR) != (error is not None):
            raise bad
        ops = r.get("kv_ops")
        return RunResult(verdict=verdict, fields=fields, error=error, logs=logs,
                         kv_ops=ops if type(ops) is int and ops > 0 else 0)

    async def _death_result(self, worker: _Worker, budgets: Budgets, limit: float) -> RunResult:
        reason = worker.killed_reason
        if reason is not None:  # the host killed it
            if reason.startswith("protocol:"):
                return RunResult.failed(INVALID_RESULT, "sandbox worker sent a malformed message")
            return RunResult.failed(UNAVAILABLE, "sandbox worker stopped: " + reason.removeprefix("recycle: "))
        rc = await worker.wait_exit(min(limit, self._loop.time() + 0.5))
        if rc is None:
            worker.kill("closed its channel but kept running")
            return RunResult.failed(BUDGET, "budget exceeded: sandbox worker stopped responding")
        return RunResult.failed(BUDGET, describe_exit(rc, budgets.memory_mb))

    async def check(self, source: str, timeout: float = 2.0) -> list[CompileIssue]:
        """Validate ``source`` (``sandbox.policy.check_source``) inside a worker, under a
        time limit: compiling hostile source is itself a DoS vector."""
        loop = self._loop or asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            acquired = await self._acquire("", deadline, _ADMIN)
            if isinstance(acquired, RunResult):
                message = acquired.error.message if acquired.error else "sandbox unavailable"
                return [CompileIssue(1, 0, f"could not validate the script now: {message}")]
            if acquired.alive:
                break
            self._unhold(acquired, _ADMIN)
        worker = acquired
        try:
            return await self._check(worker, source, deadline, timeout)
        finally:
            self._unhold(worker, _ADMIN)
            self._dispatch()

    async def _check(self, worker: _Worker, source: str, deadline: float, timeout: float) -> list[CompileIssue]:
        loop = self._loop
        call_id = next(self._ids)
        worker.calls += 1
        issues: list[CompileIssue] = []
        try:
            async with asyncio.timeout_at(deadline):
                fut = worker.expect()
                worker.send(
                    protocol.encode({"t": protocol.CHECK, "id": call_id, "src": source, "cpu_s": math.ceil(timeout)})
                )
                msg = await fut
            if msg is None:
                raise _WorkerGone()
            if msg["t"] != protocol.CHECKED or msg.get("id") != call_id:
                raise _Violation("unexpected message during a check")
            issues = _parse_issues(msg.get("issues"))
        except TimeoutError:
            worker.kill("check exceeded its time limit")
            return [CompileIssue(1, 0, f"compiling the script exceeded the time limit ({timeout:g} s)")]
        except _WorkerGone:
            if worker.killed_reason is None:
                rc = await worker.wait_exit(loop.time() + 0.5)
                why = describe_exit(rc, self.memory_mb) if rc is not None else "sandbox worker died"
            else:
                why = "sandbox worker stopped"
            return [CompileIssue(1, 0, f"compiling the script exceeded the memory or time limit ({why})")]
        except _Violation as exc:
            worker.kill(f"protocol: {exc}")
            return [CompileIssue(1, 0, "could not validate the script: sandbox error")]
        except BaseException:
            worker.kill("check cancelled")
            raise
        self._finish(worker, None)
        return issues

    async def _probe(self, name: str, timeout: float = 10.0, **args: Any) -> Any:
        """Test-only: run a fixed probe (``sandbox.worker._probes``) in a confined worker.

        Returns the probe's report, or ``{"died": exit status}`` if the worker died."""
        if not self._test_hooks:
            raise RuntimeError("probes need WorkerPool(test_hooks=True)")
        loop = self._loop
        acquired = await self._acquire("", loop.time() + timeout, _ADMIN)
        if isinstance(acquired, RunResult):
            raise RuntimeError(str(acquired.error))
        worker = acquired
        self._unhold(worker, _ADMIN)  # test-only: no fair-share accounting needed
        try:
            async with asyncio.timeout(timeout):
                fut = worker.expect()
                worker.send(protocol.encode({"t": protocol.PROBE, "id": next(self._ids), "name": name, **args}))
                msg = await fut
        except TimeoutError:
            worker.kill("probe timed out")
            return {"died": "timeout"}
        except _WorkerGone:
            return {"died": await worker.wait_exit(loop.time() + 5)}
        if msg is None:
            return {"died": await worker.wait_exit(loop.time() + 5)}
        report = msg.get("r")
        if type(report) is not dict or report.get("allowed") is not False:
            worker.kill("recycle: after a probe that was not refused")  # state unknown now
        else:
            self._finish(worker, None)
        return report

    # --- introspection -----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        states = collections.Counter(w.state for w in self._workers)
        return {
            "size": self.size,
            "live": len(self._workers),
            "idle": len(self._idle),
            "busy": states[_BUSY],
            "starting": states[_STARTING],
            "spawned": self.spawned,
            "killed": self.killed,
            "recycled": self.recycled,
            "recycle_skipped": self.recycle_skipped,
            "queue": self._fair.total_queued(),
            "calls": self.calls,
            "share": self.share,
            "kv_waiting": self._kv_waiting,
            "extra_spawned": self.extra_spawned,
            "extra_stopped": self.extra_stopped,
            "kept_bytes": sum(w.kept_bytes for w in self._workers),
            "demoted": self.demoted,
        }

    def fairness(self) -> dict[str, Any]:
        """Per-command holdings and queues, and the penalty box (for /healthz)."""
        return {"share": self.share, "commands": self._fair.snapshot(), "penalty_box": self.box.snapshot()}

    def confinement(self) -> list[dict[str, Any]]:
        """What each live worker reported about its confinement (for logs and tests)."""
        return [w.confine for w in self._workers if w.state != _STARTING]

    def worker_reports(self) -> list[dict[str, Any]]:
        """The ready messages of the live workers (pid, confinement, test-hook extras)."""
        return [w.info for w in self._workers if w.state != _STARTING]


def _parse_issues(raw: Any) -> list[CompileIssue]:
    if type(raw) is not list or len(raw) > _MAX_ISSUES * 10:
        raise _Violation("malformed issues")
    issues: list[CompileIssue] = []
    for item in raw[:_MAX_ISSUES]:
        if (
            type(item) is not list
            or len(item) != 3
            or type(item[0]) is not int
            or type(item[1]) is not int
            or type(item[2]) is not str
        ):
            raise _Violation("malformed issue")
        issues.append(CompileIssue(max(1, item[0]), max(0, item[1]), bounded(item[2])))
    return issues


def describe_exit(rc: int, memory_mb: int) -> str:
    """Best-effort reason for a worker that died by itself."""
    if rc == -signal.SIGXCPU:
        return "budget exceeded: cpu time (worker stopped by the kernel CPU limit)"
    if rc == -signal.SIGKILL:
        return f"budget exceeded: memory (worker killed by the kernel; limit {memory_mb} MiB)"
    if rc == protocol.EXIT_OOM:
        return f"budget exceeded: memory (limit {memory_mb} MiB)"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"budget exceeded: memory or cpu (sandbox worker crashed with {name}; memory limit {memory_mb} MiB)"
    return f"budget exceeded: memory or cpu (sandbox worker exited with status {rc})"
