"""The penalty box and the bytes held for scripts reach /metrics and /healthz
(server/metrics.py, server/memory.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sandbox.host.fairness import BoxSettings, FairQueue, PenaltyBox
from server.config import Config
from server.memory import MemoryWatch, host_memory, isolation_health, rss_bytes
from server.metrics import Metrics
from server.store.tracking import KVCache


class FakePool:
    def __init__(self) -> None:
        self.box = PenaltyBox(BoxSettings(strikes=1, base_s=600.0, max_s=600.0))
        self._fair: FairQueue[Any] = FairQueue(3)

    def stats(self) -> dict[str, int]:
        return {"kept_bytes": 1234}

    def fairness(self) -> dict[str, Any]:
        return {"share": 3, "commands": self._fair.snapshot(), "penalty_box": self.box.snapshot()}


def make_state(soft_mb: int = 300) -> Any:
    cache = KVCache(max_bytes=8 << 20, ns_max_bytes=2 << 20, root="p:kv:")
    epoch = cache.begin("p:kv:team:k")
    cache.finish("p:kv:team:k", epoch, [(("g",), "v" * 5000)], 0.0)
    config = Config()
    config.memory_soft_limit_mb = soft_mb
    return SimpleNamespace(pool=FakePool(), store=SimpleNamespace(cache=cache), recorder=None,
                           config=config, metrics=Metrics())


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_penalty_box_and_memory_on_metrics() -> None:
    state = make_state()
    state.pool.box.record("callbackHog", True, "budget exceeded: wall time")
    assert state.pool.box.admit("callbackHog") is not None
    assert state.pool.box.admit("callbackHog") is not None
    state.metrics.refresh(state)
    state.metrics.refresh(state)  # totals are not counted twice
    text = state.metrics.render().decode()
    assert sample(text, 'scriptgate_penalty_box_total{command="callbackHog"}') == 1.0
    assert sample(text, 'scriptgate_penalty_box_refused_total{command="callbackHog"}') == 2.0
    assert sample(text, 'scriptgate_penalty_boxed{command="callbackHog"}') == 1.0
    assert sample(text, 'scriptgate_host_memory_bytes{what="kv_cache"}') == state.store.cache.bytes > 5000
    assert sample(text, 'scriptgate_host_memory_bytes{what="kv_cache_limit"}') == 8 << 20
    assert sample(text, 'scriptgate_host_memory_bytes{what="worker_kept"}') == 1234
    assert sample(text, 'scriptgate_host_memory_bytes{what="rss_limit"}') == 300 << 20
    assert sample(text, 'scriptgate_kv_cache_namespace_bytes{namespace="team"}') == state.store.cache.bytes


def test_healthz_fields() -> None:
    state = make_state()
    state.pool.box.record("callbackHog", True, "budget exceeded: steps")
    health = isolation_health(state)
    assert health["fairness"]["penalty_box"]["boxed"]["callbackHog"]["reason"] == "budget exceeded: steps"
    mem = health["memory"]
    assert mem["kv_cache_namespace_limit_bytes"] == 2 << 20 and mem["rss_bytes"] == rss_bytes() > 0
    assert mem["over_soft_limit"] is False


def test_over_the_soft_limit_the_cache_is_dropped() -> None:
    state = make_state(soft_mb=1)  # every process is above 1 MiB
    watch = MemoryWatch(state)
    assert host_memory(state)["over_soft_limit"] is True
    watch.check()
    assert watch.over and watch.cache_drops == 1 and state.store.cache.bytes == 0
