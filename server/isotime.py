"""Timestamps as people and JSON tools read them: ISO-8601 UTC with milliseconds.

The store keeps unix seconds (floats, cheap to compare and sort); JSON that the admin API
shows a person carries ``iso_utc`` strings, e.g. ``"2026-12-06T03:36:55.123Z"``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

_last: tuple[int, str] = (-1, "")  # (unix second, its text): one object, read and replaced whole


def iso_utc(ts: float | None) -> str | None:
    """``ts`` (unix seconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``; None stays None.

    Milliseconds are truncated, not rounded, so a time never shows as later than it was
    (and 59.9996 s never becomes second 60)."""
    global _last
    if ts is None:
        return None
    ms = math.floor(ts * 1000)
    second = ms // 1000
    cached = _last
    if cached[0] != second:
        # Every per-callback log record carries one: strftime once a second, not per record.
        cached = _last = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{ms % 1000:03d}Z"
