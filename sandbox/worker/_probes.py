"""Test-only probes: direct Python run inside a real, confined worker.

Only a worker started with ``--test-hooks`` (``WorkerPool(test_hooks=True)``, used by the
tests) answers ``probe`` messages. Each probe is a fixed function here, chosen by name;
no code is shipped over the wire. They exist because RestrictedPython will not let a
script even try ``os.fork()``: to prove the kernel layers hold we have to try from plain
Python in the confined process, as an escaped script would.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson

from sandbox.worker import confine, containers


def before_confine() -> dict[str, Any]:
    """What the worker could see of its environment before confinement (for the tests
    that prove no host secret ever reaches it)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            proc_environ = f.read().decode("utf-8", "replace")
    except OSError as exc:
        proc_environ = f"unreadable: {exc}"
    return {"pre": {"environ": dict(os.environ), "proc_environ": proc_environ}}


def _fork() -> Any:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def _thread() -> Any:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    return "started"


def _read(path: str) -> Callable[[], Any]:
    def probe() -> Any:
        with open(path, "rb") as f:
            return f.read(64).decode("utf-8", "replace")

    return probe


def _write_file() -> Any:
    with open("/tmp/scriptgate-probe", "w") as f:
        f.write("x")
    return "written"


def _libc_call(name: str, *args: int) -> Callable[[], Any]:
    def probe() -> Any:
        libc = confine._libc_handle()
        rc = getattr(libc, name)(*[ctypes.c_long(a) for a in args])
        if rc == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return rc

    return probe


def _spin_c(head: dict[str, Any]) -> Any:
    # One C-level loop that never checks for signals: only SIGKILL (or SIGXCPU) stops it.
    confine.set_call_limits(int(head.get("wall_ms", 1000)), int(head.get("memory_mb", 512)))
    return "x" in range(10**18)


def _cpu_rlimit(head: dict[str, Any]) -> Any:
    # Lower our own soft CPU limit to ~1 s from now and spin: the kernel must stop us.
    soft = int(confine.cpu_seconds()) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))
    return "x" in range(10**18)


def _alloc(head: dict[str, Any]) -> Any:
    return len(bytearray(int(head.get("mb", 1024)) * 1024 * 1024))


def _segv(head: dict[str, Any]) -> Any:
    # A read from a non-canonical address faults on every x86_64 kernel, whatever is mapped.
    return ctypes.string_at(0xFFFF800000000000, 1)


PROBES: dict[str, Callable[[], Any]] = {
    "fork": _fork,
    "thread": _thread,
    "exec": lambda: os.execv("/bin/true", ["/bin/true"]),
    "socket_inet": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).fileno(),
    "socket_unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).fileno(),
    "socketpair": lambda: [s.fileno() for s in socket.socketpair()],
    "open_write": _write_file,
    "open_read": _read("/etc/passwd"),
    "proc_environ": _read("/proc/self/environ"),
    "listdir": lambda: os.listdir("/"),
    "kill_parent": lambda: os.kill(os.getppid(), 0),
    "kill_init": lambda: os.kill(1, 0),
    "kill_self": lambda: os.kill(os.getpid(), 0),
    "setuid_root": lambda: os.setuid(0),
    "chroot": lambda: os.chroot("/"),
    "mmap_exec": lambda: len(mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)),
    "ptrace_parent": _libc_call("ptrace", 16, os.getppid(), 0, 0),  # PTRACE_ATTACH
    "unshare_user": _libc_call("unshare", 0x10000000),  # CLONE_NEWUSER
    "prctl_unfilter": _libc_call("prctl", 22, 0, 0, 0),  # PR_SET_SECCOMP, DISABLED
    "raise_nofile": lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096)),
    "environ": lambda: dict(os.environ),
    "ids": lambda: [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
    "ppid": os.getppid,
    "collision_random": lambda: containers._random.random(),
}
ARG_PROBES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "spin_c": _spin_c,
    "cpu_rlimit": _cpu_rlimit,
    "alloc": _alloc,
    "segv": _segv,
}


def run(name: str, head: dict[str, Any]) -> dict[str, Any]:
    """{"allowed": True, "value": ...} if the operation worked, else the error it got."""
    try:
        if name in ARG_PROBES:
            value = ARG_PROBES[name](head)
        else:
            value = PROBES[name]()
    except BaseException as exc:
        return {"allowed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        orjson.dumps(value)
    except TypeError:
        value = repr(value)
    return {"allowed": True, "value": value}
