"""Last known state of the backend, updated by every call's outcome (no extra traffic)."""

from __future__ import annotations

import logging
import time

from server.isotime import iso_utc
from server.store.errors import describe, reason

log = logging.getLogger("scriptgate.store")


class Health:
    def __init__(self) -> None:
        self.healthy = False  # unknown until the first answer
        self.last_error: str | None = None
        self.last_reason: str | None = None  # last_error as a person would say it (errors.reason)
        self.last_ok: float | None = None  # unix time of the last successful call
        self.down_since: float | None = time.time()
        self.failures = 0

    def ok(self) -> None:
        if not self.healthy:
            if self.last_ok is not None:
                log.warning("redis is reachable again")
            self.healthy = True
            self.down_since = None
        self.last_ok = time.time()

    def down(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = describe(exc)
        self.last_reason = reason(exc)
        if self.healthy:
            log.warning("redis unavailable: %s", self.last_error)
            self.healthy = False
            self.down_since = time.time()

    def to_json(self) -> dict[str, object]:
        return {
            "connected": self.healthy,
            "last_error": self.last_error,
            "last_ok": iso_utc(self.last_ok),
            "down_since": iso_utc(self.down_since),
            "failures": self.failures,
        }
