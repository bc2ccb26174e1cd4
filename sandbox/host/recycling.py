"""Starting, replacing and recycling workers: the ``Recycling`` part of ``WorkerPool``.

Workers are forked from a template process (``sandbox.host.forker``, ``sandbox.worker.template``:
~5 ms each, imports and warm-up already done) or, while it is down, started directly
(~0.15-0.3 s of CPU) at a lower CPU priority. A worker that died is replaced with a back-off
while spawning keeps failing. After a call a worker is returned, or recycled (killed quietly
and replaced): at its own call limit, when its CPU time nears the lifetime cap, after an
interrupted KV operation, and after a budget, policy or invalid-result error (rate-limited
by ``recycles_per_s`` tokens, so a flood of failing calls cannot make the pool do nothing
but respawn).

A mixin: the state it uses is ``WorkerPool``'s (set in its ``__init__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from sandbox import protocol
from sandbox.api import BUDGET, INVALID_RESULT, POLICY, RunResult
from sandbox.host.forker import ForkedProc, Forker, ForkError
from sandbox.host.workerhandle import BUSY, DEAD, STARTING, Conn, Worker, WorkerStartError

log = logging.getLogger("scriptgate.sandbox")

# A worker that reports this much CPU used is replaced before its hard RLIMIT_CPU
# (protocol.LIFETIME_CPU_S) could cut a legitimate call short.
_CPU_RECYCLE_S = protocol.LIFETIME_CPU_S / 2

SURPLUS = "recycle: surplus worker after a KV stall"


class Recycling:
    """Worker start-up, replacement and recycling (see the module docstring)."""

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

    def _set_priority(self, pid: int, level: str) -> None:
        """CPU priority of a worker: ``"normal"``; ``"starting"`` (nice +10: confinement,
        and without the template imports and warm-up, ~0.3 s of CPU, take idle CPU instead
        of stalling live callbacks); ``"demoted"`` (SCHED_IDLE: a call running long or of a
        command that hit its budgets lately runs only on CPU nobody else wants, and any
        other worker waking up preempts it at once, which nice 19 does not guarantee; in a
        2-process ping-pong beside three spins on 2 CPUs both kept p99 at 3.4-3.7 ms, against
        7.5 ms beside spins at normal priority). Only with the privilege to restore the
        priority afterwards (root)."""
        if self._base_nice is None:
            return
        with contextlib.suppress(OSError):
            if level == "demoted" and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
                return
            if level != "starting" and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            nice = {"starting": self._base_nice + 10, "demoted": 19}.get(level, self._base_nice)
            os.setpriority(os.PRIO_PROCESS, pid, min(19, nice))

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
        if forker.proc is not None:
            # Its children are born with its priority: a fork and the child's start-up
            # (copy-on-write faults, confinement) then take idle CPU from the first
            # instruction, not only once the host has reniced the new pid. Three recycles
            # at once showed up as victim calls of 12-26 ms.
            self._set_priority(forker.proc.pid, "starting")
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

    async def _spawn(self, on_added: Callable[[], None] | None = None) -> Worker:
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
        self._set_priority(proc.pid, "starting")
        try:
            pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        worker = Worker(self, proc, pidfd)
        self._workers.add(worker)
        if on_added is not None:
            on_added()
        self.spawned += 1
        try:
            parent_sock.setblocking(False)
            await self._loop.create_unix_connection(lambda: Conn(worker), sock=parent_sock)
            async with asyncio.timeout(self.start_timeout):
                ready = await worker.ready
        except BaseException as exc:
            worker.kill(f"startup failed: {exc!r}")
            if isinstance(exc, (Exception, TimeoutError)):
                raise WorkerStartError(f"sandbox worker did not start: {worker.killed_reason}") from None
            raise
        self._set_priority(proc.pid, "normal")
        worker.confine = ready["confine"]
        worker.info = ready
        for warning in worker.confine.get("warnings") or []:
            log.warning("sandbox worker %d: %s", worker.pid, warning)
        if self._closing:
            worker.kill("recycle: pool closed")
            raise WorkerStartError("pool closed")
        worker.state = BUSY
        self._settle_debt()
        self._release(worker)
        return worker

    def _worker_gone(self, worker: Worker, replace: bool) -> None:
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        reason = worker.killed_reason or ""
        if reason.startswith(SURPLUS):
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
            self._settle_debt(everything=True)
            self._dispatch()
            log.error("could not start a replacement sandbox worker: %s", exc)
            if not self._closing and not extra:
                self._schedule_spawn()
        finally:
            if not added:
                self._pending -= 1

    def _finish(self, worker: Worker, result: RunResult | None) -> None:
        """Return a worker after a call, or retire it."""
        if worker.state == DEAD:
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

    def _charge_replacement(self, key: str) -> None:
        """A call's worker died or was retired: its command keeps the worker in its share
        until a replacement is ready. Otherwise a command whose calls all end in a recycle
        (a spin hitting its budget) would, in the few ms a replacement takes to start, take
        the one worker its share leaves to the others, and their calls would queue behind
        the fork (measured: victim p99 3 -> 30 ms at the moment an attacker's budgets ran
        out). Only while a replacement is on its way and spawning works, so a debt never
        outlives it (``_settle_debt``)."""
        coming = self._pending + sum(1 for w in self._workers if w.state == STARTING)
        if coming > len(self._debts) and not self._spawn_failures and not self._closing:
            self._fair.hold(key)
            self._debts.append(key)

    def _settle_debt(self, everything: bool = False) -> None:
        """A worker became ready (or spawning failed: ``everything``)."""
        while self._debts:
            self._fair.unhold(self._debts.popleft())
            if not everything:
                return

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
