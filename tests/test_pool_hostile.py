"""The host treats workers as hostile: garbage, oversized frames, floods and lies never
crash it, never make it call the store with unchecked arguments, and always end with the
offending worker killed and replaced."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.api import BUDGET, INVALID_RESULT, Budgets
from sandbox.host.pool import WorkerPool, WorkerStartError
from tests.timing import FAR_S, SLACK_S

FAKE = str(Path(__file__).resolve().parent / "pool_fake_worker.py")


def fake_pool(mode: str, **kw: Any) -> WorkerPool:
    kw.setdefault("size", 1)
    kw.setdefault("start_timeout", FAR_S)
    return WorkerPool(worker_cmd=[sys.executable, FAKE, mode], **kw)


class RecordingKV:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []

    async def __call__(self, op: str, args: list) -> Any:
        self.calls.append((op, args))
        return 1 if op == "incr" else None


# A wall budget and deadline far beyond SLACK_S: a call answered within SLACK_S was ended by
# the host's detection, not by one of these limits.
FAR_BUDGETS = Budgets(wall_ms=int(1000 * FAR_S))


async def one_run(pool: WorkerPool, kv: Any = None, budgets: Budgets | None = None, timeout: float = FAR_S):
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await pool.run(
        source="def handle(req):\n    return None\n",
        sha256="fake",
        payload_json=b'{"a": 1}',
        budgets=budgets or FAR_BUDGETS,
        kv=kv or RecordingKV(),
        deadline=loop.time() + timeout,
    )
    return result, loop.time() - started


async def until_replaced(pool: WorkerPool, killed: int) -> None:
    """The replacement is spawned in the background: wait for its readiness event."""
    while not (pool.stats()["killed"] >= killed and pool.stats()["idle"] >= 1):
        await asyncio.sleep(0.01)


def test_echo_fake_is_a_baseline() -> None:
    async def main() -> None:
        async with fake_pool("echo") as pool:
            result, _ = await one_run(pool)
            assert result.verdict == "modify" and result.fields == {"echo": '{"a": 1}'}
            assert pool.stats()["killed"] == 0

    asyncio.run(main())


@pytest.mark.parametrize(
    "mode",
    ["garbage", "oversize", "bad_result", "bad_verdict", "wrong_id", "with_body"],
)
def test_malformed_messages_kill_the_worker(mode: str) -> None:
    async def main() -> None:
        async with fake_pool(mode) as pool:
            result, took = await one_run(pool)
            assert result.verdict == "error"
            assert result.error is not None and result.error.kind == INVALID_RESULT, result
            assert took < SLACK_S, took
            stats = pool.stats()
            assert stats["killed"] == 1
            # And again on the replacement: the host keeps serving.
            await until_replaced(pool, 1)
            result, _ = await one_run(pool)
            assert result.error is not None and result.error.kind == INVALID_RESULT

    asyncio.run(main())


def test_oversized_frame_is_refused_before_buffering() -> None:
    async def main() -> None:
        async with fake_pool("oversize") as pool:
            result, took = await one_run(pool)
            assert result.error is not None and result.error.kind == INVALID_RESULT
            assert took < SLACK_S, took  # refused on the length prefix, not at the FAR_S limits

    asyncio.run(main())


def test_kv_flood_kills_the_worker_and_does_not_reach_the_store() -> None:
    async def main() -> None:
        kv = RecordingKV()
        async with fake_pool("kv_flood") as pool:
            result, _ = await one_run(pool, kv)
            assert result.verdict == "error" and result.error is not None
            assert pool.stats()["killed"] == 1
            # At most the first frame (the one that was asked for) reached the store.
            assert len(kv.calls) <= 1

    asyncio.run(main())


def test_writes_not_waited_for_are_bounded_by_the_budget_and_the_inbox() -> None:
    async def main() -> None:
        kv = RecordingKV()
        async with fake_pool("nr_flood") as pool:
            result, _ = await one_run(pool, kv, Budgets(kv_ops=50, wall_ms=int(1000 * FAR_S)))
            assert result.error is not None and result.error.kind == BUDGET
            assert "kv operations (limit 50)" in result.error.message
            assert len(kv.calls) <= 50 and pool.stats()["killed"] == 1

    asyncio.run(main())


def test_a_read_not_waited_for_fails_the_call_and_a_second_done_kills() -> None:
    async def main() -> None:
        kv = RecordingKV()
        async with fake_pool("nr_then_extra") as pool:
            (worker,) = pool._workers
            result, _ = await one_run(pool, kv)
            assert result.error is not None
            assert all(op == "incr" for op, _ in kv.calls)  # the "get" never reached the store
            # The second done is refused during the call or, if it comes later, as unsolicited.
            await asyncio.wait_for(asyncio.shield(worker.exited), FAR_S)
            assert worker.killed_reason is not None and worker.killed_reason.startswith("protocol")

    asyncio.run(main())


def test_kv_ops_over_budget_enforced_by_the_host() -> None:
    async def main() -> None:
        kv = RecordingKV()
        async with fake_pool("kv_over_budget") as pool:
            result, _ = await one_run(pool, kv, Budgets(kv_ops=5, wall_ms=int(1000 * FAR_S)))
            assert result.error is not None and result.error.kind == BUDGET
            assert "kv operations (limit 5)" in result.error.message
            assert len(kv.calls) == 5
            assert pool.stats()["killed"] == 1

    asyncio.run(main())


def test_kv_arguments_are_revalidated_by_the_host() -> None:
    async def main() -> None:
        kv = RecordingKV()
        async with fake_pool("bad_kv") as pool:
            result, _ = await one_run(pool, kv)
            replies = [orjson.loads(line) for line in result.logs]
            # Five refusals answered as KV errors without touching the store...
            for reply in replies[:5]:
                assert reply["t"] == "kvr" and reply["err"] == "kv", reply
            assert "unknown" in replies[0]["msg"]
            assert "control characters" in replies[1]["msg"]
            # ...and only the valid call reached it.
            assert replies[5] == {"t": "kvr", "id": replies[5]["id"], "ok": None}
            assert kv.calls == [("get", ["fine"])]
            assert pool.stats()["killed"] == 0

    asyncio.run(main())


def test_unsolicited_message_kills_an_idle_worker() -> None:
    async def main() -> None:
        pool = fake_pool("unsolicited")
        # The worker misbehaves right after "ready": killed, replaced by another that
        # does the same; the pool keeps trying without crashing or blocking the loop.
        await pool.start()
        try:
            while pool.stats()["killed"] < 3:
                await asyncio.sleep(0.01)
            result, _ = await one_run(pool, budgets=Budgets(), timeout=0.5)
            assert result.verdict == "error"
        finally:
            await pool.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["exit_mid_call", "segv"])
def test_worker_death_fails_only_that_call(mode: str) -> None:
    async def main() -> None:
        async with fake_pool(mode) as pool:
            result, took = await one_run(pool)
            assert result.error is not None and result.error.kind == BUDGET
            if mode == "segv":
                assert "SIGSEGV" in result.error.message
            else:
                assert "exited with status 3" in result.error.message
            assert took < SLACK_S, took
            assert pool.stats()["killed"] == 1

    asyncio.run(main())


def test_worker_that_closes_its_channel_but_lingers_is_killed() -> None:
    async def main() -> None:
        async with fake_pool("close_and_linger") as pool:
            result, took = await one_run(pool)
            assert result.error is not None and result.error.kind == BUDGET
            assert "stopped responding" in result.error.message
            assert took < SLACK_S, took

    asyncio.run(main())


def test_silent_worker_hits_the_wall_limit() -> None:
    async def main() -> None:
        async with fake_pool("silent", grace_ms=50) as pool:
            result, took = await one_run(pool, budgets=Budgets(wall_ms=200))
            assert result.error is not None and result.error.kind == BUDGET
            assert result.error.message == "budget exceeded: wall time (limit 200 ms)"
            assert 0.2 <= took < 0.2 + SLACK_S, took  # the deadline is FAR_S away
            assert pool.stats()["killed"] == 1

    asyncio.run(main())


def test_silent_worker_check_times_out_as_a_compile_issue() -> None:
    async def main() -> None:
        async with fake_pool("silent") as pool:
            loop = asyncio.get_running_loop()
            started = loop.time()
            issues = await pool.check("def handle(req):\n    return None\n", timeout=0.3)
            assert loop.time() - started < 0.3 + SLACK_S
            assert len(issues) == 1 and issues[0].line == 1 and "time limit" in issues[0].message
            assert pool.stats()["killed"] == 1

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["no_ready", "fatal"])
def test_workers_that_never_become_ready_fail_start(mode: str) -> None:
    async def main() -> None:
        pool = fake_pool(mode, size=2, start_timeout=0.5)
        with pytest.raises(WorkerStartError):
            await pool.start()
        await pool.close()
        assert pool.stats()["live"] == 0

    asyncio.run(main())
