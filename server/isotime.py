"""Timestamps as people and JSON tools read them: ISO-8601 UTC with milliseconds.

The store keeps unix seconds (floats, cheap to compare and sort); JSON that the admin API
shows a person carries ``iso_utc`` strings, e.g. ``"2026-12-06T03:36:55.123Z"``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def iso_utc(ts: float | None) -> str | None:
    """``ts`` (unix seconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``; None stays None.

    Milliseconds are truncated, not rounded, so a time never shows as later than it was
    (and 59.9996 s never becomes second 60)."""
    if ts is None:
        return None
    ms = math.floor(ts * 1000)
    whole = datetime.fromtimestamp(ms // 1000, UTC)
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
