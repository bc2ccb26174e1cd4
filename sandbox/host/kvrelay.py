"""Serving a worker's ``kv`` frames: check the request again (the worker is untrusted), answer
it from the caller's store, and say which answers the worker may keep.

``kv_reply`` answers a frame the worker waits for: the request's op and arguments are checked with
``sandbox.kvops.validate`` (the one op table) before the store sees them; refusals and
outages become ``kvr`` error frames, never host internals. When the store offers a cache
hit that it will invalidate (``peek``), the reply carries the Redis key (``"c"``) and the
worker's handle records it, bounded by ``MAX_KEPT`` keys and ``MAX_KEPT_BYTES``; for a set
the store keeps whole (``sandbox.kvops.WHOLE_SET``) the first such reply also carries the
set's members (``"w"``). ``kv_write`` performs a write the worker does not wait for
(``"nr"``), and ``Writes`` queues one call's such writes and runs them in order before its
result is taken, while its worker moves on.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sandbox import kvops, protocol
from sandbox.api import Budgets, KVRefused, KVUnavailable, bounded

if TYPE_CHECKING:
    from sandbox.host.workerhandle import Worker

log = logging.getLogger("scriptgate.sandbox")

KVCall = Callable[[str, list], Awaitable[Any]]
# A KVCall may also offer answers workers can keep (see sandbox/worker/readcache.py), through:
#   scope: str                  store + namespace the answers belong to
#   ready() -> bool             apply pending invalidations now; False = keep nothing this call
#   peek(op, args) -> (value, redis_key, whole set | None) | None   synchronous cache hit
#                               that the store will invalidate through
#                               WorkerPool.invalidate(redis_key)
MAX_KEPT = 50_000  # Redis keys a worker may hold answers for (bounds the host's record)
# ... and their bytes (key names plus workerhandle.KEPT_OVERHEAD each, and whole sets), so
# long key names cannot make the host's record of them ~35 MB per worker.
MAX_KEPT_BYTES = 4 * 1024 * 1024


async def kv_reply(msg: dict[str, Any], call_id: int, budgets: Budgets, kv: KVCall, keeper: Worker | None) -> bytes:
    def error(kind: str, text: str) -> bytes:
        return protocol.encode({"t": protocol.KVR, "id": call_id, "err": kind, "msg": bounded(text)})

    try:
        # The worker checked this too, but it is untrusted: check again before the store.
        op, args = kvops.validate(msg.get("op"), msg.get("args"), budgets.kv_key_bytes, budgets.kv_value_bytes)
    except KVRefused as exc:
        return error(protocol.KV_ERR, str(exc))
    if op.cache is not None and keeper is not None and len(keeper.kept) < MAX_KEPT \
            and keeper.kept_bytes < MAX_KEPT_BYTES:  # (a write is never kept: no peek)
        # Synchronous: no invalidation can run between the hit and recording the key.
        hit = kv.peek(op.name, args)  # type: ignore[attr-defined]
        if hit is not None:
            value, rkey, whole = hit
            keeper.keep(rkey)
            reply = {"t": protocol.KVR, "id": call_id, "ok": value, "c": rkey}
            if whole is not None and rkey not in keeper.kept_whole:
                # The set itself, once per worker until it changes: the worker then answers
                # any member of it without asking (bounded by the same MAX_KEPT_BYTES).
                size = kvops.whole_set_bytes(whole)
                if keeper.kept_bytes + size <= MAX_KEPT_BYTES:
                    keeper.keep_whole(rkey, size)
                    reply["w"] = list(whole)
            try:
                return protocol.encode(reply)
            except TypeError:
                keeper.drop_kept(rkey)
    value, failure = await _perform(op, args, kv)
    if failure is not None:
        return error(*failure)
    try:
        return protocol.encode({"t": protocol.KVR, "id": call_id, "ok": value})
    except TypeError:
        log.warning("kv %s returned unencodable %s", op.name, type(value).__name__)
        return error(protocol.KV_UNAVAILABLE, "KV store returned unusable data")


class Writes:
    """The writes one call sent without waiting (``"nr"`` frames): queued as they come, then
    run in order by the call's own task when it next needs the store's state (a read the
    worker waits for) or its result (``settle``), the first failure dropping the rest. The
    worker is not held for them: the pool releases it at its ``done`` and awaits ``settle``
    within the call's deadline before the call's result is final (sandbox.host.pool).

    Not a task of their own: an after-callback's script is a write and its ``done``, so a
    task would start the writes only microseconds earlier, and nothing then runs behind the
    call's back (a failed call just drops its queue). Task creation and asyncio's registry
    of tasks were ~4% of the HTTP process's samples under an after-callback flood; the
    measured gain was within noise (docs/performance.md)."""

    __slots__ = ("budgets", "failed", "kv", "queue")

    def __init__(self, budgets: Budgets, kv: KVCall) -> None:
        self.budgets = budgets
        self.kv = kv
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.failed: tuple[Any, tuple[str, str]] | None = None  # (op, failure) of the first to fail

    def add(self, msg: dict[str, Any]) -> None:
        if self.failed is None:
            self.queue.append(msg)

    def cancel(self) -> None:
        """The call failed: what has not run never will."""
        self.queue.clear()

    async def settle(self) -> tuple[Any, tuple[str, str]] | None:
        """Run every write queued so far, in order; the first failure, or None."""
        queue = self.queue
        while queue:
            msg = queue.popleft()
            failure = await kv_write(msg, self.budgets, self.kv)
            if failure is not None:
                self.failed = (msg.get("op"), failure)
                queue.clear()
        return self.failed


async def kv_write(msg: dict[str, Any], budgets: Budgets, kv: KVCall) -> tuple[str, str] | None:
    """A ``kv`` frame the worker does not wait for (``"nr"``: a write whose answer the script
    drops, ``sandbox.policy.unawaited_writes``): checked like any, performed; its failure as
    (``KV_ERR`` or ``KV_UNAVAILABLE``, text), or None."""
    try:
        op, args = kvops.validate(msg.get("op"), msg.get("args"), budgets.kv_key_bytes, budgets.kv_value_bytes)
    except KVRefused as exc:
        return protocol.KV_ERR, str(exc)
    if not op.writes:
        return protocol.KV_ERR, f"kv.{op.name}: a read must wait for its answer"
    return (await _perform(op, args, kv))[1]


async def _perform(op: kvops.Op, args: list[Any], kv: KVCall) -> tuple[Any, tuple[str, str] | None]:
    """The store's answer, or why there is none (never host internals: a script sees this)."""
    try:
        return await kv(op.name, args), None
    except KVRefused as exc:
        return None, (protocol.KV_ERR, str(exc))
    except KVUnavailable as exc:
        return None, (protocol.KV_UNAVAILABLE, str(exc) or "KV store unavailable")
    except Exception as exc:
        log.warning("kv %s failed: %r", op.name, exc)
        return None, (protocol.KV_UNAVAILABLE, "KV store unavailable")
