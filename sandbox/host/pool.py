"""Asyncio pool of pre-started sandbox worker processes (``sandbox.worker.main``).

Scripts never run in the host process. Each call is sent to an idle worker over its own
socketpair (``sandbox.protocol``); KV operations come back to the host, which owns the
store, as ``kv`` frames that it re-validates and answers. The host always answers on time:

* waiting for a free worker counts against the caller's ``deadline``;
* a call that has not finished by ``min(deadline, start + wall budget + grace)`` gets its
  worker SIGKILLed (reaped and replaced in the background) and a ``budget`` error;
* a worker that dies by itself (address-space limit, SIGXCPU, segfault) fails only the
  call it was running, and is replaced;
* a worker that breaks the protocol (oversized or malformed frames, messages it was not
  asked for, more KV operations than the budget) is killed on the spot. Workers are
  untrusted: nothing they send is acted on before its shape is checked.

Workers are recycled (killed quietly and replaced) after ``max_calls_per_worker`` calls
(each worker after its own share of 50-100% of it, so recycles do not coincide)
and after any call that ended in a budget, policy or invalid-result error, so a call that
misbehaved never shares a process with a later one.

The pool's parts, one file each: ``workerhandle`` (one worker process: start-up messages,
frames, kill, reaping), ``recycling`` (starting workers from the template or directly,
replacing and recycling them), ``kvrelay`` (serving ``kv`` frames), ``results`` (checking
what a worker reports), ``fairness`` (per-command queues and the penalty box). This module
hands out workers and runs calls on them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import random
import subprocess
from typing import Any

from sandbox import protocol
from sandbox.api import (
    BUDGET,
    INVALID_RESULT,
    UNAVAILABLE,
    Budgets,
    CompileIssue,
    RunResult,
    bounded,
)
from sandbox.host.deadline import Deadline
from sandbox.host.fairness import BoxSettings, FairQueue, PenaltyBox
from sandbox.host.forker import Forker
from sandbox.host.kvrelay import KVCall, Writes, kv_reply
from sandbox.host.recycling import SURPLUS, Recycling
from sandbox.host.results import Violation, describe_exit, parse_done, parse_issues, write_failed
from sandbox.host.workerhandle import BUSY, DEAD, IDLE, STARTING, Worker, WorkerGone, WorkerStartError, worker_env

log = logging.getLogger("scriptgate.sandbox")

_INV_ALL = protocol.encode({"t": protocol.INV, "all": True})

# Callers that name no command (tests, tools) share one key; admin checks have their own.
_ANON, _ADMIN = "", "\x00admin"


_EXPIRED: Any = object()  # a queued call's future at its deadline (no worker came)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_EXPIRED)


class _Waiter:
    """A caller queued for a worker (``FairQueue`` item)."""

    __slots__ = ("deadline", "fut", "refusal", "sha")

    def __init__(self, fut: asyncio.Future[Worker | None], sha: str, deadline: float) -> None:
        self.fut = fut
        self.sha = sha
        self.deadline = deadline
        self.refusal: str | None = None  # set with a None result: why it gets no worker

    def done(self) -> bool:
        return self.fut.done()


class WorkerPool(Recycling):
    """Pre-started sandbox workers; see the module docstring for the guarantees.

    Sharing between commands (``run(key=command)``; ``sandbox/host/fairness.py``):

    * Each command has its own FIFO queue and holds at most ``share`` workers at once
      (default ``size - 1``, at least 1). A command whose calls all burn their wall budget
      (``while True: pass``) fills only its own share and queue: every other command
      still finds a free worker, at once when it is the only other one busy. A free
      worker goes to the waiting command holding the fewest workers (max-min fairness),
      so several saturating commands split the pool evenly and a quiet one is served
      next. The queue limit (``max_queue``) is per command, so a flood overflows
      ("sandbox overloaded") only the command that floods. Once commands of two KV
      namespaces have called, a namespace (a team) too holds at most ``share`` workers
      and free workers go to the namespace holding fewest first.
    * The penalty box refuses, without taking a worker, the calls of a command that
      keeps hitting its budgets (3 of its last 10 calls by default): for 1 s, then 2, 4
      ... 60 s, one probation call at a time when the box opens. The refusal is a
      ``budget`` error, so the dispatcher answers with the command's failure policy. A
      command with a recent budget hit also runs at a lower CPU priority (when the host
      may restore it: root), so its spins do not slow other commands' workers on a host
      with fewer CPUs than workers.
    * A call waiting on the KV store keeps its worker (the script's state lives there:
      the worker cannot be handed to someone else mid-call). Instead, when callers are
      queued and some calls have been waiting on the store for more than ``kv_stall_ms``,
      the pool starts one extra worker per stalled call (at most ``kv_extra``, default
      ``size``): the stalled calls use no CPU, so extra processes cost memory, not CPU,
      and commands that make no KV calls keep running while Redis is slow. Extra workers
      are stopped as they come free once the stall is over. A stall of a single command
      is contained by its share already; the extras cover several stalled commands.
    """

    def __init__(
        self,
        size: int = 4,
        memory_mb: int = 512,
        max_calls_per_worker: int = 10_000,
        *,
        max_queue: int | None = None,
        grace_ms: int = 100,
        start_timeout: float = 15.0,
        script_cache: int = protocol.SCRIPT_CACHE_SIZE,
        worker_stderr: bool = False,
        spin_us: int = 0,
        recycles_per_s: float | None = None,
        test_hooks: bool = False,
        worker_cmd: list[str] | None = None,
        fork_template: bool = True,
        share: int | None = None,
        box: BoxSettings | None = None,
        kv_extra: int | None = None,
        kv_stall_ms: int = 50,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.memory_mb = memory_mb
        self.max_calls_per_worker = max_calls_per_worker
        self._rng = random.Random()
        self._base_nice: int | None = os.getpriority(os.PRIO_PROCESS, 0) if os.geteuid() == 0 else None
        self.max_queue = max_queue if max_queue is not None else max(64, 64 * size)
        self.grace = grace_ms / 1000
        self.start_timeout = start_timeout
        self.script_cache = script_cache
        self._stderr = None if worker_stderr else subprocess.DEVNULL
        self._test_hooks = test_hooks
        self.spin_us = spin_us  # see protocol.BlockingChannel; 0 suits busy or shared hosts
        # Recycling after every failed call must not become a fork bomb when one broken
        # script fails on every callback: at most this many error-triggered recycles per
        # second (token bucket, burst = size); beyond it the worker is reused, which the
        # runtime's clean stops allow. Deaths and wall-time kills are never rate limited.
        self.recycles_per_s = recycles_per_s if recycles_per_s is not None else float(size)
        self._recycle_tokens = float(size)
        self._recycle_stamp = 0.0
        self.recycle_skipped = 0
        self._worker_cmd = worker_cmd  # tests: a fake (hostile) worker
        # Workers are forked from a warmed-up template process (sandbox/worker/template.py) when
        # it is up: ~1 ms instead of ~0.2 s of CPU per start, so recycles do not stall
        # live callbacks. Without it (not started, dead, a fake worker) they start directly.
        self._use_template = fork_template and worker_cmd is None and hasattr(os, "pidfd_open")
        self._forker: Forker | None = None
        self._template_failures = 0
        self.template_starts = 0
        self._env = worker_env()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._workers: set[Worker] = set()
        self._idle: list[Worker] = []
        # Fair shares (see the class docstring): at most `share` workers per command.
        self.share = share if share is not None else max(1, size - 1)
        self._fair: FairQueue[_Waiter] = FairQueue(self.share)
        self.box = PenaltyBox(box or BoxSettings())
        # Workers started beyond `size` while calls wait on a stalled KV store.
        self.kv_extra = kv_extra if kv_extra is not None else size
        self.kv_stall = kv_stall_ms / 1000
        self._kv_waiting = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._pending = 0  # replacement or extra workers scheduled but not yet in _workers
        # Keys still charged for a worker their call used up (see _charge_replacement).
        self._debts: collections.deque[str] = collections.deque()
        self._refusing: set[str] = set()  # boxed keys whose queued calls are being refused
        self.demote_after = 0.05
        # A queued call whose deadline is closer than this gets no worker (see _dispatch).
        self.min_start = 0.02
        self._demote_timer: asyncio.TimerHandle | None = None
        self.demoted = 0
        self.extra_spawned = self.extra_stopped = 0
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)
        self._budget_wire: dict[Budgets, dict[str, int]] = {}
        self._started = False
        self._closing = False
        self._spawn_failures = 0
        self.spawned = self.killed = self.recycled = self.calls = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start ``size`` workers concurrently; return when all are ready."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        if self._use_template:
            await self._start_template()
        results = await asyncio.gather(*(self._spawn() for _ in range(self.size)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise WorkerStartError(f"{len(errors)} of {self.size} sandbox workers failed to start: {errors[0]}")

    async def close(self) -> None:
        self._closing = True
        for timer in (self._stall_timer, self._demote_timer):
            if timer is not None:
                timer.cancel()
        for waiter in self._fair.drain():
            if not waiter.fut.done():
                waiter.fut.cancel()
        for task in list(self._tasks):
            task.cancel()
        workers = list(self._workers)
        for w in workers:
            w.kill("recycle: pool closed")
        exits = [w.exited for w in workers if not w.exited.done()]
        if exits:
            await asyncio.wait(exits, timeout=5)
        if self._forker is not None:
            self._forker.close()
            self._forker = None

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- handing out workers -----------------------------------------------------------

    def _release(self, worker: Worker) -> None:
        if worker.state == DEAD:
            return
        worker.state = IDLE
        worker.key = None
        self._idle.append(worker)
        self._dispatch()
        if worker.state == IDLE and len(self._workers) > self.size + self._kv_waiting:
            # An extra worker started for a KV stall that is over: shrink back.
            worker.kill(SURPLUS)

    def _dispatch(self) -> None:
        """Hand idle workers to waiters, fairest first (``FairQueue.next_waiter``).

        Commands boxed while their calls queued are passed over (``_refuse_queued``
        answers those). A waiter whose deadline is too close for a call to be worth
        starting (``min_start``) gets no worker: it would only be killed at its deadline,
        and a killed worker must be replaced before anyone else can use it."""
        now = self._loop.time() if self._idle else 0.0
        while self._idle:
            nxt = self._fair.next_waiter(self._passed_over)
            if nxt is None:
                return
            key, waiter = nxt
            if waiter.deadline - now < self.min_start:
                waiter.refusal = "budget exceeded: wall time (no sandbox worker was free before the deadline)"
                waiter.fut.set_result(None)
                continue
            worker = self._take_idle(waiter.sha)
            assert worker is not None
            self._fair.hold(key)
            worker.key = key
            waiter.fut.set_result(worker)

    def _take_idle(self, sha: str) -> Worker | None:
        idle = self._idle
        if not idle:
            return None
        # Prefer a worker that already compiled this script (the most recent one); else a
        # fresh one, else the one idle longest. This leaves the warm workers of other
        # scripts to them: a flood of another command taking the worker a quiet command
        # had just used made the quiet one's next calls compile afresh (~20 ms under load
        # instead of 2).
        for i in range(len(idle) - 1, -1, -1):
            if sha in idle[i].known:
                worker = idle.pop(i)
                break
        else:
            worker = idle.pop(next((i for i, w in enumerate(idle) if not w.known), 0))
        worker.state = BUSY
        return worker

    def _unhold(self, worker: Worker, key: str) -> None:
        """The call of ``key`` is over with ``worker`` (which may be dead already)."""
        if worker.key == key:
            worker.key = None
        self._fair.unhold(key)

    def _reclaim(self, fut: asyncio.Future[Worker | None], key: str) -> None:
        # The waiter gave up (deadline or cancellation); if a worker was handed to it in
        # the meantime, give that worker to the next caller.
        if fut.done():
            if not fut.cancelled() and fut.exception() is None and isinstance(fut.result(), Worker):
                worker = fut.result()
                self._unhold(worker, key)
                self._release(worker)
        else:
            fut.cancel()

    async def _acquire(self, sha: str, deadline: float, key: str = _ANON,
                       group: str | None = None) -> Worker | RunResult:
        """A worker for one call of ``key``, held (``FairQueue``) until ``_unhold``."""
        if self._closing or not self._started:
            return RunResult.failed(UNAVAILABLE, "sandbox is not running")
        fair = self._fair
        fair.set_group(key, group)
        if fair.may_take(key):
            worker = self._take_idle(sha)
            if worker is not None:
                fair.hold(key)
                worker.key = key
                return worker
        # Bounded per command: a flooded command overflows its own queue only.
        if fair.full(key, self.max_queue):
            return RunResult.failed(BUDGET, "sandbox overloaded")
        fut: asyncio.Future[Worker | None] = self._loop.create_future()
        waiter = _Waiter(fut, sha, deadline)
        fair.push(key, waiter)
        self._watch_stalls()
        # The deadline resolves the future itself (no timeout scope, no task cancellation:
        # a timer is all a queued call needs).
        expiry = self._loop.call_at(deadline, _expire, fut)
        try:
            got = await fut
        except asyncio.CancelledError:
            self._reclaim(fut, key)
            if self._closing and fut.cancelled():
                return RunResult.failed(UNAVAILABLE, "sandbox is shutting down")
            raise
        finally:
            expiry.cancel()
        if got is _EXPIRED:
            return RunResult.failed(BUDGET, "budget exceeded: wall time (no sandbox worker was free before the deadline)")
        if got is None:
            return RunResult.failed(BUDGET, waiter.refusal or "sandbox unavailable")
        return got

    def _demote_tick(self) -> None:
        """Lower the CPU priority of calls running longer than ``demote_after`` (callbacks
        take a few ms; a call still running after 50 ms is a spin or a heavy script), so on
        a host with fewer CPUs than workers they do not slow the short calls of others.
        Runs while calls are out; one timer for the pool, not one per call."""
        self._demote_timer = None
        if self._closing:
            return
        now = self._loop.time()
        running = False
        for w in self._workers:
            if w.call_started and w.state == BUSY:
                running = True
                if not w.lowered and now - w.call_started >= self.demote_after:
                    w.lowered = True
                    self.demoted += 1
                    self._set_priority(w.pid, "demoted")
        if running:
            self._demote_timer = self._loop.call_later(self.demote_after, self._demote_tick)

    # --- KV stalls ---------------------------------------------------------------------

    def _watch_stalls(self) -> None:
        if self._stall_timer is None and self.kv_extra > 0 and not self._closing:
            self._stall_timer = self._loop.call_later(self.kv_stall, self._check_stalls)

    def _check_stalls(self) -> None:
        """Callers are queued: start an extra worker for each call that has been waiting
        on the KV store longer than ``kv_stall`` (up to ``kv_extra``), so calls that make
        no KV calls are not held up by a slow store."""
        self._stall_timer = None
        if self._closing or not self._fair.has_eligible():
            return
        now = self._loop.time()
        stalled = sum(1 for w in self._workers if w.kv_since and now - w.kv_since >= self.kv_stall)
        want = self.size + min(stalled, self.kv_extra)
        for _ in range(want - len(self._workers) - self._pending):
            self._schedule_spawn(extra=True)
        self._watch_stalls()

    def busy(self) -> bool:
        """A call is out to a worker and its reply may come any moment (the host loop may
        poll briefly: sandbox/host/spin.py). Not for calls out longer than ``demote_after``:
        polling for a spin's reply burned the host's CPU for nothing while others waited."""
        recent = self._loop.time() - self.demote_after
        return any(w.state == BUSY and w.call_started >= recent for w in self._workers)

    # --- kept KV answers ------------------------------------------------------------------

    def invalidate(self, key: str | None) -> None:
        """The store saw ``key`` change (None: everything). Tell every worker keeping an
        answer for it; the frame goes out before anything else sent to that worker."""
        for worker in self._workers:
            if not worker.kept or worker.state == DEAD or worker.transport is None:
                continue
            if key is None:
                worker.forget_kept()
                worker.send(_INV_ALL)
            elif worker.drop_kept(key):
                worker.send(protocol.encode({"t": protocol.INV, "k": [key]}))

    def _keep_scope(self, worker: Worker, kv: Any) -> str | None:
        """The scope whose kept answers this call may use, or None (checked per call)."""
        ready = getattr(kv, "ready", None)
        if ready is None or not ready():  # ready() applies pending invalidations first
            return None
        scope = kv.scope
        if worker.scope != scope:
            worker.forget_kept()  # the worker empties its cache when it sees a new scope
            worker.scope = scope
        return scope

    # --- calls -------------------------------------------------------------------------

    async def run(
        self,
        *,
        source: str,
        sha256: str,
        payload_json: bytes,
        budgets: Budgets,
        kv: KVCall,
        deadline: float,
        key: str = _ANON,
        group: str | None = None,
    ) -> RunResult:
        """Run ``handle(payload)`` of ``source`` in a worker; always returns by ``deadline``.

        ``key`` names the caller's command: it gets its own queue and share of the
        workers, and its own place in the penalty box; ``group`` its KV namespace, whose
        commands share a namespace's share (see the class docstring)."""
        refused = self.box.admit(key)
        if refused is not None:
            if self.box.settings.refusal_delay_ms > 0:
                await asyncio.sleep(self.box.settings.refusal_delay_ms / 1000)
            return RunResult.failed(BUDGET, refused)
        while True:
            acquired = await self._acquire(sha256, deadline, key, group)
            if isinstance(acquired, RunResult):
                self.box.cancel(key)
                return acquired
            if acquired.alive:
                break
            self._unhold(acquired, key)
        worker = acquired
        try:
            result = await self._call(worker, key, source, sha256, payload_json, budgets, kv, deadline)
        except BaseException:
            self._unhold(worker, key)
            self._dispatch()
            self.box.cancel(key)
            raise
        return result

    async def _call(self, worker: Worker, key: str, source: str, sha256: str, payload_json: bytes,
                    budgets: Budgets, kv: KVCall, deadline: float) -> RunResult:
        """One call on ``worker``: always a result, by ``min(deadline, wall budget + grace)``."""
        loop = self._loop
        start = self._begin_call(worker, key)
        wall_limit = start + budgets.wall_ms / 1000 + self.grace
        limit = min(deadline, wall_limit)
        cut = False
        writes: Writes | None = None
        try:
            async with Deadline(loop, limit):
                result, writes = await self._exchange(worker, source, sha256, payload_json, budgets, kv)
        except TimeoutError:
            worker.kill("call exceeded its time limit")
            if limit == wall_limit:
                result = RunResult.failed(BUDGET, f"budget exceeded: wall time (limit {budgets.wall_ms} ms)")
            else:
                # Cut by the request's deadline after time spent queued: the script's fault
                # only if it had run for half its wall budget by then.
                cut = loop.time() - start < budgets.wall_ms / 2000
                result = RunResult.failed(BUDGET, "budget exceeded: wall time (request deadline reached)")
        except WorkerGone:
            result = await self._death_result(worker, budgets, limit)
        except Violation as exc:
            worker.kill(f"protocol: {exc}")
            result = exc.result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if worker.death_cancelled and task is not None and task.uncancel() == 0:
                # Only our own cancellation (the worker died during a KV await).
                result = await self._death_result(worker, budgets, limit)
            else:
                worker.kill("call cancelled")  # state unknown: never reuse
                raise
        except BaseException:
            worker.kill("call failed in the host")
            raise
        self._end_call(worker, key, result, cut)
        # Answers a worker kept never reach us: take its count, capped by the budget.
        result.kv_ops = max(worker.call_kv_ops, min(result.kv_ops, budgets.kv_ops))
        if writes is not None:
            # The worker is free again; the call's result waits for its writes, within its limit.
            try:
                async with Deadline(loop, limit):
                    failed = await writes.settle()
            except TimeoutError:
                result = RunResult.failed(BUDGET, "budget exceeded: wall time (its KV writes were not done in time)",
                                          logs=result.logs, kv_ops=result.kv_ops)
            else:
                if failed is not None:
                    result = write_failed(failed[0], failed[1], result)
        result.elapsed_ms = round((loop.time() - start) * 1000, 3)
        return result

    def _begin_call(self, worker: Worker, key: str) -> float:
        """Count the call and set its CPU priority; returns its start (loop time)."""
        # A command that hit its budgets lately runs at a lower CPU priority from the start,
        # any other call once it has run for `demote_after` (see _demote_tick), so long calls
        # take CPU from nobody's short calls (needs the privilege to restore it: root).
        worker.lowered = self._base_nice is not None and self.box.suspect(key)
        if worker.lowered:
            self._set_priority(worker.pid, "demoted")
        start = worker.call_started = self._loop.time()
        if self._base_nice is not None and self._demote_timer is None:
            self._demote_timer = self._loop.call_later(self.demote_after, self._demote_tick)
        worker.calls += 1
        worker.call_kv_ops = 0
        self.calls += 1
        return start

    async def _exchange(self, worker: Worker, source: str, sha256: str, payload_json: bytes,
                        budgets: Budgets, kv: KVCall) -> tuple[RunResult, Writes | None]:
        """Send the run frame, serve the worker's kv frames and resends until its ``done``:
        its result and the writes it did not wait for, which have not all run yet.
        Raises WorkerGone or Violation (a message out of turn, for another call, a flood)."""
        call_id = next(self._ids)
        head: dict[str, Any] = {"t": protocol.RUN, "id": call_id, "sha": sha256, "b": self._wire(budgets)}
        if sha256 not in worker.known:
            head["src"] = source
        scope = self._keep_scope(worker, kv)
        if scope is not None:
            head["cs"] = scope
        worker.open_inbox()
        writes: Writes | None = None
        try:
            fut = worker.expect()
            worker.send(protocol.encode(head, payload_json))
            while True:
                msg = await fut
                if msg is None:
                    raise WorkerGone()
                kind = msg["t"]
                if msg.get("id") != call_id:
                    raise Violation("message for another call")
                if kind == protocol.DONE:
                    if worker.inbox:
                        raise Violation("messages after the call's done")
                    return parse_done(worker, msg, sha256, self.script_cache), writes
                if kind == protocol.KV and msg.get("nr") is True:
                    # A write the worker did not wait for: queued, and run in order with the
                    # call's other writes (``Writes``) before any KV op the worker waits for and
                    # before the result; after one failed, no later KV op of the call takes effect.
                    self._count_kv(worker, budgets)
                    if writes is None:
                        writes = Writes(budgets, kv)
                    writes.add(msg)
                    fut = worker.expect()
                    continue
                if kind == protocol.KV:
                    self._count_kv(worker, budgets)
                    failed = None if writes is None else await writes.settle()
                    if failed is None:
                        reply = await self._serve_kv(worker, msg, call_id, budgets, kv, scope)
                    else:
                        reply = protocol.encode({"t": protocol.KVR, "id": call_id, "err": protocol.KV_UNAVAILABLE,
                                                 "msg": "an earlier write of this call failed"})
                elif kind == protocol.NEED and "src" not in head:
                    head["src"] = source
                    reply = protocol.encode(head, payload_json)
                else:
                    raise Violation(f"unexpected {bounded(kind, 20)!r} message during a call")
                if worker.inbox:  # it sent more before the answer it waits for: a flood
                    raise Violation("messages out of turn")
                fut = worker.expect()
                worker.send(reply)
        except BaseException:
            if writes is not None:  # the call failed: its writes may be applied in part or not at all
                writes.cancel()
            raise
        finally:
            worker.close_inbox()

    @staticmethod
    def _count_kv(worker: Worker, budgets: Budgets) -> None:
        """A kv frame counts against the budget (a worker sending more is flooding)."""
        worker.call_kv_ops += 1
        if worker.call_kv_ops > budgets.kv_ops:
            raise Violation(
                "kv flood",
                RunResult.failed(BUDGET, f"budget exceeded: kv operations (limit {budgets.kv_ops})"),
            )

    async def _serve_kv(self, worker: Worker, msg: dict[str, Any], call_id: int, budgets: Budgets, kv: KVCall,
                        scope: str | None) -> bytes:
        """One counted kv frame: the reply to send. Its wait on the store is visible to the
        stall watch and cancellable if the worker dies."""
        worker.kv_task = asyncio.current_task()
        worker.kv_since = self._loop.time()
        self._kv_waiting += 1
        try:
            return await kv_reply(msg, call_id, budgets, kv, worker if scope is not None else None)
        finally:
            worker.kv_task = None
            worker.kv_since = 0.0
            self._kv_waiting -= 1

    def _end_call(self, worker: Worker, key: str, result: RunResult, cut: bool) -> None:
        """Restore the worker's priority, release or retire it, tell the penalty box."""
        worker.call_started = 0.0
        if worker.lowered and worker.alive:
            self._set_priority(worker.pid, "normal")
        worker.lowered = False
        self._unhold(worker, key)
        error = result.error
        self.box.record(key, error is not None and error.kind == BUDGET and not cut,
                        error.message if error is not None else "")
        if self.box.is_closed(key):  # boxed by this call (or meanwhile): refuse what queued
            self._passed_over(key)
        self._finish(worker, result)
        if not worker.alive:
            self._charge_replacement(key)
            self._dispatch()

    def _passed_over(self, key: str) -> bool:
        """``key`` is boxed: its queued calls get no worker but their refusal, one per
        event-loop turn (``_refuse_queued``), so other commands' callbacks are served in
        between: a second of queued calls refused at once (~50 at 50/s) held every other
        reply ~25 ms."""
        if not self.box.is_closed(key):
            return False
        if key not in self._refusing:
            self._refusing.add(key)
            self._loop.call_soon(self._refuse_queued, key)
        return True

    def _refuse_queued(self, key: str) -> None:
        waiter = self._fair.take(key) if self.box.is_closed(key) and not self._closing else None
        if waiter is None:  # all refused, or the box opened: the rest may run
            self._refusing.discard(key)
            self._dispatch()
            return
        waiter.refusal = self.box.closed(key) or f"penalty box: {key} keeps exceeding its budgets"
        waiter.fut.set_result(None)
        self._loop.call_soon(self._refuse_queued, key)

    def _wire(self, budgets: Budgets) -> dict[str, int]:
        wire = self._budget_wire.get(budgets)
        if wire is None:
            if len(self._budget_wire) > 256:
                self._budget_wire.clear()
            wire = self._budget_wire[budgets] = budgets.to_wire()
        return wire

    async def _death_result(self, worker: Worker, budgets: Budgets, limit: float) -> RunResult:
        reason = worker.killed_reason
        if reason is not None:  # the host killed it
            if reason.startswith("protocol:"):
                return RunResult.failed(INVALID_RESULT, "sandbox worker sent a malformed message")
            return RunResult.failed(UNAVAILABLE, "sandbox worker stopped: " + reason.removeprefix("recycle: "))
        rc = await worker.wait_exit(min(limit, self._loop.time() + 0.5))
        if rc is None:
            worker.kill("closed its channel but kept running")
            return RunResult.failed(BUDGET, "budget exceeded: sandbox worker stopped responding")
        return RunResult.failed(BUDGET, describe_exit(rc, budgets.memory_mb))

    async def check(self, source: str, timeout: float = 2.0) -> list[CompileIssue]:
        """Validate ``source`` (``sandbox.policy.check_source``) inside a worker, under a
        time limit: compiling hostile source is itself a DoS vector."""
        loop = self._loop or asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            acquired = await self._acquire("", deadline, _ADMIN)
            if isinstance(acquired, RunResult):
                message = acquired.error.message if acquired.error else "sandbox unavailable"
                return [CompileIssue(1, 0, f"could not validate the script now: {message}")]
            if acquired.alive:
                break
            self._unhold(acquired, _ADMIN)
        worker = acquired
        try:
            return await self._check(worker, source, deadline, timeout)
        finally:
            self._unhold(worker, _ADMIN)
            self._dispatch()

    async def _check(self, worker: Worker, source: str, deadline: float, timeout: float) -> list[CompileIssue]:
        loop = self._loop
        call_id = next(self._ids)
        worker.calls += 1
        issues: list[CompileIssue] = []
        try:
            async with asyncio.timeout_at(deadline):
                fut = worker.expect()
                worker.send(
                    protocol.encode({"t": protocol.CHECK, "id": call_id, "src": source, "cpu_s": math.ceil(timeout)})
                )
                msg = await fut
            if msg is None:
                raise WorkerGone()
            if msg["t"] != protocol.CHECKED or msg.get("id") != call_id:
                raise Violation("unexpected message during a check")
            issues = parse_issues(msg.get("issues"))
        except TimeoutError:
            worker.kill("check exceeded its time limit")
            return [CompileIssue(1, 0, f"compiling the script exceeded the time limit ({timeout:g} s)")]
        except WorkerGone:
            if worker.killed_reason is None:
                rc = await worker.wait_exit(loop.time() + 0.5)
                why = describe_exit(rc, self.memory_mb) if rc is not None else "sandbox worker died"
            else:
                why = "sandbox worker stopped"
            return [CompileIssue(1, 0, f"compiling the script exceeded the memory or time limit ({why})")]
        except Violation as exc:
            worker.kill(f"protocol: {exc}")
            return [CompileIssue(1, 0, "could not validate the script: sandbox error")]
        except BaseException:
            worker.kill("check cancelled")
            raise
        self._finish(worker, None)
        return issues

    async def _probe(self, name: str, timeout: float = 10.0, **args: Any) -> Any:
        """Test-only: run a fixed probe (``sandbox.worker._probes``) in a confined worker.

        Returns the probe's report, or ``{"died": exit status}`` if the worker died."""
        if not self._test_hooks:
            raise RuntimeError("probes need WorkerPool(test_hooks=True)")
        loop = self._loop
        acquired = await self._acquire("", loop.time() + timeout, _ADMIN)
        if isinstance(acquired, RunResult):
            raise RuntimeError(str(acquired.error))
        worker = acquired
        self._unhold(worker, _ADMIN)  # test-only: no fair-share accounting needed
        try:
            async with asyncio.timeout(timeout):
                fut = worker.expect()
                worker.send(protocol.encode({"t": protocol.PROBE, "id": next(self._ids), "name": name, **args}))
                msg = await fut
        except TimeoutError:
            worker.kill("probe timed out")
            return {"died": "timeout"}
        except WorkerGone:
            return {"died": await worker.wait_exit(loop.time() + 5)}
        if msg is None:
            return {"died": await worker.wait_exit(loop.time() + 5)}
        report = msg.get("r")
        if type(report) is not dict or report.get("allowed") is not False:
            worker.kill("recycle: after a probe that was not refused")  # state unknown now
        else:
            self._finish(worker, None)
        return report

    # --- introspection -----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        states = collections.Counter(w.state for w in self._workers)
        return {
            "size": self.size,
            "live": len(self._workers),
            "idle": len(self._idle),
            "busy": states[BUSY],
            "starting": states[STARTING],
            "spawned": self.spawned,
            "killed": self.killed,
            "recycled": self.recycled,
            "recycle_skipped": self.recycle_skipped,
            "queue": self._fair.total_queued(),
            "calls": self.calls,
            "share": self.share,
            "kv_waiting": self._kv_waiting,
            "extra_spawned": self.extra_spawned,
            "extra_stopped": self.extra_stopped,
            "kept_bytes": sum(w.kept_bytes for w in self._workers),
            "demoted": self.demoted,
        }

    def fairness(self) -> dict[str, Any]:
        """Per-command holdings and queues, and the penalty box (for /healthz)."""
        return {"share": self.share, "commands": self._fair.snapshot(), "penalty_box": self.box.snapshot()}

    def confinement(self) -> list[dict[str, Any]]:
        """What each live worker reported about its confinement (for logs and tests)."""
        return [w.confine for w in self._workers if w.state != STARTING]

    def worker_reports(self) -> list[dict[str, Any]]:
        """The ready messages of the live workers (pid, confinement, test-hook extras)."""
        return [w.info for w in self._workers if w.state != STARTING]
