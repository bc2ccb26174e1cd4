"""Per-callback logs: what each callback did, kept in a bounded store and tailed live.

``submit`` is called after the reply has been written (through
``server.service.callbacks.record_outcome``): it builds the record and puts it on a bounded in-memory queue,
never blocking and never raising (when the store cannot keep up, records are dropped and
counted). ``run`` drains the queue into one Redis stream per command (``P:log:<command>``),
trimmed by count (``[logs] max_records``), age (``max_age_s``) and bytes (``max_bytes``:
the count cap is lowered to ``max_bytes`` / the mean record size seen by this process, so
it is approximate), and publishes each record on ``P:logs:live`` for live tails
(``GET /admin/logs/stream``) in every HTTP process and instance sharing the store.

A record (the contract of ``GET /admin/logs``)::

    {"ts": ISO-8601, "command", "operationID", "version", "verdict", "error_kind", "error",
     "logs": [str], "elapsed_ms", "level": "info" | "error"}

``level`` is ``error`` when the script failed (verdict ``error``), else ``info``. A record
longer than ``max_record_bytes`` has its log lines cut (the last line says how many).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from server.config import LogSettings
from server.drops import Drops
from server.isotime import iso_utc

log = logging.getLogger("scriptgate.calllogs")
QUEUE_LIMIT = 10_000
QUEUE_BYTES = 16 * 1024 * 1024
WRITE_BATCH = 64  # records per store round trip
LINGER_S = 0.01  # how long the first record of a batch waits for others
LEVELS = ("info", "error")
# Records read from one command's stream per page while searching.
PAGE = 500
# A search reads at most this many records per command (operationID filters scan).
SCAN_LIMIT = 100_000
# Live subscribers' queues: a reader that falls this far behind loses records, not memory.
LIVE_QUEUE = 1000


def build_record(command: str, operation_id: str, outcome: Any, elapsed_s: float,
                 max_bytes: int) -> bytes:
    error = outcome.error
    record = {
        "ts": iso_utc(time.time()),
        "command": command,
        "operationID": operation_id,
        "version": outcome.version,
        "verdict": outcome.verdict,
        "error_kind": error.kind if error else None,
        "error": error.message if error else None,
        "logs": [str(line) for line in outcome.logs],
        "elapsed_ms": round(elapsed_s * 1000, 3),
        "level": "error" if outcome.verdict == "error" else "info",
    }
    if getattr(outcome, "early_ack", False):  # answered before the script ran (server/service/after.py)
        record["early_ack"] = True
    data = orjson.dumps(record)
    if len(data) <= max_bytes:
        return data
    # Cut log lines (from the end) until the record fits; the note says what was cut.
    lines = record["logs"]
    total = len(lines)
    budget = max_bytes - (len(data) - len(orjson.dumps(lines))) - 64
    kept: list[str] = []
    used = 2
    for line in lines:
        size = len(orjson.dumps(line)) + 1
        if used + size > budget:
            room = budget - used - 8
            if room > 32:
                kept.append(line[: room // 4])  # up to 4 UTF-8 bytes a character
            break
        kept.append(line)
        used += size
    kept.append(f"[{total - len(kept)} of {total} log lines cut: record over max_record_bytes]")
    record["logs"] = kept
    if record["error"] and len(record["error"]) > 1024:
        record["error"] = record["error"][:1024]
    return orjson.dumps(record)


class CallLogs:
    """The writer: one per HTTP process."""

    def __init__(self, state: Any, settings: LogSettings) -> None:
        self.state = state
        self.settings = settings
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_LIMIT)
        self.queued_bytes = 0
        self.written = 0
        self._mean_size: dict[str, float] = {}
        # Read-your-writes for a search in this process (``settled``): records queued so far,
        # records done with (written or dropped), and the writer's wake-up from its linger.
        self._queued_total = 0
        self._done_total = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        # The same counts on /metrics (scriptgate_callback_logs_total{outcome=...}), if the app has them.
        counter = getattr(getattr(state, "metrics", None), "calllogs", None)
        self._count_written = counter.labels("written").inc if counter is not None else None
        self._drops = Drops("per-callback logs", log, counter.labels("dropped").inc if counter is not None else None)

    @classmethod
    def create(cls, state: Any) -> CallLogs | None:
        settings = state.config.logs
        return cls(state, settings) if settings.enabled else None

    def submit(self, command: str, operation_id: str, outcome: Any, elapsed_s: float) -> None:
        """Queue one record; never blocks and never raises into the request handler."""
        if self.queue.full():
            self._drop()
            return
        try:
            data = build_record(command, operation_id, outcome, elapsed_s, self.settings.max_record_bytes)
        except Exception:  # a record must never fail a callback
            log.debug("log record not built", exc_info=True)
            self._drop()
            return
        if self.queued_bytes + len(data) > QUEUE_BYTES:
            self._drop()
            return
        self.queued_bytes += len(data)
        self.queue.put_nowait((command, data))
        self._queued_total += 1

    def _drop(self) -> None:
        self._drops.drop()

    @property
    def dropped(self) -> int:
        return self._drops.count

    def maxlen(self, command: str, size: int) -> int:
        """The stream's count cap: ``max_records``, lowered so that about ``max_bytes`` fit."""
        mean = self._mean_size.get(command)
        mean = size if mean is None else mean * 0.9 + size * 0.1
        self._mean_size[command] = mean
        s = self.settings
        return max(1, min(s.max_records, int(s.max_bytes // max(mean, 64.0))))

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            # Let a busy second's records gather: written as they come, each batch held
            # one record and its round trip cost more CPU than the callback it logs.
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER_S):
                        await self._wake.wait()
            self._wake.clear()
            await self._write(self._take(batch))

    async def settled(self, timeout: float = 1.0) -> None:
        """Wait (at most ``timeout``) until every record queued before this call is written
        or dropped, so a search right after a callback finds it. Needs ``run`` going."""
        target = self._queued_total
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._done_total < target:
                    self._progress.clear()
                    self._wake.set()
                    await self._progress.wait()

    def _take(self, batch: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        while len(batch) < WRITE_BATCH and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        for _, data in batch:
            self.queued_bytes -= len(data)
        return batch

    async def _write(self, batch: list[tuple[str, bytes]]) -> None:
        """One store round trip for the batch; on failure its records are dropped (counted)."""
        records = [(c, d, self.maxlen(c, len(d))) for c, d in batch]
        try:
            await self.state.store.log_write(records, self.settings.max_age_s)
        except Exception as exc:  # a store outage must not stop logging for good
            log.debug("%d log records dropped: %s", len(batch), exc)
            for _ in batch:
                self._drop()
        else:
            self.written += len(batch)
            if self._count_written is not None:
                self._count_written(len(batch))
        self._done_total += len(batch)
        self._progress.set()

    async def flush(self) -> None:
        while not self.queue.empty():
            await self._write(self._take([]))


@dataclass(frozen=True)
class Filter:
    """What a search or a live tail keeps."""

    command: str | None = None
    operation_id: str | None = None
    level: str | None = None  # info | error

    def keeps(self, record: dict[str, Any]) -> bool:
        if self.command is not None and record.get("command") != self.command:
            return False
        if self.operation_id is not None and record.get("operationID") != self.operation_id:
            return False
        return self.level is None or record.get("level") == self.level


async def search(store: Any, flt: Filter, since_ms: int, limit: int) -> list[bytes]:
    """The newest ``limit`` records kept by ``flt`` not older than ``since_ms``, oldest first
    (JSON, as stored). Each command's stream is read newest first, a page at a time."""
    commands: Iterable[str] = [flt.command] if flt.command else await store.log_commands()
    found: list[tuple[str, bytes]] = []
    for command in commands:
        top, scanned, kept = "+", 0, 0
        while kept < limit and scanned < SCAN_LIMIT:
            rows = await store.logs_before(command, top, since_ms, PAGE)
            if not rows:
                break
            scanned += len(rows)
            for entry_id, data in rows:
                try:
                    record = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if flt.keeps(record):
                    found.append((entry_id, data))
                    kept += 1
                    if kept >= limit:
                        break
            top = "(" + rows[-1][0]
            if len(rows) < PAGE:
                break
    found.sort(key=lambda row: tuple(int(part) for part in row[0].split("-")))
    return [data for _, data in found[-limit:]]


class LiveHub:
    """One subscription to ``P:logs:live`` per HTTP process, fanned out to its tails.

    Started by the first tail; the subscription is kept (and re-made after a store outage)
    while the process runs."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.readers: set[asyncio.Queue[bytes]] = set()
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _ensure(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="logs-live")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                pubsub = self.store.logs_subscription()
                await pubsub.subscribe(self.store.keys.logs_live)
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "subscribe":
                        # Confirmed by the server: records published from now on reach us.
                        self.subscribed.set()
                    if msg is None or msg.get("type") != "message":
                        continue
                    data = msg["data"]
                    data = data.encode() if isinstance(data, str) else data
                    # A message is a batch: records separated by newlines (never inside JSON text).
                    for record in data.split(b"\n"):
                        for queue in list(self.readers):
                            with contextlib.suppress(asyncio.QueueFull):  # a slow reader loses records
                                queue.put_nowait(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.debug("live log subscription lost: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), 0.5)

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[asyncio.Queue[bytes]]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(LIVE_QUEUE)
        self.readers.add(queue)
        self._ensure()
        try:
            yield queue
        finally:
            self.readers.discard(queue)

    async def close(self) -> None:
        if self._task is not None:
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.1)


def parse_since(text: str) -> int:
    """``since``: ISO-8601 (``2026-12-06T03:36:55Z``) or unix seconds, as milliseconds."""
    from datetime import UTC, datetime

    try:
        return max(0, int(float(text) * 1000))
    except (ValueError, OverflowError):  # OverflowError: inf; nan fails int() with ValueError
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("since must be an ISO-8601 time (2026-12-06T03:36:55Z) or unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int(when.timestamp() * 1000))

