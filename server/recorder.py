"""Recording of callbacks, off the reply's critical path.

``submit`` is called after the reply has been written: it applies the command's sampling
rate and puts the record on a bounded in-memory queue (dropping, and counting, when the
store cannot keep up). ``run`` drains the queue into the store (Redis Streams, capped by
count and age), so memory stays bounded whatever the traffic or the store's health.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from server.catalog import Command

log = logging.getLogger("scriptgate.recorder")
REDACTED = "[redacted]"
QUEUE_LIMIT = 10_000


def redact(data: Any, fields: tuple[str, ...]) -> Any:
    if not fields or type(data) is not dict:
        return data
    return {k: (REDACTED if k in fields else v) for k, v in data.items()}


class Recorder:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.settings = {name: s.record for name, s in state.dispatcher.settings.items()}
        self.queue: asyncio.Queue[tuple[Command, dict[str, Any]]] = asyncio.Queue(QUEUE_LIMIT)
        self.dropped = 0
        self.written = 0
        self._random = random.Random()

    @classmethod
    def create(cls, state: Any) -> Recorder | None:
        if not any(s.record.enabled for s in state.dispatcher.settings.values()):
            return None
        return cls(state)

    def submit(self, command: Command, payload: dict[str, Any], operation_id: str, outcome: Any, elapsed: float) -> None:
        settings = self.settings[command.name]
        if not settings.enabled:
            return
        if settings.sample < 1.0 and self._random.random() >= settings.sample:
            return
        record = {
            "ts": round(time.time(), 6),
            "command": command.name,
            "operationID": operation_id or str(payload.get("operationID") or ""),
            "request": redact(payload, settings.redact),
            "reply": redact(outcome.reply, settings.redact),
            "version": outcome.version,
            "verdict": outcome.verdict,
            "error_kind": outcome.error.kind if outcome.error else None,
            "error": outcome.error.message if outcome.error else None,
            "elapsed_ms": round(elapsed * 1000, 3),
        }
        try:
            self.queue.put_nowait((command, record))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        while True:
            command, record = await self.queue.get()
            await self._write(command, record)

    async def _write(self, command: Command, record: dict[str, Any]) -> None:
        settings = self.settings[command.name]
        try:
            await self.state.store.record(command.name, record, settings.max_records, settings.max_age_s)
            self.written += 1
        except Exception as exc:  # a store outage must not stop recording for good
            self.dropped += 1
            log.debug("recording dropped: %s", exc)

    async def flush(self) -> None:
        while not self.queue.empty():
            command, record = self.queue.get_nowait()
            await self._write(command, record)
