"""The side-effect-free test run behind ``POST /admin/scripts/{command}/test``."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from sandbox.api import POLICY, RunResult
from server.catalog import Command
from server.offline.kv_overlay import OverlayKV
from server.reply import continue_with
from server.service.callbacks import REPLY_MARGIN_S, Dispatcher, verdict_reply


class Tester:
    def __init__(self, dispatcher: Dispatcher, store: Any, open_scratch: Any) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.open_scratch = open_scratch  # async () -> a throwaway embedded store

    async def run(self, command: Command, payload: dict[str, Any], source: str) -> dict[str, Any]:
        import orjson

        settings = self.dispatcher.settings[command.name]
        pool = self.dispatcher.pool
        issues = await pool.check(source)
        if issues:
            first = issues[0]
            result = RunResult.failed(POLICY, f"line {first.line}, col {first.col}: {first.message}")
        else:
            scratch = await self.open_scratch()
            try:
                loop = asyncio.get_running_loop()
                result = await pool.run(
                    source=source,
                    sha256=hashlib.sha256(source.encode()).hexdigest(),
                    payload_json=orjson.dumps(payload),
                    budgets=settings.budgets,
                    kv=OverlayKV(self.store, scratch, settings.namespace),
                    deadline=loop.time() + settings.deadline_ms / 1000 - REPLY_MARGIN_S,
                )
            finally:
                await scratch.close()
        if command.is_before:
            reply, _verdict, error = verdict_reply(command, settings, result, payload)
            command.with_echo(payload, reply)
        else:
            reply, error = continue_with(), result.error
        out: dict[str, Any] = {
            "reply": reply,
            "logs": result.logs,
            "kv_ops": result.kv_ops,
            "elapsed_ms": result.elapsed_ms,
            "error": error.to_wire() if error else None,
        }
        if issues:
            out["details"] = [i.to_wire() for i in issues]
        return out
