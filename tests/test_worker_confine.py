"""Kernel confinement of real workers, tested from plain Python inside a confined worker
(``sandbox.worker._probes``, enabled only by ``WorkerPool(test_hooks=True)``): what an escaped
script would try first must fail."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from sandbox.host.pool import WorkerPool
from sandbox.worker.confine import ALLOW_PLAIN, NR, build_filter, seccomp_supported
from tests.timing import FAR_S

ROOT = os.geteuid() == 0
CANARY = "canary-7f3a9c"
needs_seccomp = pytest.mark.skipif(not seccomp_supported(), reason="seccomp filter is x86_64 only")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pool(loop: asyncio.AbstractEventLoop) -> Iterator[WorkerPool]:
    # Secrets the HTTP process holds; the workers must never see them.
    saved = {k: os.environ.get(k) for k in ("SCRIPTGATE_ADMIN_TOKEN", "REDIS_PASSWORD")}
    os.environ["SCRIPTGATE_ADMIN_TOKEN"] = CANARY
    os.environ["REDIS_PASSWORD"] = CANARY
    p = WorkerPool(size=2, test_hooks=True)
    try:
        loop.run_until_complete(p.start())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield p
    loop.run_until_complete(p.close())


def probe(pool: WorkerPool, loop: asyncio.AbstractEventLoop, name: str) -> dict:
    return loop.run_until_complete(pool._probe(name))


def test_every_layer_reported(pool: WorkerPool) -> None:
    for report in pool.confinement():
        assert report["rlimits"] and report["fds_closed"] and report["no_new_privs"]
        assert report["dumpable_off"] and report["pdeathsig"]
        assert report["seccomp"] == seccomp_supported()
        if ROOT:
            assert report["chroot"] and report["namespaces"]
            assert report["uid"] == 65534 and report["gid"] == 65534
        assert not [w for w in report["warnings"] if "warm-up" in w]


DENIED = [
    "fork",  # no new processes
    "thread",  # no threads either (clone)
    "exec",
    "socket_inet",  # no network
    "socket_unix",
    "socketpair",
    "open_write",  # no file writes
    "open_read",  # no file reads (secrets, /etc/passwd, the app's config)
    "proc_environ",
    "listdir",
    "kill_parent",  # no signals to the host or anyone else
    "kill_init",
    "setuid_root",
    "chroot",
    "mmap_exec",  # no new executable memory
    "ptrace_parent",
    "unshare_user",
    "prctl_unfilter",
    "raise_nofile",  # hard limits cannot be raised back
]


@needs_seccomp
@pytest.mark.parametrize("name", DENIED)
def test_denied(pool: WorkerPool, loop: asyncio.AbstractEventLoop, name: str) -> None:
    report = probe(pool, loop, name)
    assert report["allowed"] is False, report
    assert "Error" in report["error"] or "error" in report["error"]


def test_can_still_signal_itself_and_knows_who_it_is(pool: WorkerPool, loop: asyncio.AbstractEventLoop) -> None:
    assert probe(pool, loop, "kill_self") == {"allowed": True, "value": None}
    ids = probe(pool, loop, "ids")["value"]
    if ROOT:
        assert ids == [65534, 65534, 65534, 65534, []]


def test_no_host_secrets_in_the_worker_environment(pool: WorkerPool, loop: asyncio.AbstractEventLoop) -> None:
    for info in pool.worker_reports():
        pre = info["pre"]  # captured at worker start, before confinement
        assert CANARY not in repr(pre["environ"]) and CANARY not in pre["proc_environ"]
        assert "SCRIPTGATE_ADMIN_TOKEN" not in pre["environ"]
        assert set(pre["environ"]) <= {
            "PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE",
            "PYTHONSAFEPATH", "LC_CTYPE",
        }  # fmt: skip
    env = probe(pool, loop, "environ")["value"]
    assert CANARY not in repr(env)


def test_memory_limit_in_c(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> dict:
        async with WorkerPool(size=1, memory_mb=256, test_hooks=True) as small:
            return await small._probe("alloc", mb=300)

    report = loop.run_until_complete(main())
    assert report["allowed"] is False and "MemoryError" in report["error"]


def test_workers_die_with_their_host(tmp_path: object) -> None:
    # PR_SET_PDEATHSIG: if the HTTP process is SIGKILLed, its template and workers go too.
    host = textwrap.dedent(
        """
        import asyncio, sys, signal
        sys.path.insert(0, sys.argv[1])
        from sandbox.host.pool import WorkerPool
        async def main():
            pool = WorkerPool(size=2)
            await pool.start()
            pids = [r["pid"] for r in pool.worker_reports()] + [pool._forker.proc.pid]  # + the template
            print(" ".join(map(str, pids)), flush=True)
            await asyncio.Event().wait()
        asyncio.run(main())
        """
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", host, repo], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + FAR_S
    alive = pids
    while alive and time.monotonic() < deadline:  # no event to await for a stranger's exit
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and "Z" not in _state(p)]
        time.sleep(0.02)
    assert not alive


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_filter_program_is_well_formed() -> None:
    prog = build_filter(4242)
    assert len(prog) < 4096  # BPF_MAXINSNS
    for i, (code, jt, jf, _k) in enumerate(prog):
        assert 0 <= jt < 256 and 0 <= jf < 256
        if code & 0x07 == 0x05:  # BPF_JMP: both targets inside the program
            assert i + 1 + jt < len(prog) and i + 1 + jf < len(prog)
    assert prog[-1] == (0x06, 0, 0, 0x00050001)  # default: EPERM
    dangerous = {"clone", "fork", "vfork", "execve", "socket", "connect", "open", "openat", "ptrace"}
    assert not dangerous & set(ALLOW_PLAIN)
    assert all(name in NR for name in ALLOW_PLAIN)
