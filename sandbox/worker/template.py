"""The template process: a warmed-up, not yet confined worker that forks new workers.

Starting a worker from scratch (a new interpreter, imports, warm-up) costs ~0.15-0.3 s of
CPU. On a small machine that CPU is taken from live callbacks: every recycle showed up as
a cluster of slow replies (p99 of a fixed-rate run 5-50 ms with recycling, 2-3 ms without,
measured with bench/openloop.py). A fork of this process costs about a millisecond, and the
child only has to confine itself and say ready.

The template is started like a worker (``python -m sandbox.worker --template``, the same
minimal environment, never forked from the HTTP process), imports and warms up, then
serves fork requests from the host on a SOCK_SEQPACKET control socket (one message per
datagram, see ``sandbox.host.forker`` for the host side)::

    host -> template  {"t": "fork", "n": N}  + one fd (SCM_RIGHTS): the child's socket
    template -> host  {"t": "ready", "pid": P}                once, after the warm-up
                      {"t": "forked", "n": N, "pid": P}       or {"t": "fork_failed", "n": N, "msg": ...}
                      {"t": "exit", "pid": P, "rc": RC}       a child exited (RC as subprocess's)

A child returns from ``serve_forks`` and continues exactly like a freshly started worker
(confinement, ``ready``, serve). It shares nothing with the template but copy-on-write
memory of the warm-up; every call still runs in fresh globals. The template itself runs
no uploaded script and reads nothing but the host's control messages; it dies with the
host (parent-death signal) and its children die with it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any

import orjson

MAX_MSG = 4096


def _send(ctrl: socket.socket, msg: dict[str, Any]) -> None:
    ctrl.send(orjson.dumps(msg))


def _reap(ctrl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctrl, {"t": "exit", "pid": pid, "rc": os.waitstatus_to_exitcode(status)})


def serve_forks(ctrl: socket.socket, after_fork_in_child: Callable[[], None]) -> int:
    """Serve fork requests until the host goes away (then exit). Returns only in a forked
    child, with the fd of its channel to the host."""
    ctrl.setblocking(True)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # SIGCHLD only needs to wake the poll below; the reaping happens in the loop.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(ctrl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    _send(ctrl, {"t": "ready", "pid": os.getpid()})
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(ctrl)
                continue
            data, fds, _, _ = socket.recv_fds(ctrl, MAX_MSG, 4)
            if not data:
                os._exit(0)  # the host is gone; the children follow (parent-death signal)
            try:
                msg = orjson.loads(data)
                n = msg["n"]
                ok = msg.get("t") == "fork" and type(n) is int and len(fds) == 1
            except (orjson.JSONDecodeError, TypeError, KeyError):
                ok, n = False, None
            if not ok:
                for f in fds:
                    os.close(f)
                _send(ctrl, {"t": "fork_failed", "n": n, "msg": "malformed fork request"})
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(fds[0])
                _send(ctrl, {"t": "fork_failed", "n": n, "msg": f"fork: {exc.strerror}"})
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                ctrl.close()
                os.setsid()  # like a directly started worker: the host's terminal signals are not ours
                after_fork_in_child()
                return fds[0]
            os.close(fds[0])
            _send(ctrl, {"t": "forked", "n": n, "pid": pid})
        _reap(ctrl)
