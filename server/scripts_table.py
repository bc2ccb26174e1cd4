"""The table of live scripts, cached in each HTTP process.

The callback hot path reads it with a dict lookup; it is refreshed from the store when
any instance changes a script (pub/sub + periodic generation check in the store), and
immediately after an admin write through this instance. If the store goes away the last
known table keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from server.store.base import ActiveScript

log = logging.getLogger("scriptgate.scripts")


class ScriptTable:
    def __init__(self, store: Any) -> None:
        self.store = store
        self._scripts: dict[str, ActiveScript] = {}
        self.loaded = False  # False until the store has answered once

    def get(self, command: str) -> ActiveScript | None:
        return self._scripts.get(command)

    def snapshot(self) -> dict[str, ActiveScript]:
        return dict(self._scripts)

    async def refresh(self) -> None:
        table = await self.store.active_table()
        changed = {c for c in set(table) | set(self._scripts) if table.get(c) != self._scripts.get(c)}
        self._scripts = table
        if changed or not self.loaded:
            # The first load is summed up by serve's "ready" line; later changes are news.
            log.log(logging.INFO if self.loaded else logging.DEBUG, "live scripts: %s",
                    {c: s.version for c, s in sorted(table.items())} or "none")
        self.loaded = True

    async def watch(self) -> None:
        """Run forever: refresh on every change notification (the store retries outages)."""
        await self.store.watch(self.refresh)
