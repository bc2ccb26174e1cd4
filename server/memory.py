"""What a script can make the HTTP process hold, and the process's soft memory limit.

Every store a script can fill is bounded in bytes (defaults; see docs/isolation.md):

==========================  =========================================  ==============
what                        bound                                      default
==========================  =========================================  ==============
client-side KV cache        ``cache_mb`` / ``cache_ns_mb`` (store URL)  64 / 16 MiB
recording queue             ``recorder.QUEUE_BYTES``                    32 MiB
workers' kept KV answers    ``kvrelay.MAX_KEPT_BYTES`` per worker       4 MiB
a reply, its logs           the worker's budgets, and the frame limit  8 MiB a frame
                            (``protocol.MAX_FROM_WORKER``) per call
queued calls                ``max_queue`` per command                  64 x workers
==========================  =========================================  ==============

The soft limit (``memory_soft_limit_mb``, default 300 MiB of resident memory per HTTP
process) is checked every few seconds: above it the process logs a warning, drops its
client-side KV cache (the largest reducible part) and ``/healthz`` says so. It is soft:
nothing is refused, and the bounds above keep a default process well below it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

log = logging.getLogger("scriptgate.memory")

SOFT_LIMIT_MB = 300
CHECK_INTERVAL_S = 2.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident memory of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def host_memory(state: Any) -> dict[str, Any]:
    """Bytes held now and their bounds (``/healthz``, metrics)."""
    from server.recorder import QUEUE_BYTES

    cache = getattr(state.store, "cache", None)
    recorder = state.recorder
    pool_stats = state.pool.stats() if hasattr(state.pool, "stats") else {}
    soft = int(getattr(state.config, "memory_soft_limit_mb", SOFT_LIMIT_MB)) * 2**20
    rss = rss_bytes()
    out: dict[str, Any] = {
        "rss_bytes": rss,
        "soft_limit_bytes": soft,
        "over_soft_limit": bool(rss and rss > soft),
        "kv_cache_bytes": cache.bytes if cache is not None else 0,
        "kv_cache_limit_bytes": cache.max_bytes if cache is not None else 0,
        "kv_cache_namespace_limit_bytes": cache.ns_max_bytes if cache is not None else 0,
        "recording_queue_bytes": recorder.queued_bytes if recorder is not None else 0,
        "recording_queue_limit_bytes": recorder.queue_bytes_limit if recorder is not None else QUEUE_BYTES,
        "worker_kept_bytes": int(pool_stats.get("kept_bytes", 0)),
    }
    return out


class MemoryWatch:
    """Periodic: refresh the gauges, enforce the soft limit."""

    def __init__(self, state: Any, interval: float = CHECK_INTERVAL_S) -> None:
        self.state = state
        self.interval = interval
        self.over = False
        self._warned_at = 0.0
        self.cache_drops = 0

    def check(self) -> dict[str, Any]:
        mem = host_memory(self.state)
        metrics = getattr(self.state, "metrics", None)
        if metrics is not None and hasattr(metrics, "refresh"):
            metrics.refresh(self.state, mem)
        self.over = mem["over_soft_limit"]
        if self.over:
            cache = getattr(self.state.store, "cache", None)
            if cache is not None and cache.bytes:
                cache.flush()
                self.cache_drops += 1
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warning("HTTP process resident memory %d MiB is above its soft limit of %d MiB; "
                            "client-side KV cache dropped", mem["rss_bytes"] >> 20, mem["soft_limit_bytes"] >> 20)
        return mem

    async def run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # a metrics hiccup must not end the watch
                log.debug("memory check failed", exc_info=True)
            await asyncio.sleep(self.interval)


def isolation_health(state: Any) -> dict[str, Any]:
    """The ``/healthz`` fields about sharing: commands' shares, the penalty box, memory."""
    out: dict[str, Any] = {"memory": host_memory(state)}
    fairness = getattr(state.pool, "fairness", None)
    if fairness is not None:
        out["fairness"] = fairness()
    return out
