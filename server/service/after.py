"""Early acknowledgements for after-callbacks: answer at once, run the script right after.

OpenIM sends every after-callback with ``AsyncPost`` / ``AsyncPostWithQuery``
(pkg/common/webhook/http_client.go@7848d7c7354945fe7b40f6b990db8b6013a9037c, and the same
on 3.8.3-patch@b67c03b33ec9893d876087008433dc19c3969bc5): the post runs on its in-memory
queue (2 workers, 100 slots) and its result is dropped: the reply is decoded and logged,
never read by the caller (each ``webhookAfter...`` in internal/rpc/*/callback.go,
internal/msggateway/callback.go and internal/msgtransfer/callback.go passes a fresh
response struct and returns). So the reply of an after-callback can be sent before its
script has run, and it is the same bytes as the synchronous one: an after-callback's reply
is always the plain continue, whatever its script does (server/service/callbacks.py).
docs/openim.md says this with the call sites.

``EarlyAcks`` is the bound and the bookkeeping: at most ``limit`` background runs pending
per HTTP process (``after_ack_max_pending``), and per command at most half of the worker
pool's queue for one command (``command_cap``: the background runs alone can never fill the
queue, whose overflow would refuse a script, nor the queue wait grow past what the
deadline allows); a callback that finds no room is answered the old way, after its script
(back-pressure, nothing dropped). Background runs are
tasks held here (strong references), counted, awaited by the graceful drain
(server/serve.py) and cancelled only when the drain grace is over. A failure in one never
reaches the event loop or any other callback: it is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from server.logfmt import callback_fields

log = logging.getLogger("scriptgate.dispatch")


class EarlyAcks:
    """The pending background runs of early-acknowledged after-callbacks (one HTTP process)."""

    def __init__(self, limit: int, log_allowed: Callable[[str], bool] = lambda command: True) -> None:
        self.limit = limit  # 0: never acknowledge early
        # A failing background run is an internal error (script failures are outcomes,
        # recorded as such), logged with its traceback under the dispatcher's per-command
        # log rate limit, so a failure under load cannot flood the log.
        self.log_allowed = log_allowed
        self.accepting = limit > 0  # False once the graceful drain has begun
        self.tasks: set[asyncio.Task[None]] = set()
        self.by_command: dict[str, int] = {}  # pending runs per command
        self.acked = 0  # early acknowledgements sent
        self.inline = 0  # after-callbacks answered after their script because the bound was reached
        self.failed = 0  # background runs that raised (logged)
        self.unfinished = 0  # background runs cut at the end of the drain grace

    @property
    def pending(self) -> int:
        return len(self.tasks)

    def has_room(self, command: str, command_cap: int | None = None) -> bool | None:
        """May an after-callback of ``command`` be acknowledged now? None when early
        acknowledgements are off (or the drain has begun); False when the bound (or the
        command's ``command_cap``) is reached: the caller answers after the script and
        counts it (``inline``)."""
        if not self.accepting:
            return None
        if len(self.tasks) < self.limit and (command_cap is None or self.by_command.get(command, 0) < command_cap):
            return True
        self.inline += 1
        return False

    def start(self, command: str, operation_id: str, run: Coroutine[Any, Any, None]) -> None:
        """Run ``run`` (the script and the recording of its outcome) in the background."""
        task = asyncio.get_running_loop().create_task(self._guarded(command, operation_id, run))
        self.tasks.add(task)
        self.by_command[command] = self.by_command.get(command, 0) + 1
        task.add_done_callback(lambda done: self._done(command, done))
        self.acked += 1

    def _done(self, command: str, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.by_command[command] -= 1

    async def _guarded(self, command: str, operation_id: str, run: Coroutine[Any, Any, None]) -> None:
        try:
            await run
        except asyncio.CancelledError:
            # Only the drain cancels (after its grace): counted and logged there.
            pass
        except Exception:
            self.failed += 1
            if not self.log_allowed(command):
                return
            log.exception("early-acknowledged %s operationID=%s: background run failed (%d so far)", command,
                          operation_id or "-", self.failed, extra=callback_fields(command, operation_id))

    def stop_accepting(self) -> None:
        """From now on every after-callback is answered after its script (graceful stop)."""
        self.accepting = False

    def cut(self) -> int:
        """Cancel the background runs still pending (the drain grace is over); how many."""
        left = [task for task in self.tasks if not task.done()]
        for task in left:
            task.cancel()
        self.unfinished += len(left)
        return len(left)

    def describe(self) -> dict[str, int]:
        """For /healthz."""
        return {"max_pending": self.limit, "pending": len(self.tasks), "early_acked": self.acked,
                "inline_full": self.inline, "failed": self.failed, "unfinished": self.unfinished}
