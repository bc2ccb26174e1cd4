"""Sharing the sandbox between commands: per-command shares and queues, the penalty box,
extra workers while calls wait on a stalled KV store (sandbox/host/fairness.py, sandbox/host/pool.py).

No timing luck: blocked calls wait on a Gate (a KV call the test releases), and every
wait is for an event or a state the pool reaches by itself."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sandbox.api import BUDGET, Budgets, RunResult
from sandbox.host.fairness import BoxSettings, FairQueue, PenaltyBox
from sandbox.host.pool import WorkerPool

ECHO = "def handle(req):\n    return allow(i=req['i'])\n"
GATED = "def handle(req):\n    kv.get('gate')\n    return allow(passed=True)\n"
SPIN = "def handle(req):\n    while True:\n        pass\n"


class Gate:
    """A KV entry point that blocks until released; counts the calls that reached it."""

    def __init__(self) -> None:
        self.reached = 0
        self.changed = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, op: str, args: list) -> Any:
        self.reached += 1
        self.changed.set()
        await self.release.wait()
        return None

    async def wait_reached(self, n: int) -> None:
        while self.reached < n:
            self.changed.clear()
            await self.changed.wait()


async def nokv(op: str, args: list) -> Any:
    raise AssertionError("no KV expected")


def call(pool: WorkerPool, source: str, key: str, *, i: int = 0, kv: Any = nokv,
         budgets: Budgets | None = None, timeout: float = 10.0) -> asyncio.Future[RunResult]:
    loop = asyncio.get_running_loop()
    return asyncio.ensure_future(pool.run(
        source=source, sha256=hashlib.sha256(source.encode()).hexdigest(),
        payload_json=orjson.dumps({"i": i}), budgets=budgets or Budgets(), kv=kv,
        deadline=loop.time() + timeout, key=key))


async def until(predicate: Any) -> None:
    # The pool's background spawns and kills have no event of their own: poll its state.
    while not predicate():
        await asyncio.sleep(0.01)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


# --- FairQueue and PenaltyBox on their own ---------------------------------------------


class _F:
    def __init__(self, name: str) -> None:
        self.name = name
        self.finished = False

    def done(self) -> bool:
        return self.finished


def test_fair_queue_caps_each_key_and_serves_the_least_served_first() -> None:
    q: FairQueue[_F] = FairQueue(cap=2)
    assert q.may_take("a")
    q.hold("a")
    q.hold("a")
    assert not q.may_take("a") and q.may_take("b")
    for n in range(3):
        q.push("a", _F(f"a{n}"))
    q.push("b", _F("b0"))
    q.push("c", _F("c0"))
    assert q.total_queued() == 5
    # "a" is at its cap: b and c first, in arrival order.
    key, w = q.next_waiter()
    assert (key, w.name) == ("b", "b0")
    q.hold("b")
    key, w = q.next_waiter()
    assert (key, w.name) == ("c", "c0")
    q.hold("c")
    assert q.next_waiter() is None  # only "a" waits, and it holds its share
    q.unhold("a")
    key, w = q.next_waiter()
    assert (key, w.name) == ("a", "a0")  # FIFO within a key
    q.hold("a")
    q.unhold("a")
    q.unhold("a")
    gone = q._queues["a"][0]
    gone.finished = True  # a waiter that gave up is skipped
    key, w = q.next_waiter()
    assert w.name == "a2"
    q.unhold("zzz")  # unknown key: no error, no negative count
    assert "zzz" not in q.held


def test_fair_queue_splits_between_two_saturating_keys() -> None:
    q: FairQueue[_F] = FairQueue(cap=3)
    for n in range(10):
        q.push("a", _F(f"a{n}"))
        q.push("b", _F(f"b{n}"))
    got = []
    for _ in range(4):  # four workers come free
        key, _w = q.next_waiter()
        q.hold(key)
        got.append(key)
    assert sorted(got) == ["a", "a", "b", "b"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_penalty_box_boxes_backs_off_and_forgets() -> None:
    clock = Clock()
    boxes: list[tuple[str, float, int]] = []
    box = PenaltyBox(BoxSettings(strikes=3, window=10, base_s=1.0, max_s=4.0, clean_reset=5), clock,
                     on_box=lambda k, s, n, r: boxes.append((k, s, n)))
    for _ in range(2):
        assert box.admit("hog") is None
        box.record("hog", True, "budget exceeded: wall time")
    assert box.admit("hog") is None and box.boxed_now() == {}
    box.record("hog", True, "budget exceeded: wall time")  # third strike
    assert boxes == [("hog", 1.0, 1)]
    refusal = box.admit("hog")
    assert refusal is not None and refusal.startswith("penalty box: hog") and "wall time" in refusal
    assert box.admit("other") is None  # only the offender
    assert box.refused["hog"] == 1 and box.snapshot()["boxed"]["hog"]["box_number"] == 1

    # The box opens: probation, one call at a time; it fails -> boxed twice as long.
    clock.now += 1.0
    assert box.admit("hog") is None
    assert "probation" in (box.admit("hog") or "")
    box.record("hog", True, "budget exceeded: steps")
    assert boxes[-1] == ("hog", 2.0, 2)
    clock.now += 2.0
    assert box.admit("hog") is None
    box.record("hog", True)
    clock.now += 4.0
    assert box.admit("hog") is None
    box.record("hog", True)
    assert boxes[-1] == ("hog", 4.0, 4)  # capped at max_s

    # The probation call ends clean: free again; clean calls in a row forget the history.
    clock.now += 4.0
    assert box.admit("hog") is None
    box.record("hog", False)
    assert box.admit("hog") is None and box.admit("hog") is None  # no longer one at a time
    for _ in range(5):
        box.record("hog", False)
    assert box.snapshot()["boxed_total"] == 4 and "hog" not in box._entries
    for _ in range(3):
        box.record("hog", True)
    assert boxes[-1] == ("hog", 1.0, 1)  # back to the first step


def test_penalty_box_counts_strikes_in_a_window_and_spares_anonymous_callers() -> None:
    clock = Clock()
    box = PenaltyBox(BoxSettings(strikes=3, window=4), clock)
    for struck in (True, False, False, True, False, False, True):  # never 3 in any 4
        box.record("flaky", struck)
    assert box.boxed_now() == {}
    for _ in range(10):
        box.record("", True)
    assert box.admit("") is None and box.boxed_now() == {}
    # A call admitted on probation that never ran frees the probation slot.
    for _ in range(3):
        box.record("x", True)
    clock.now += 10
    assert box.admit("x") is None
    box.cancel("x")
    assert box.admit("x") is None


# --- the pool ---------------------------------------------------------------------------


def test_a_saturating_command_waits_behind_itself_only(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        async with WorkerPool(size=3, kv_extra=0) as pool:
            assert pool.share == 2
            gate = Gate()
            hogs = [call(pool, GATED, "hog", kv=gate) for _ in range(6)]
            await gate.wait_reached(2)
            await until(lambda: pool.fairness()["commands"]["hog"] == {"held": 2, "queued": 4, "namespace": None})
            # The third worker stays free for everyone else, as many calls as they like.
            for n in range(20):
                assert (await call(pool, ECHO, "victim", i=n)).fields == {"i": n}
            assert gate.reached == 2
            gate.release.set()
            for h in hogs:
                assert (await h).fields == {"passed": True}
            assert pool.fairness()["commands"] == {}

    loop.run_until_complete(main())


def test_queues_and_their_limits_are_per_command(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        async with WorkerPool(size=1, max_queue=2, kv_extra=0) as pool:
            gate = Gate()
            holder = call(pool, GATED, "a", kv=gate)
            await gate.wait_reached(1)
            queued_a = [call(pool, GATED, "a", kv=gate) for _ in range(2)]
            await until(lambda: pool.stats()["queue"] == 2)
            over = await call(pool, GATED, "a", kv=gate)
            assert over.error is not None and over.error.message == "sandbox overloaded"
            # "b" has a queue of its own, and is served before a's backlog.
            b = call(pool, ECHO, "b", i=7)
            await until(lambda: pool.stats()["queue"] == 3)
            gate.release.set()
            assert (await b).fields == {"i": 7}
            assert (await holder).fields == {"passed": True}
            for q in queued_a:
                assert (await q).fields == {"passed": True}

    loop.run_until_complete(main())


def test_extra_workers_while_calls_wait_on_a_stalled_store(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        async with WorkerPool(size=2, share=2, kv_extra=2, kv_stall_ms=20) as pool:
            gate = Gate()  # a Redis stall: every KV call hangs
            stalled = [call(pool, GATED, f"kv{n}", kv=gate) for n in range(2)]
            await gate.wait_reached(2)
            # Both workers wait on the store; a command without KV calls still runs.
            for n in range(5):
                assert (await call(pool, ECHO, "nokv", i=n)).fields == {"i": n}
            assert pool.stats()["extra_spawned"] >= 1 and pool.stats()["live"] <= 4
            gate.release.set()
            for s in stalled:
                assert (await s).fields == {"passed": True}
            # Once the stall is over the pool shrinks back to its size.
            await until(lambda: pool.stats()["live"] == 2 and pool.stats()["kv_waiting"] == 0)

    loop.run_until_complete(main())


def test_penalty_box_refuses_without_taking_a_worker(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        box = BoxSettings(strikes=2, window=5, base_s=600.0, max_s=600.0)
        async with WorkerPool(size=2, box=box) as pool:
            tight = Budgets(steps=1000)
            for _ in range(2):
                r = await call(pool, SPIN, "hog", budgets=tight)
                assert r.error is not None and r.error.kind == BUDGET and "steps" in r.error.message
            calls_before = pool.stats()["calls"]
            r = await call(pool, SPIN, "hog", budgets=tight)
            assert r.error is not None and r.error.kind == BUDGET
            assert r.error.message.startswith("penalty box: hog")
            assert pool.stats()["calls"] == calls_before  # no worker was used
            assert (await call(pool, ECHO, "victim", i=1)).fields == {"i": 1}
            snap = pool.fairness()["penalty_box"]
            assert list(snap["boxed"]) == ["hog"] and snap["refused_total"] == 1
            assert 500 < snap["boxed"]["hog"]["seconds_left"] <= 600

    loop.run_until_complete(main())


def test_a_call_cut_by_its_request_deadline_is_not_a_strike(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        box = BoxSettings(strikes=1, window=5, base_s=600.0, max_s=600.0)
        async with WorkerPool(size=1, box=box) as pool:
            gate = Gate()
            # The deadline (not the 1 s wall budget) ends it while it waits on the store.
            r = await call(pool, GATED, "slowstore", kv=gate, timeout=0.3)
            assert r.error is not None and "request deadline" in r.error.message
            assert pool.fairness()["penalty_box"]["boxed"] == {}
            gate.release.set()

    loop.run_until_complete(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring a worker's CPU priority needs root")
def test_long_calls_and_suspect_commands_run_at_a_lower_priority(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        async with WorkerPool(size=2, box=BoxSettings(strikes=5)) as pool:
            gate = Gate()
            held = call(pool, GATED, "slow", kv=gate)  # a long call (waits on the store)
            await gate.wait_reached(1)
            await until(lambda: pool.stats()["demoted"] == 1)
            pid = next(w.pid for w in pool._workers if w.key == "slow")
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE  # runs only on CPU nobody wants
            gate.release.set()
            assert (await held).fields == {"passed": True}
            assert os.sched_getscheduler(pid) == os.SCHED_OTHER  # restored for the next call
            assert os.getpriority(os.PRIO_PROCESS, pid) == base
            # A command with a budget hit on record starts its next calls lowered.
            r = await call(pool, SPIN, "hog", budgets=Budgets(steps=1000))
            assert r.error is not None and r.error.kind == BUDGET
            assert pool.box.suspect("hog") and not pool.box.suspect("slow")

    loop.run_until_complete(main())


def test_calls_queued_before_the_box_closed_do_not_run(loop: asyncio.AbstractEventLoop) -> None:
    """They are refused, one per event-loop turn: refusing a second's worth of queued calls
    at once would hold every other callback while they are answered."""
    async def main() -> None:
        box = BoxSettings(strikes=1, base_s=600.0, max_s=600.0)
        async with WorkerPool(size=1, box=box, kv_extra=0) as pool:
            gate = Gate()
            holder = call(pool, GATED, "b", kv=gate)
            await gate.wait_reached(1)
            turns, stop, seen = 0, False, []

            async def ticker() -> None:
                nonlocal turns
                while not stop:
                    turns += 1
                    await asyncio.sleep(0)

            tick = asyncio.ensure_future(ticker())
            queued = [call(pool, ECHO, "hog", i=n) for n in range(3)]
            for q in queued:
                q.add_done_callback(lambda _f: seen.append(turns))
            await until(lambda: pool.stats()["queue"] == 3)
            pool.box.record("hog", True, "budget exceeded: wall time")  # boxed meanwhile
            calls = pool.stats()["calls"]
            gate.release.set()
            assert (await holder).fields == {"passed": True}
            for q in queued:
                r = await q
                assert r.error is not None and r.error.message.startswith("penalty box: hog")
            stop = True
            await tick
            assert len(set(seen)) == 3, seen
            assert pool.stats()["calls"] == calls
            assert (await call(pool, ECHO, "b", i=1)).fields == {"i": 1}

    loop.run_until_complete(main())


def test_a_queued_call_too_close_to_its_deadline_gets_no_worker(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        async with WorkerPool(size=1, kv_extra=0) as pool:
            pool.min_start = 3600.0  # every queued call is "too close" to its deadline
            gate = Gate()
            holder = call(pool, GATED, "a", kv=gate)
            await gate.wait_reached(1)
            late = call(pool, ECHO, "b", i=1)
            await until(lambda: pool.stats()["queue"] == 1)
            gate.release.set()
            assert (await holder).fields == {"passed": True}
            r = await late
            assert r.error is not None and "no sandbox worker was free" in r.error.message
            assert pool.stats()["killed"] == 0

    loop.run_until_complete(main())


def test_namespaces_share_like_commands() -> None:
    q: FairQueue[_F] = FairQueue(cap=3)
    for key, group in (("a1", "team-a"), ("a2", "team-a"), ("a3", "team-a")):
        q.set_group(key, group)
        assert q.may_take(key)  # one namespace seen so far: no namespace cap
        q.hold(key)
    q.set_group("a4", "team-a")
    assert q.may_take("a4")  # still one namespace: a lone team may use the whole pool
    q.set_group("b1", "team-b")
    assert not q.may_take("a4") and q.may_take("b1")  # two teams: team-a is at its share
    q.unhold("a3")
    for n in range(2):
        q.push("a4", _F(f"a4-{n}"))
    q.push("b1", _F("b1-0"))
    key, _w = q.next_waiter()
    assert key == "b1"  # the team holding fewest first
    q.hold(key)
    key, _w = q.next_waiter()
    assert key == "a4"
    q.hold(key)
    assert q.group_held == {"team-a": 3, "team-b": 1} and q.next_waiter() is None
    assert q.snapshot()["a4"] == {"held": 1, "queued": 1, "namespace": "team-a"}


def _knowing(pool: WorkerPool, source: str) -> set[Any]:
    sha = hashlib.sha256(source.encode()).hexdigest()
    return {w for w in pool._workers if sha in w.known}


def test_a_command_whose_worker_is_recycled_does_not_take_another_commands_worker_meanwhile(
        loop: asyncio.AbstractEventLoop) -> None:
    """The recycled worker stays in the command's share until its replacement is ready, so
    the command's next queued call waits for the replacement instead of taking the one
    worker its share leaves to the others (which then queue behind a fork)."""
    async def main() -> None:
        async with WorkerPool(size=2, box=BoxSettings(strikes=5)) as pool:
            assert (await call(pool, ECHO, "victim", i=1)).fields == {"i": 1}
            (victims,) = [_knowing(pool, ECHO)]
            tight = Budgets(steps=1000)
            first, second = call(pool, SPIN, "hog", budgets=tight), call(pool, SPIN, "hog", budgets=tight)
            for r in (await first, await second):
                assert r.error is not None and r.error.kind == BUDGET
            assert pool.recycled >= 1
            assert all(w.alive for w in victims) and not _knowing(pool, SPIN) & victims
            await until(lambda: not pool._debts)  # settled as the replacements come up
            assert not pool._fair.held
            assert (await call(pool, ECHO, "victim", i=2)).fields == {"i": 2}

    loop.run_until_complete(main())


def test_a_new_script_takes_a_fresh_worker_before_another_scripts_warm_one(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        async with WorkerPool(size=3) as pool:
            assert (await call(pool, ECHO, "a", i=1)).fields == {"i": 1}
            other = "def handle(req):\n    return allow(j=req['i'])\n"
            assert (await call(pool, other, "b", i=2)).fields == {"j": 2}
            assert not _knowing(pool, ECHO) & _knowing(pool, other)

    loop.run_until_complete(main())


def test_a_boxed_commands_refusals_are_paced_and_pace_nobody_else(loop: asyncio.AbstractEventLoop) -> None:
    """Boxing must not turn a slow command into a fast one: each refusal waits
    ``refusal_delay_ms`` (without a worker), so a client that calls again as soon as it is
    answered cannot flood the HTTP process; other commands are not delayed."""
    async def main() -> None:
        box = BoxSettings(strikes=1, base_s=600.0, max_s=600.0, refusal_delay_ms=1000)
        async with WorkerPool(size=2, box=box) as pool:
            pool.box.record("hog", True, "budget exceeded: wall time")
            lp = asyncio.get_running_loop()
            started = lp.time()
            refused = call(pool, ECHO, "hog", i=1)
            other = await call(pool, ECHO, "quiet", i=2)
            assert other.fields == {"i": 2} and not refused.done()
            r = await refused
            assert r.error is not None and r.error.message.startswith("penalty box: hog")
            assert lp.time() - started >= 1.0
            assert pool.stats()["calls"] == 1  # the refused call never took a worker

    loop.run_until_complete(main())
