"""Admin endpoints for what callbacks left behind: recordings (``/admin/recordings``),
the audit log (``/admin/audit``) and per-callback logs (``/admin/logs``, server/calllogs.py)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import orjson
import tornado.iostream

from server import calllogs
from server.http.admin_base import (
    AUDIT_ID_RE,
    MAX_LIST_LIMIT,
    AdminHandler,
    HTTPFail,
    bad_parameter,
    bool_arg,
    int_arg,
    matching_arg,
    since_arg,
)
from server.store.base import StoreError, StoreUnavailable

RECORDINGS_PAGE = 1000


class RecordingsHandler(AdminHandler):
    query = {"GET": frozenset({"since", "limit", "operationID"})}

    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def _get(self, name: str) -> None:
        command = self.command(name)
        limit = int_arg(self.get_query_argument("limit", None), 1000, 1, 100_000, "limit")
        # Read-your-writes: every callback answered before this request is in the store.
        await self.state.recordings_settled()
        since = since_arg(self.get_query_argument("since", None))
        operation_id = self.get_query_argument("operationID", None)
        if operation_id is not None:
            await self._get_operation(command, operation_id, limit, since)
            return
        # A page at a time (RECORDINGS_PAGE records), flushed as it goes: an export of 100,000
        # records holds one page in memory and callbacks are served between pages.
        store = self.state.store
        start: str | None = await store.recordings_start(command, limit, since, RECORDINGS_PAGE)
        self.set_header("Content-Type", "application/x-ndjson")
        sent, flushed = 0, False
        try:
            while start is not None and sent < limit:
                records, start = await store.recordings_page(command, start, min(RECORDINGS_PAGE, limit - sent))
                sent += len(records)
                if records:
                    self.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
                    if start is not None and sent < limit:
                        await self.flush()
                        flushed = True
        except (StoreError, StoreUnavailable):
            if not flushed:
                raise  # nothing sent yet: the usual JSON error
            # The status is out already: cut the response off (no final chunk) so the client
            # sees an incomplete body, never one that looks complete.
            self.request.connection.close()
            return
        self.finish()


    async def _get_operation(self, command: str, operation_id: str, limit: int, since: float | None) -> None:
        """The last ``limit`` records of one operationID (from ``since``): the stream is read
        a page at a time, keeping only the matches."""
        store = self.state.store
        start: str | None = await store.recordings_start(command, 1, since, RECORDINGS_PAGE) if since else "-"
        kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        while start is not None:
            records, start = await store.recordings_page(command, start, RECORDINGS_PAGE)
            kept.extend(r for r in records if r.get("operationID") == operation_id)
            await asyncio.sleep(0)  # callbacks are served between pages
        self.set_header("Content-Type", "application/x-ndjson")
        self.finish(b"".join(orjson.dumps(r) + b"\n" for r in kept))


class AuditHandler(AdminHandler):
    query = {"GET": frozenset({"limit", "before"})}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        limit = int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LIST_LIMIT, "limit")
        before = matching_arg(self.get_query_argument("before", None), "", AUDIT_ID_RE, "before",
                               "an audit entry id like 1700000000000-0") or None
        entries = await self.state.store.audit(limit, before)
        self.send({"entries": [e.to_json() for e in entries]})


# --- per-callback logs (server/calllogs.py) ---------------------------------------------

MAX_LOGS_LIMIT = 10_000


def _log_filter(handler: AdminHandler, *, errors_flag: bool) -> calllogs.Filter:
    command = handler.get_query_argument("command", None) or None
    if command is not None and command not in handler.state.catalog:
        raise bad_parameter(f"unknown callbackCommand {command[:80]!r}")
    operation_id = handler.get_query_argument("operationID", None) or None
    if operation_id is not None and len(operation_id) > 128:
        raise bad_parameter("operationID is longer than 128 characters")
    if errors_flag:
        level = "error" if bool_arg(handler.get_query_argument("errors", None), False, "errors") else None
    else:
        level = handler.get_query_argument("level", None) or None
        if level is not None and level not in calllogs.LEVELS:
            raise bad_parameter(f"level must be one of {', '.join(calllogs.LEVELS)}")
    return calllogs.Filter(command, operation_id, level)


class LogsHandler(AdminHandler):
    query = {"GET": frozenset({"command", "operationID", "level", "since", "limit"})}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        flt = _log_filter(self, errors_flag=False)
        limit = int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LOGS_LIMIT, "limit")
        since_arg = self.get_query_argument("since", None)
        since_ms = 0
        if since_arg:
            try:
                since_ms = calllogs.parse_since(since_arg)
            except ValueError as exc:
                raise HTTPFail(400, "bad_parameter", str(exc)) from None
        if self.state.calllogs is not None:
            await self.state.calllogs.settled()  # this process's callbacks so far are found
        records = await calllogs.search(self.state.store, flt, since_ms, limit)
        self.set_header("Content-Type", "application/x-ndjson")
        self.finish(b"".join(r + b"\n" for r in records))


class LogsStreamHandler(AdminHandler):
    """Server-sent events: ``data: <record JSON>`` per callback, a ``: keep-alive`` comment
    when idle. Records come from every process and instance (pub/sub on the store)."""

    query = {"GET": frozenset({"command", "operationID", "errors"})}

    def on_connection_close(self) -> None:
        self._closed.set()

    async def get(self) -> None:
        self._closed = asyncio.Event()
        await self._call(self._get)

    async def _get(self) -> None:
        flt = _log_filter(self, errors_flag=True)
        hub = self.state.live_logs()
        keepalive = self.state.config.logs.keepalive_s
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # proxies must not hold events back
        async with hub.reader() as queue:
            try:
                await asyncio.wait_for(hub.subscribed.wait(), 5.0)
            except TimeoutError:
                raise StoreUnavailable("live log subscription") from None
            try:
                self.write(b": connected\n\n")
                await self.flush()
                closed = asyncio.ensure_future(self._closed.wait())
                try:
                    while not self._closed.is_set():
                        getter = asyncio.ensure_future(queue.get())
                        done, _ = await asyncio.wait({getter, closed}, timeout=keepalive,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if getter not in done:
                            getter.cancel()
                            if not self._closed.is_set():
                                self.write(b": keep-alive\n\n")
                                await self.flush()
                            continue
                        data = getter.result()
                        try:
                            record = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            continue
                        if flt.keeps(record):
                            self.write(b"data: " + data + b"\n\n")
                            await self.flush()
                finally:
                    closed.cancel()
            except tornado.iostream.StreamClosedError:
                return
        if not self.answered and not self._closed.is_set():
            self.finish()


