"""Recording of callbacks, off the reply's critical path.

``submit`` is called once the reply is ready, just before it is written (so a record is
queued before the client can read the reply: server/sync.py): it applies the command's sampling
rate and redaction and puts the record on a bounded in-memory queue (dropping, and
counting, when the store cannot keep up). The queue is bounded in records (``QUEUE_LIMIT``) and in bytes (``QUEUE_BYTES``, the
records' JSON size). ``run`` drains the queue into the store (Redis
Streams, capped by count and age), a few writes at a time, so memory stays bounded
whatever the traffic or the store's health.

A record: ``{"ts", "command", "operationID", "request", "reply", "version", "verdict",
"error_kind", "error", "elapsed_ms"}`` (verdict: allow | modify | deny | error | none).
``ts`` stays unix seconds (a float), unlike the ISO-8601 times elsewhere in the admin
JSON: it is the key of ``GET /admin/recordings/{command}?since=<unix seconds>`` and of
``scriptgate export --since``, and recordings are data fed back to ``replay``, which
compares and orders them by it.

Redaction (``record.redact`` in the config) names fields to replace by ``"[redacted]"``
in both the request and the reply: ``content`` (a top-level field), or a dotted path
into nested objects, ``offlinePushInfo.title``; lists on the way are walked element by
element, so ``memberCallbackList.nickname`` redacts every member's nickname.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from functools import lru_cache
from typing import Any

import orjson

from server.catalog import Command
from server.drops import Drops

log = logging.getLogger("scriptgate.recorder")
REDACTED = "[redacted]"
QUEUE_LIMIT = 10_000
# Bytes of queued records (their JSON size): a request can be up to max_body_bytes, so the
# count alone would let a burst of large callbacks hold gigabytes while the store is slow.
QUEUE_BYTES = 32 * 1024 * 1024
# Writes in flight at once: enough to hide a Redis round trip, few enough that a burst
# does not open a connection per record.
WRITE_BATCH = 16

# A compiled redaction: field -> True (replace the value) or a nested redaction.
Redaction = dict[str, Any]


@lru_cache(maxsize=256)
def compile_redaction(paths: tuple[str, ...]) -> Redaction:
    tree: Redaction = {}
    for path in paths:
        parts = [p for p in path.split(".") if p]
        if not parts:
            continue
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is True:  # a parent is redacted whole already
                break
            node = child
        else:
            node[parts[-1]] = True
    return tree


def apply_redaction(data: Any, tree: Redaction) -> Any:
    """A copy of ``data`` with the redacted fields replaced; shares everything untouched
    (no deep copy), and returns ``data`` itself when nothing matches."""
    if not tree:
        return data
    if type(data) is list:
        return [apply_redaction(item, tree) for item in data]
    if type(data) is not dict:
        return data
    hit = [k for k in tree if k in data]
    if not hit:
        return data
    out = dict(data)
    for key in hit:
        sub = tree[key]
        out[key] = REDACTED if sub is True else apply_redaction(out[key], sub)
    return out


def redact(data: Any, fields: tuple[str, ...]) -> Any:
    return apply_redaction(data, compile_redaction(tuple(fields))) if fields else data


class Recorder:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.settings = {name: s.record for name, s in state.dispatcher.settings.items()}
        self.redactions = {name: compile_redaction(tuple(s.redact)) for name, s in self.settings.items()}
        self.queue: asyncio.Queue[tuple[Command, dict[str, Any]]] = asyncio.Queue(QUEUE_LIMIT)
        self.queue_bytes_limit = QUEUE_BYTES
        self.queued_bytes = 0
        self._sizes: collections.deque[int] = collections.deque()  # JSON size of each queued record
        self.written = 0
        # The same counts on /metrics (scriptgate_recordings_total{outcome=...}), if the app has them.
        metrics = getattr(state, "metrics", None)
        recordings = getattr(metrics, "recordings", None)
        self._count_written = recordings.labels("written").inc if recordings is not None else None
        # Queue full, or the store refused or failed the write.
        self._drops = Drops("recordings", log, recordings.labels("dropped").inc if recordings is not None else None)
        self._random = random.Random()
        self.writing = 0  # records of the batch ``run`` is writing now

    @classmethod
    def create(cls, state: Any) -> Recorder | None:
        if not any(s.record.enabled for s in state.dispatcher.settings.values()):
            return None
        return cls(state)

    def submit(self, command: Command, payload: dict[str, Any], operation_id: str, outcome: Any, elapsed: float) -> None:
        """Queue one record; never blocks and never raises into the request handler."""
        settings = self.settings[command.name]
        if not settings.enabled:
            return
        if settings.sample < 1.0 and self._random.random() >= settings.sample:
            return
        if self.queue.full():  # checked first: no record is built only to be dropped
            self._drop()
            return
        tree = self.redactions[command.name]
        error = outcome.error
        record = {
            "ts": round(time.time(), 6),
            "command": command.name,
            "operationID": operation_id or str(payload.get("operationID") or ""),
            "request": apply_redaction(payload, tree),
            "reply": apply_redaction(outcome.reply, tree),
            "version": outcome.version,
            "verdict": outcome.verdict,
            "error_kind": error.kind if error else None,
            "error": error.message if error else None,
            "elapsed_ms": round(elapsed * 1000, 3),
        }
        if getattr(outcome, "early_ack", False):  # answered before the script ran (server/service/after.py)
            record["early_ack"] = True
        try:
            size = len(orjson.dumps(record))
        except TypeError:
            size = 0  # the store's own encoding reports it
        if self.queued_bytes + size > self.queue_bytes_limit:
            self._drop()
            return
        self.queued_bytes += size
        self._sizes.append(size)
        self.queue.put_nowait((command, record))
        siblings = getattr(self.state, "siblings", None)
        if siblings is not None:  # GET /admin/recordings waits for it (server/sync.py)
            siblings.queued()

    def _dequeued(self) -> None:
        if self._sizes:
            self.queued_bytes -= self._sizes.popleft()

    def _drop(self) -> None:
        self._drops.drop()

    @property
    def dropped(self) -> int:
        return self._drops.count

    async def run(self) -> None:
        queue = self.queue
        while True:
            batch = [await queue.get()]
            self._dequeued()
            while len(batch) < WRITE_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
                self._dequeued()
            self.writing = len(batch)
            try:
                await asyncio.gather(*(self._write(c, r) for c, r in batch))
            finally:
                self.writing = 0

    async def settle(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until everything queued is written or dropped, while
        ``run`` keeps going: at a graceful stop, before ``run`` is cancelled."""
        deadline = time.monotonic() + timeout
        while not self.queue.empty() or self.writing:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _write(self, command: Command, record: dict[str, Any]) -> None:
        settings = self.settings[command.name]
        try:
            await self.state.store.record(command.name, record, settings.max_records, settings.max_age_s)
            self.written += 1
            if self._count_written is not None:
                self._count_written()
        except Exception as exc:  # a store outage must not stop recording for good
            log.debug("recording dropped: %s", exc)
            self._drop()
        finally:
            siblings = getattr(self.state, "siblings", None)
            if siblings is not None:
                siblings.written()

    async def flush(self) -> None:
        """Write what is queued (at shutdown)."""
        while not self.queue.empty():
            batch = []
            while len(batch) < WRITE_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
                self._dequeued()
            await asyncio.gather(*(self._write(c, r) for c, r in batch))
