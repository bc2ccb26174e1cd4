"""Writes whose answer the script drops are sent without waiting (sandbox.policy.unawaited_writes).

The contract: the worker does not wait a round trip for ``kv.incr(k)`` as a statement of its
own in ``handle``; the host still runs the call's KV operations in the order the script made
them, finishes every write before it takes the call's result (so no reply gets ahead of a
write), and a write that fails fails the call, with no later KV operation taking effect.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
from typing import Any

import orjson
import pytest

from sandbox.api import EXCEPTION, UNAVAILABLE, Budgets, KVRefused, KVUnavailable
from sandbox.host.pool import WorkerPool
from sandbox.host.workerhandle import IDLE
from sandbox.policy import ScriptPolicy, _bound_names, unawaited_writes
from server.service.state import kv_caller
from server.store.connect import open_store
from tests.timing import FAR_S, SLACK_S


def _compiled(source: str) -> str:
    tree = ast.parse(source)
    policy = ScriptPolicy(_bound_names(tree), unawaited_writes(tree))
    tree = policy.visit(tree)
    assert policy.issues == []
    return ast.unparse(tree)


def test_only_dropped_writes_in_handles_own_blocks_are_not_awaited() -> None:
    code = _compiled("""
def helper():
    kv.incr("in-a-helper")

def handle(req):
    kv.incr("plain")
    kv.delete("constant")
    if req:
        kv.sadd("in-if", "a")
    for u in req:
        kv.hset("in-for", u, "1")
    while False:
        kv.expire("in-while", 5)
    n = kv.incr("used")
    log(kv.incr("an-argument"))
    kv.get("a-read")
    kv.incr(*["starred"])
    try:
        kv.incr("in-try")
    except KVError:
        pass
    return allow()
""")
    for name in ("plain", "constant", "in-if", "in-for", "in-while"):
        assert f"_nr_('{name}'" in code, name
    for name in ("in-a-helper", "used", "an-argument", "in-try"):
        assert f"_kv_incr_('{name}'" in code, name
    assert "_kv_get_k_('a-read')" in code and "_apply_(_kv_incr_" in code


def test_a_script_that_binds_kv_waits_for_everything() -> None:
    code = _compiled("""
def handle(req, kv=None):
    kv.incr("x")
""")
    assert "_nr_" not in code


# --- through a worker pool ---------------------------------------------------------------------


class RecordingKV:
    """A KV store that records the order of operations; ``gate`` holds writes back."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, list[Any]]] = []
        self.data: dict[str, int] = {}
        self.gate: asyncio.Event | None = None
        self.fail: dict[str, Exception] = {}

    async def __call__(self, op: str, args: list[Any]) -> Any:
        if op in self.fail:
            raise self.fail[op]
        if self.gate is not None and op != "get":
            await self.gate.wait()
        self.ops.append((op, args))
        if op == "incr":
            self.data[args[0]] = self.data.get(args[0], 0) + args[1]
            return self.data[args[0]]
        if op == "get":
            value = self.data.get(args[0])
            return None if value is None else str(value)
        return 1


COUNT = """
def handle(req):
    kv.incr("n")
    kv.incr("n", 2)
    kv.sadd("s", "a")
    if req.get("read"):
        return allow(groupName=str(kv.get("n")))
    return allow()
"""


async def _run(pool: WorkerPool, kv: Any, source: str, payload: dict[str, Any]) -> Any:
    return await pool.run(source=source, sha256=hashlib.sha256(source.encode()).hexdigest(),
                          payload_json=orjson.dumps(payload), budgets=Budgets(), kv=kv,
                          deadline=asyncio.get_running_loop().time() + FAR_S)


def test_writes_run_in_order_before_later_reads() -> None:
    async def scenario() -> None:
        kv = RecordingKV()
        async with WorkerPool(size=1) as pool:
            r = await _run(pool, kv, COUNT, {"read": True})
            assert r.fields == {"groupName": "3"} and r.kv_ops == 4
            assert [op for op, _ in kv.ops] == ["incr", "incr", "sadd", "get"]

    asyncio.run(scenario())


def test_the_result_waits_for_the_writes_but_the_worker_does_not() -> None:
    async def scenario() -> None:
        kv = RecordingKV()
        kv.gate = asyncio.Event()
        async with WorkerPool(size=1) as pool:
            call = asyncio.ensure_future(_run(pool, kv, COUNT, {}))
            (worker,) = pool._workers
            while worker.calls == 0 or worker.state != IDLE:
                await asyncio.sleep(0.001)  # the worker is done and free, its writes held back
            assert not call.done() and kv.ops == []
            # Another call runs on the worker meanwhile; its read waits for its own writes only.
            kv.gate.set()
            r = await call
            assert r.verdict == "allow" and kv.data == {"n": 3} and len(kv.ops) == 3

    asyncio.run(scenario())


def test_writes_not_done_by_the_deadline_fail_the_call_not_the_worker() -> None:
    async def scenario() -> None:
        kv = RecordingKV()
        kv.gate = asyncio.Event()  # never set: the writes hang
        async with WorkerPool(size=1) as pool:
            loop = asyncio.get_running_loop()
            r = await pool.run(source=COUNT, sha256=hashlib.sha256(COUNT.encode()).hexdigest(),
                               payload_json=b"{}", budgets=Budgets(wall_ms=200), kv=kv, deadline=loop.time() + FAR_S)
            assert r.verdict == "error" and "KV writes were not done in time" in r.error.message
            assert pool.stats()["killed"] == 0
            kv.gate.set()
            assert (await _run(pool, kv, COUNT, {"read": True})).verdict == "modify"

    asyncio.run(scenario())


@pytest.mark.parametrize(("exc", "kind", "text"), [
    (KVRefused("kv.incr: the value at 'n' is not an integer"), EXCEPTION,
     "KVError: kv.incr: the value at 'n' is not an integer"),
    (KVUnavailable("the KV store is unavailable"), UNAVAILABLE, "KV backend unavailable (kv.incr)"),
])
def test_a_failed_write_fails_the_call_and_nothing_after_it_happens(exc: Exception, kind: str, text: str) -> None:
    async def scenario() -> None:
        kv = RecordingKV()
        kv.fail["incr"] = exc
        async with WorkerPool(size=1) as pool:
            r = await _run(pool, kv, COUNT, {"read": True})
            assert r.verdict == "error" and r.error.kind == kind and r.error.message == text
            assert kv.ops == []  # neither the sadd nor the get ran
            kv.fail.clear()
            r = await _run(pool, kv, COUNT, {"read": True})  # the worker is fine afterwards
            assert r.fields == {"groupName": "3"}

    asyncio.run(scenario())


def test_a_flood_of_writes_stops_at_the_kv_budget() -> None:
    source = """
def handle(req):
    for i in range(100000):
        kv.incr("n")
"""

    async def scenario() -> None:
        kv = RecordingKV()
        async with WorkerPool(size=1) as pool:
            r = await pool.run(source=source, sha256="flood", payload_json=b"{}", budgets=Budgets(kv_ops=50), kv=kv,
                               deadline=asyncio.get_running_loop().time() + FAR_S)
            assert r.verdict == "error" and r.error.message == "budget exceeded: kv_ops (limit 50) (line 4)"
            assert kv.data["n"] == 50  # every write the budget allowed, and no more
            r = await _run(pool, kv, COUNT, {"read": True})
            assert r.fields == {"groupName": "53"}

    asyncio.run(scenario())


def test_writes_reach_redis_before_the_call_returns(redis_standalone: Any, store_prefix: str) -> None:
    raw = redis_standalone.client()

    async def scenario() -> None:
        store = await open_store(redis_standalone.url, prefix=store_prefix, op_timeout=SLACK_S)
        try:
            kv = kv_caller(store)("ns")
            async with WorkerPool(size=2) as pool:
                results = await asyncio.gather(*(_run(pool, kv, COUNT, {}) for _ in range(40)))
                assert all(r.verdict == "allow" for r in results)
                assert raw.get(store.keys.kv("ns", "n")) == "120"  # no write lost, none pending
                raw.set(store.keys.kv("ns", "n"), "text")
                r = await _run(pool, kv, COUNT, {"read": True})
                assert r.error.kind == EXCEPTION and "not an integer" in r.error.message
                assert raw.smembers(store.keys.kv("ns", "s")) == {"a"}
        finally:
            await store.close()

    asyncio.run(scenario())
