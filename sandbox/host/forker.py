"""Host side of the template process (``sandbox.worker.template``): fork workers instead of
starting interpreters.

``Forker.fork(sock)`` hands the child's end of a fresh socketpair to the template and
returns a ``ForkedProc`` once the template reports the new pid. The template is the
workers' parent, so it reaps them and reports each exit status; ``ForkedProc.on_exit`` is
called with it. If the template dies, its workers die with it (parent-death signal) and
every ``ForkedProc`` is reported as killed; the pool then starts workers directly until a
new template is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("scriptgate.sandbox")

MAX_MSG = 4096
FORK_TIMEOUT_S = 2.0  # a fork answers in ~1 ms; far beyond that the template is wedged


class ForkError(RuntimeError):
    """The template could not fork a worker (or is gone)."""


class ForkedProc:
    """The part of ``subprocess.Popen`` the pool uses, for a worker the template forked."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.on_exit: Callable[[], None] | None = None

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        # Only used without a pidfd (the pool prefers pidfd_send_signal, which cannot hit
        # a reused pid); before the template reported the exit, the pid is still ours.
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    def exited(self, rc: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = rc
        if self.on_exit is not None:
            self.on_exit()


class Forker:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[], None]) -> None:
        self.loop = loop
        self.on_death = on_death
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.alive = False
        self.procs: dict[int, ForkedProc] = {}
        self._ready: asyncio.Future[int] = loop.create_future()
        self._pending: dict[int, asyncio.Future[ForkedProc]] = {}
        self._ids = itertools.count(1)

    async def start(self, command: list[str], fd_arg_index: int, timeout: float, **popen: Any) -> None:
        """Start the template; ``command[fd_arg_index]`` is replaced by its control fd."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            cmd = list(command)
            cmd[fd_arg_index] = str(child.fileno())
            self.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), close_fds=True, **popen)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.loop.add_reader(parent.fileno(), self._readable)
        try:
            async with asyncio.timeout(timeout):
                await self._ready
        except BaseException:
            self.close()
            raise
        self.alive = True

    async def fork(self, child_sock: socket.socket) -> ForkedProc:
        if not self.alive or self.sock is None:
            raise ForkError("no template process")
        n = next(self._ids)
        fut: asyncio.Future[ForkedProc] = self.loop.create_future()
        self._pending[n] = fut
        try:
            socket.send_fds(self.sock, [orjson.dumps({"t": "fork", "n": n})], [child_sock.fileno()])
        except OSError as exc:
            self._pending.pop(n, None)
            raise ForkError(f"template unreachable: {exc}") from None
        try:
            async with asyncio.timeout(FORK_TIMEOUT_S):
                return await fut
        except TimeoutError:
            # A template that does not answer (stopped, wedged) is replaced; its workers die
            # with it and are replaced too, which beats waiting on it for every new worker.
            self._died("did not answer a fork request in time")
            raise ForkError("template process did not answer") from None
        finally:
            self._pending.pop(n, None)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(MAX_MSG)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._died("exited")
                return
            try:
                msg = orjson.loads(data)
                self._on_message(msg)
            except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
                self._died("sent a malformed message")
                return

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "exit":
            proc = self.procs.pop(int(msg["pid"]), None)
            if proc is not None:
                proc.exited(int(msg["rc"]))
        elif kind == "forked":
            pid = int(msg["pid"])
            proc = ForkedProc(pid)
            self.procs[pid] = proc
            fut = self._pending.get(msg["n"])
            if fut is not None and not fut.done():
                fut.set_result(proc)
            else:  # its caller gave up: nobody will ever talk to this child
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif kind == "fork_failed":
            fut = self._pending.get(msg["n"])
            if fut is not None and not fut.done():
                fut.set_exception(ForkError(str(msg.get("msg", "fork failed"))[:200]))
        elif kind == "ready" and not self._ready.done():
            self._ready.set_result(int(msg["pid"]))
        elif kind == "fatal" and not self._ready.done():
            self._ready.set_exception(ForkError(f"template failed to start: {str(msg.get('msg'))[:300]}"))
        else:
            raise ValueError(kind)

    def _died(self, reason: str) -> None:
        was_alive = self.alive
        self.close()
        if not self._ready.done():
            self._ready.set_exception(ForkError(reason))
        if was_alive:
            log.warning("sandbox template process %s; starting workers directly until it is back", reason)
            self.on_death()

    def close(self) -> None:
        """Stop the template; its workers die with it and are reported as killed."""
        self.alive = False
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ForkError("template process gone"))
        self._pending.clear()
        # The template is dead and reaped here, so its workers got their parent-death
        # SIGKILL (and one still between fork and arming it exits at that check).
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            proc.exited(-signal.SIGKILL)
