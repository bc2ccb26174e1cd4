"""Kernel confinement of a sandbox worker process (Linux).

RestrictedPython is only a compiler front end; if a script ever escapes it, these layers
are what stand between it and the host. Applied once per worker, after every module the
worker will need is imported and warmed up, in this order:

1. close every inherited file descriptor except stdio and the IPC socket;
2. resource limits: address space (memory), CPU seconds (hard = lifetime cap, the soft
   limit is lowered per call by ``set_call_limits``), no file writes (FSIZE 0), no core
   dumps, no new processes (NPROC 0, enforced once we are not root), few fds, no locked
   memory or message queues;
3. as root only: new network and IPC namespaces (no interfaces at all, not even loopback),
   chroot into an empty directory that is deleted first (nothing can be created in it, so
   the filesystem view is empty for good), then drop to uid/gid 65534 with no groups
   (this also clears all capabilities);
4. not dumpable (other workers share uid 65534 and must not ptrace or read our /proc),
   parent-death signal SIGKILL (a worker never outlives the host);
5. PR_SET_NO_NEW_PRIVS and a seccomp-BPF allowlist (x86_64): anything not needed by a
   warmed-up worker serving requests over an already-open socket fails with EPERM. That
   denies, among others, fork/vfork/clone/clone3/execve (no processes or threads), every
   open/openat/creat (no file reads or writes), socket/socketpair/connect/bind/accept
   (no network), ptrace/process_vm_*, mount/chroot/unshare/setns, the setuid family,
   prctl/seccomp, ioctl, kill of any other pid, and mmap/mprotect with PROT_EXEC.

Each layer is reported in ``ConfineReport`` so the host can log what is in force; layers
that cannot apply here (not root, not x86_64) are skipped with a warning, never silently.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import struct
import tempfile
from dataclasses import asdict, dataclass, field

from sandbox.protocol import LIFETIME_CPU_S

NOBODY = 65534
CPU_MARGIN_S = 1  # slack on top of the wall budget for the per-call soft CPU limit

# prctl options
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

# BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
EPERM, ENOSYS = 1, 38
PROT_EXEC = 4

# struct seccomp_data offsets
OFF_NR, OFF_ARCH = 0, 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little endian)


# x86_64 syscall numbers (asm/unistd_64.h). Hand-written on purpose: the allowlist is the
# security boundary and must not depend on headers or libraries present at run time.
NR = {
    "read": 0, "write": 1, "close": 3, "fstat": 5, "poll": 7, "lseek": 8, "mmap": 9,
    "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14,
    "rt_sigreturn": 15, "readv": 19, "writev": 20, "sched_yield": 24, "mremap": 25,
    "madvise": 28, "nanosleep": 35, "getpid": 39, "sendto": 44, "recvfrom": 45,
    "setitimer": 38, "sendmsg": 46, "recvmsg": 47, "shutdown": 48, "clone": 56, "exit": 60, "kill": 62,
    "fcntl": 72, "gettimeofday": 96, "getrlimit": 97, "getrusage": 98, "getuid": 102,
    "getgid": 104, "geteuid": 107, "getegid": 108, "getppid": 110, "getgroups": 115,
    "getresuid": 118, "getresgid": 120, "sigaltstack": 131, "setrlimit": 160,
    "gettid": 186, "tkill": 200, "time": 201, "futex": 202, "sched_getaffinity": 204,
    "restart_syscall": 219, "clock_gettime": 228, "clock_getres": 229,
    "clock_nanosleep": 230, "exit_group": 231, "tgkill": 234, "newfstatat": 262,
    "ppoll": 271, "prlimit64": 302, "getrandom": 318, "clone3": 435,
}

# Allowed without argument checks: memory management, signals bookkeeping, clocks, reads
# and writes on the fds we already hold (stdio on /dev/null and the IPC socket; no new fd
# can be created), identity queries, and exit. Most frequent first: the filter is linear.
# Not sendmsg/recvmsg: they could pass file descriptors or credentials over the socket.
ALLOW_PLAIN = (
    "recvfrom", "sendto", "read", "write", "getrusage", "clock_gettime", "brk", "munmap",
    "mremap", "madvise", "futex", "getpid", "gettid", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "sigaltstack", "readv", "writev", "poll", "ppoll",
    "close", "fstat", "newfstatat", "lseek", "fcntl", "getrlimit", "setrlimit", "getrandom",
    "gettimeofday", "time", "clock_getres", "nanosleep", "clock_nanosleep", "sched_yield",
    "sched_getaffinity", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "getgroups", "getppid", "shutdown", "restart_syscall", "exit", "exit_group",
    # ITIMER_REAL only signals this process: the wall-clock deadline of a long call
    # (sandbox.worker.budget.DeadlineAlarm).
    "setitimer",
)


@dataclass
class ConfineReport:
    rlimits: bool = False
    fds_closed: bool = False
    namespaces: bool = False
    chroot: bool = False
    uid: int = -1
    gid: int = -1
    dumpable_off: bool = False
    pdeathsig: bool = False
    no_new_privs: bool = False
    seccomp: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_wire(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# seccomp


def build_filter(pid: int) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k) tuples. ``pid`` is the worker's own pid."""
    deny = SECCOMP_RET_ERRNO | EPERM
    prog: list[tuple[int, int, int, int]] = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # another ABI: never legitimate
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
        (BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # x32 syscall numbers alias ours
    ]
    for name in ALLOW_PLAIN:
        prog += [(BPF_JEQ_K, 0, 1, NR[name]), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]

    def guarded(name: str, block: list[tuple[int, int, int, int]]) -> None:
        # jeq nr: fall into ``block`` (which always ends in a return), else skip it.
        # The accumulator holds an argument afterwards, so every block must return.
        # A real check, not an assert: under ``python -O`` a wrong block must still stop the build.
        if block[-1][0] != BPF_RET_K or len(block) >= 256:
            raise ValueError(f"seccomp block for {name} must end in a return and fit a jump offset")
        prog.append((BPF_JEQ_K, 0, len(block), NR[name]))
        prog.extend(block)

    def self_only(arg: int) -> list[tuple[int, int, int, int]]:
        return [
            (BPF_LD_W_ABS, 0, 0, _arg_lo(arg)),
            (BPF_JEQ_K, 0, 1, pid),
            (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            (BPF_RET_K, 0, 0, deny),
        ]

    no_exec = [
        (BPF_LD_W_ABS, 0, 0, _arg_lo(2)),  # prot is args[2] of both mmap and mprotect
        (BPF_JSET_K, 0, 1, PROT_EXEC),
        (BPF_RET_K, 0, 0, deny),  # no new executable memory: no shellcode, no JIT
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    guarded("mmap", no_exec)
    guarded("mprotect", no_exec)
    # Signals only to ourselves (abort() uses tgkill on self); other workers share our
    # uid and would otherwise be fair game.
    guarded("kill", self_only(0))
    guarded("tgkill", self_only(0))
    guarded("tkill", self_only(0))  # single-threaded: our only tid is our pid
    # Resource limits of ourselves only (pid 0 or our pid): lowering is always allowed,
    # raising is capped by the hard limits set while we were root.
    guarded(
        "prlimit64",
        [
            (BPF_LD_W_ABS, 0, 0, _arg_lo(0)),
            (BPF_JEQ_K, 2, 0, 0),
            (BPF_JEQ_K, 1, 0, pid),
            (BPF_RET_K, 0, 0, deny),
            (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ],
    )
    # ENOSYS (not EPERM) for clone3 so libc would fall back to clone, which is denied too.
    guarded("clone3", [(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS)])
    prog.append((BPF_RET_K, 0, 0, deny))
    return prog


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_libc: ctypes.CDLL | None = None


def _libc_handle() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _prctl(option: int, arg2: int = 0) -> None:
    ul = ctypes.c_ulong
    if _libc_handle().prctl(ctypes.c_int(option), ul(arg2), ul(0), ul(0), ul(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def seccomp_supported() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64") and (
        struct.calcsize("P") == 8
    )


def install_seccomp(pid: int) -> None:
    libc = _libc_handle()
    prog = build_filter(pid)
    arr = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), arr)
    ul = ctypes.c_ulong
    rc = libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP), ul(SECCOMP_MODE_FILTER), ctypes.byref(fprog), ul(0), ul(0)
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {os.strerror(err)}")


# ---------------------------------------------------------------------------------------
# the whole sequence


def _close_fds(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _set_rlimits(memory_mb: int, max_fd: int) -> None:
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu_used = cpu_seconds()
    hard_cpu = int(cpu_used) + LIFETIME_CPU_S
    resource.setrlimit(resource.RLIMIT_CPU, (hard_cpu, hard_cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max_fd + 1, max_fd + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if stack != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))  # the soft limit, for good


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CallLimits:
    """Per-call soft limits, with a syscall only when a limit has to move.

    CPU: soft = CPU used so far + the call's wall budget + a margin, so a C loop that
    ignores signals still gets SIGXCPU even if the host is slow to kill us. Calls are
    short, so the limit set for one call almost always fits the next (it is kept while it
    lies within [needed, needed + 1 s]). Memory: the call's budget, never above the hard
    limit fixed at start.
    """

    def __init__(self) -> None:
        self._cpu_soft = -1
        self._as_soft = -1

    def apply(self, wall_ms: int, memory_mb: int) -> float:
        """Set the limits for one call; return the CPU seconds used so far."""
        used = cpu_seconds()
        need = int(used) + -(-wall_ms // 1000) + CPU_MARGIN_S
        if not need <= self._cpu_soft <= need + 1:
            hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
            if hard_cpu != resource.RLIM_INFINITY:
                need = min(need, hard_cpu)
            resource.setrlimit(resource.RLIMIT_CPU, (need, hard_cpu))
            self._cpu_soft = need
        soft_as = memory_mb * 1024 * 1024
        if soft_as != self._as_soft:
            hard_as = resource.getrlimit(resource.RLIMIT_AS)[1]
            if hard_as != resource.RLIM_INFINITY:
                soft_as = min(soft_as, hard_as)
            resource.setrlimit(resource.RLIMIT_AS, (soft_as, hard_as))
            self._as_soft = memory_mb * 1024 * 1024
        return used


def set_call_limits(wall_ms: int, memory_mb: int) -> None:
    """One-off version of ``CallLimits.apply`` (probes, tests)."""
    CallLimits().apply(wall_ms, memory_mb)


def _chroot_empty() -> None:
    # An empty directory that no longer exists: nothing can ever be created in it, and
    # nothing needs cleaning up when the worker dies.
    path = tempfile.mkdtemp(prefix="scriptgate-root-")
    os.chdir(path)
    os.rmdir(path)
    os.chroot(".")
    os.chdir("/")


def _drop_root() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("privileges could be regained after dropping root")


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (the template process: its forked
    workers then die with it); exit now if the parent is already gone."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


def confine(memory_mb: int, keep_fds: set[int], parent_pid: int) -> ConfineReport:
    """Apply every layer; raise if a layer that must apply here fails (the worker then
    refuses to serve rather than run scripts unconfined)."""
    report = ConfineReport()
    os.chdir("/")
    _close_fds(keep_fds | {0, 1, 2})
    report.fds_closed = True
    root = os.geteuid() == 0
    if root:
        if _libc_handle().unshare(ctypes.c_int(CLONE_NEWNET | CLONE_NEWIPC)) == 0:
            report.namespaces = True
        else:
            report.warnings.append(f"unshare(net, ipc) failed: {os.strerror(ctypes.get_errno())}")
        _chroot_empty()
        report.chroot = True
    else:
        report.warnings.append("not root: no chroot, no namespaces, uid unchanged")
    # After the chroot (which needs a writable temp dir) and before dropping root (so the
    # hard limits are set with privilege and can never be raised again).
    _set_rlimits(memory_mb, max(keep_fds | {2}))
    report.rlimits = True
    if root:
        _drop_root()
    report.uid, report.gid = os.getuid(), os.getgid()

    _prctl(PR_SET_DUMPABLE, 0)
    report.dumpable_off = True
    # Credentials changed above, which clears the parent-death signal: set it now, then
    # check the parent did not die before it was armed.
    die_with_parent(parent_pid)
    report.pdeathsig = True

    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    report.no_new_privs = True
    if seccomp_supported():
        install_seccomp(os.getpid())
        report.seccomp = True
    else:
        report.warnings.append(f"seccomp filter skipped: unsupported platform {platform.machine()}")
    return report
