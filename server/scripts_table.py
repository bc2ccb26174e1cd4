"""The table of live scripts, cached in each HTTP process.

The callback hot path reads it with a dict lookup; it is refreshed from the store when
any instance changes a script (pub/sub + periodic generation check in the store), and
immediately after an admin write through this instance. If the store goes away the last
known table keeps serving.

Registry loss. The store's generation only grows, so a generation that went backwards or
disappeared, or a live pointer whose version body is missing, means the registry was
flushed, restarted without persistence, or evicted. Then the table is NOT replaced by
what the store says (that would unload every script silently): the last known scripts
keep serving, the loss is logged as an error, counted (``scriptgate_registry_losses_total``)
and shown by ``/healthz`` (status "degraded", ``registry.lost``), and what the store lacks
is written back from the last known scripts (``Store.restore_registry``: only absent
commands and bodies, never over something present). Once the write-back succeeded the
store is the truth again; until it does (store read-only, unreachable) it is retried on
every change check.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from server.isotime import iso_utc
from server.store.base import ActiveScript

log = logging.getLogger("scriptgate.scripts")
# /healthz stays "degraded" this long after a loss, even once the scripts are written
# back: a probe polling every few seconds must see it (the log and metric stay too).
LOSS_REPORT_S = 60.0
SIBLINGS_WAIT_S = 2.0


class ScriptTable:
    def __init__(self, store: Any, metrics: Any = None, siblings: Any = None) -> None:
        self.store = store
        self.metrics = metrics
        self.siblings = siblings  # server/sync.py: where this process says what it serves
        self._scripts: dict[str, ActiveScript] = {}
        self.loaded = False  # False until the store has answered once
        self.generation = -1  # the registry generation the table was read at
        self.lost: str | None = None  # why the registry is considered lost (None: it is not)
        self.lost_since: float | None = None
        self.last_loss: float | None = None
        self.restored: list[str] = []  # commands written back after the last loss

    def get(self, command: str) -> ActiveScript | None:
        return self._scripts.get(command)

    def snapshot(self) -> dict[str, ActiveScript]:
        return dict(self._scripts)

    def problem(self) -> str | None:
        """Why /healthz must not say "ok" because of the registry (None: no reason)."""
        if self.lost is not None:
            return f"script registry lost: {self.lost}; serving the last known scripts"
        if self.last_loss is not None and time.time() - self.last_loss < LOSS_REPORT_S:
            return (f"script registry was lost at {iso_utc(self.last_loss)} and restored from the last known "
                    f"scripts ({', '.join(self.restored) or 'nothing to write back'})")
        return None

    def describe(self) -> dict[str, Any]:
        return {"generation": self.generation, "lost": self.lost, "lost_since": iso_utc(self.lost_since),
                "last_loss": iso_utc(self.last_loss), "restored": self.restored}

    def _loss(self, snap: Any) -> str | None:
        if not self.loaded:
            return None  # nothing known to lose (a first start on an empty store)
        if snap.generation is None and self.generation > 0:
            return "the registry generation is missing (store flushed or restarted without persistence)"
        if snap.generation is not None and snap.generation < self.generation:
            return f"the registry generation went backwards ({self.generation} -> {snap.generation})"
        known = {c for c in snap.missing if c in self._scripts}
        if known:
            return f"live version bodies missing for {', '.join(sorted(known))}"
        return None

    async def refresh(self) -> None:
        snap = await self.store.registry_snapshot()
        why = self._loss(snap)
        if why is not None:
            await self._recover(why)
            snap = await self.store.registry_snapshot()
            if self._loss(snap) is not None:  # e.g. flushed again in between: next round
                raise RuntimeError("registry still lost after the write-back")
        elif self.lost is not None:
            log.warning("script registry is back (generation %s)", snap.generation)
            self._set_lost(None)
        if snap.restored_at is not None and (self.last_loss is None or snap.restored_at > self.last_loss):
            # Written back by another process or instance: report it here too.
            self.last_loss, self.restored = snap.restored_at, snap.restored
            if self.loaded and why is None:
                log.error("script registry was lost and written back by another process (%s)",
                          ", ".join(snap.restored) or "nothing to write back")
        table = snap.table
        changed = {c for c in set(table) | set(self._scripts) if table.get(c) != self._scripts.get(c)}
        self._scripts = table
        if changed or not self.loaded:
            # The first load is summed up by serve's "ready" line; later changes are news.
            log.log(logging.INFO if self.loaded else logging.DEBUG, "live scripts: %s",
                    {c: s.version for c, s in sorted(table.items())} or "none")
        self.loaded = True
        self.generation = snap.generation or 0
        if self.siblings is not None:
            self.siblings.serving(self.generation)

    async def _recover(self, why: str) -> None:
        if self.lost is None:
            log.error("script registry lost: %s; still serving the %d last known live scripts (%s) and "
                      "writing them back", why, len(self._scripts),
                      ", ".join(f"{c} v{s.version}" for c, s in sorted(self._scripts.items())) or "none")
            self.last_loss = time.time()
            if self.metrics is not None:
                self.metrics.registry_losses.inc()
            self._set_lost(why)
        # Raises on a store outage or refusal: the watcher calls refresh again (the table
        # is left as it was, so the last known scripts keep serving meanwhile).
        restored = await self.store.restore_registry(self._scripts, self.generation)
        if restored:
            self.restored = restored
            if self.siblings is not None:
                # The sibling processes report the loss too before the line below says it
                # is over (they read the write-back's marker with the new generation).
                await self.siblings.wait_generation(self.store.last_generation, SIBLINGS_WAIT_S)
            log.error("script registry restored from the last known live scripts: %s", ", ".join(restored))
            if self.metrics is not None:
                self.metrics.registry_restores.inc(len(restored))
        self._set_lost(None)

    def _set_lost(self, why: str | None) -> None:
        self.lost = why
        self.lost_since = None if why is None else (self.lost_since or time.time())
        if self.metrics is not None:
            self.metrics.registry_lost.set(0 if why is None else 1)

    async def watch(self) -> None:
        """Run forever: refresh on every change notification (the store retries outages)."""
        await self.store.watch(self.refresh)
