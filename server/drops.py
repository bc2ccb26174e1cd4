"""Counting what a bounded, never-blocking writer drops (recordings, per-callback logs).

A writer drops rather than block a callback when its queue is full or the store fails; each
drop is counted (and fed to a Prometheus counter when one is given), and logged at most once
a minute, since a slow store makes every callback drop and the log must not become the
next bottleneck."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

LOG_INTERVAL_S = 60.0


@dataclass
class Drops:
    what: str  # "recordings", "per-callback logs": the subject of the warning
    log: logging.Logger
    on_drop: Callable[[], None] | None = None  # e.g. a counter's labels("dropped").inc
    count: int = 0
    _logged_at: float = 0.0

    def drop(self) -> None:
        self.count += 1
        if self.on_drop is not None:
            self.on_drop()
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            self.log.warning("%s dropped: %d so far (the store is slow or unavailable)", self.what, self.count)
            self._logged_at = now
