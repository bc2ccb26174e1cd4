"""Workers forked from the template process (sandbox/worker/template.py, sandbox/host/forker.py).

Recycling a worker must not cost a new interpreter: the pool forks workers from one
warmed-up template. These tests pin that workers really come from it, stay confined like
directly started ones, do not share random state, and that the pool survives the
template's death (direct starts, then a new template) and a template that never starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from sandbox.host import forker as forker_mod
from sandbox.host.pool import WorkerPool
from sandbox.worker.confine import seccomp_supported
from tests.test_pool import call, until

ROOT = os.geteuid() == 0


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def template_pid(pool: WorkerPool) -> int:
    assert pool._forker is not None and pool._forker.proc is not None
    return pool._forker.proc.pid


def test_workers_are_forked_from_the_template_and_confined() -> None:
    async def main() -> None:
        async with WorkerPool(size=2, test_hooks=True) as pool:
            tpl = template_pid(pool)
            assert "--template" in cmdline(tpl) and ppid(tpl) == os.getpid()
            assert pool.template_starts == 1
            for w in pool._workers:
                assert ppid(w.pid) == tpl
                report = w.confine
                assert report["rlimits"] and report["fds_closed"] and report["pdeathsig"] and report["no_new_privs"]
                assert report["seccomp"] == seccomp_supported()
                if ROOT:
                    assert report["chroot"] and report["uid"] == 65534
                assert not report["warnings"] or not ROOT
                # The host's environment never reached the template, so not its children either.
                assert "SCRIPTGATE_ADMIN_TOKEN" not in w.info["pre"]["environ"]
            # Confinement holds after fork exactly as after a fresh start.
            for name in ("fork", "exec", "socket_inet", "open_read", "kill_parent"):
                r = await pool._probe(name)
                assert r["allowed"] is False, (name, r)
            r = await pool._probe("ppid")
            assert r["value"] == tpl
            res = await call(pool, "def handle(req):\n    return deny(1234, 'no')\n")
            assert res.verdict == "deny"
            if ROOT:
                # The template forks at a lower priority (its children start there, before
                # the host knows their pid); ready workers run at the host's.
                base = os.getpriority(os.PRIO_PROCESS, 0)
                assert os.getpriority(os.PRIO_PROCESS, tpl) == min(19, base + 10)
                await until(lambda: len(pool._workers) == 2 and all(w.state == "idle" for w in pool._workers))
                assert all(os.getpriority(os.PRIO_PROCESS, w.pid) == base for w in pool._workers)

    asyncio.run(main())


def test_recycled_workers_come_from_the_same_template() -> None:
    async def main() -> None:
        async with WorkerPool(size=2, max_calls_per_worker=2) as pool:
            tpl = template_pid(pool)
            for _ in range(20):
                res = await call(pool, "def handle(req):\n    return allow()\n")
                assert res.error is None, res.error
            await until(lambda: pool.stats()["live"] == 2 and pool.stats()["starting"] == 0)
            assert pool.recycled >= 5
            assert pool.template_starts == 1
            assert all(ppid(w.pid) == tpl for w in pool._workers)

    asyncio.run(main())


def test_forked_workers_do_not_share_random_state() -> None:
    # The collision check samples keys at random (sandbox/worker/containers.py); a script must not
    # learn the sample in one worker and find the same one in the next.
    async def main() -> None:
        async with WorkerPool(size=1, test_hooks=True) as pool:
            seen, pids = set(), set()
            for _ in range(4):
                await until(lambda: pool.stats()["idle"] == 1)
                victim = next(iter(pool._workers))
                pids.add(victim.pid)
                r = await pool._probe("collision_random")
                seen.add(r["value"])
                victim.kill("recycle: test")
            assert len(pids) == 4 and len(seen) == 4
            assert pool.template_starts == 1

    asyncio.run(main())


def test_template_death_kills_its_workers_and_the_pool_recovers() -> None:
    async def main() -> None:
        async with WorkerPool(size=2) as pool:
            old_tpl = template_pid(pool)
            old_workers = {w.pid for w in pool._workers}
            os.kill(old_tpl, signal.SIGKILL)
            # Its workers die with it (parent-death signal) and are replaced.
            await until(lambda: pool.template_starts == 2 and pool._forker is not None)
            await until(lambda: pool.stats()["idle"] == 2)
            assert not old_workers & {w.pid for w in pool._workers}
            for pid in old_workers:
                await until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in
                            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
            res = await call(pool, "def handle(req):\n    return allow()\n")
            assert res.error is None
            # Replacements started while it was down came directly; later ones from the new one.
            for w in list(pool._workers):
                w.kill("recycle: test")
            await until(lambda: pool.stats()["idle"] == 2)
            assert all(ppid(w.pid) == template_pid(pool) != old_tpl for w in pool._workers)

    asyncio.run(main())


def test_a_template_that_does_not_start_means_direct_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise forker_mod.ForkError("refused by the test")

    monkeypatch.setattr(forker_mod.Forker, "start", refuse)

    async def main() -> None:
        async with WorkerPool(size=2, max_calls_per_worker=2) as pool:
            assert pool._forker is None and pool.template_starts == 0
            for _ in range(6):
                res = await call(pool, "def handle(req):\n    return allow()\n")
                assert res.error is None
            assert all(ppid(w.pid) == os.getpid() for w in pool._workers)

    asyncio.run(main())


def test_no_template_when_disabled() -> None:
    async def main() -> None:
        async with WorkerPool(size=1, fork_template=False) as pool:
            assert pool._forker is None
            assert ppid(next(iter(pool._workers)).pid) == os.getpid()

    asyncio.run(main())


def test_closing_the_pool_stops_the_template() -> None:
    async def main() -> int:
        pool = WorkerPool(size=1)
        await pool.start()
        tpl = template_pid(pool)
        await pool.close()
        return tpl

    tpl = asyncio.run(main())
    assert not Path(f"/proc/{tpl}").exists()


def test_a_wedged_template_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # A template that stops answering (SIGSTOP here) must not hold up new workers: the fork
    # request times out, the worker starts directly and a new template replaces the old one.
    monkeypatch.setattr(forker_mod, "FORK_TIMEOUT_S", 0.5)

    async def main() -> None:
        async with WorkerPool(size=1) as pool:
            old_tpl = template_pid(pool)
            os.kill(old_tpl, signal.SIGSTOP)
            next(iter(pool._workers)).kill("recycle: test")
            await until(lambda: pool.stats()["idle"] == 1)
            res = await call(pool, "def handle(req):\n    return allow()\n")
            assert res.error is None
            await until(lambda: pool.template_starts == 2 and pool._forker is not None)
            assert template_pid(pool) != old_tpl
            assert not Path(f"/proc/{old_tpl}").exists()  # killed and reaped

    asyncio.run(main())
