"""Prometheus metrics: calls, verdicts, script errors and latency per command; recordings;
the penalty box; the bytes the process holds for scripts (``server/memory.py``); early
acknowledgements of after-callbacks (``server/service/after.py``).

With several HTTP processes (``--workers N``) prometheus-client's multiprocess mode is
used (``PROMETHEUS_MULTIPROC_DIR`` is set by the CLI before this module is imported), so
``/metrics`` on any process reports the totals of all of them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """One instance per process, created by the app (no import-time registration)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        if self.multiprocess:
            prom_multiprocess.MultiProcessCollector(self.registry)
        self.calls = Counter(
            "scriptgate_callbacks_total", "Callbacks received, by command", ["command"], registry=reg
        )
        self.verdicts = Counter(
            "scriptgate_verdicts_total",
            "Callback outcomes: allow, modify, deny, error, none (no script)",
            ["command", "verdict"],
            registry=reg,
        )
        self.errors = Counter(
            "scriptgate_script_errors_total",
            "Script failures by kind: exception, budget, invalid_result, policy, unavailable",
            ["command", "kind"],
            registry=reg,
        )
        self.latency = Histogram(
            "scriptgate_callback_duration_seconds",
            "Time from request body received to reply written (for an early-acknowledged after-callback: "
            "to the end of its script), by command",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.bad_requests = Counter(
            "scriptgate_bad_requests_total", "Rejected callback requests, by reason", ["reason"], registry=reg
        )
        self.store_up = Gauge(
            "scriptgate_store_up",
            "1 when the store (Redis) answers, else 0",
            registry=reg,
            multiprocess_mode="liveall",
        )
        self.registry_losses = Counter(
            "scriptgate_registry_losses_total",
            "Times the script registry in the store was found emptied or reset (generation gone "
            "backwards or missing, live versions missing); the last known scripts kept serving",
            registry=reg,
        )
        self.registry_restores = Counter(
            "scriptgate_registry_restores_total",
            "Scripts written back to a store that had lost them, from the last known live scripts",
            registry=reg,
        )
        self.registry_lost = Gauge(
            "scriptgate_registry_lost",
            "1 while this process serves its last known scripts because the store lost the registry",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.recordings = Counter(
            "scriptgate_recordings_total",
            "Recorded callbacks: written to the store, or dropped (queue full, store slow or failing)",
            ["outcome"],
            registry=reg,
        )
        self.calllogs = Counter(
            "scriptgate_callback_logs_total",
            "Per-callback log records: written to the store, or dropped (queue full, store slow or failing)",
            ["outcome"],
            registry=reg,
        )
        self.reply_fixes = Counter(
            "scriptgate_reply_fixes_total",
            "Replies changed so that OpenIM does what the script meant: deny_errcode (errCode mapped to "
            "deny_errcode_fallback), deny_text (errMsg/errDlt cut or emptied), invite_narrowed "
            "(narrowed invitedUserIDs sent as a rejection or refusedMembersAccount)",
            ["command", "fix"],
            registry=reg,
        )
        self.command_source = Counter(
            "scriptgate_command_source_total",
            "Callbacks whose command was not taken from the path alone: body (the path named no known "
            "command, e.g. a query string in OpenIM's url), mismatch (path and body callbackCommand differ; the path wins)",
            ["source"],
            registry=reg,
        )
        self.penalty_boxes = Counter(
            "scriptgate_penalty_box_total",
            "Times a command was put in the penalty box (its calls kept exceeding their budgets)",
            ["command"], registry=reg,
        )
        self.penalty_refused = Counter(
            "scriptgate_penalty_box_refused_total",
            "Callbacks answered with the failure policy without running, the command being in the penalty box",
            ["command"], registry=reg,
        )
        self.penalty_boxed = Gauge(
            "scriptgate_penalty_boxed",
            "1 while the command is in the penalty box (in any HTTP process)",
            ["command"], registry=reg, multiprocess_mode="livemax",
        )
        self.memory = Gauge(
            "scriptgate_host_memory_bytes",
            "Bytes the HTTP processes hold, by what: rss, kv_cache, recording_queue, worker_kept "
            "(and their limits: *_limit)",
            ["what"], registry=reg, multiprocess_mode="livesum",
        )
        self.kv_cache_ns = Gauge(
            "scriptgate_kv_cache_namespace_bytes",
            "Bytes of the client-side KV cache used by each KV namespace",
            ["namespace"], registry=reg, multiprocess_mode="livesum",
        )
        self.after_early_acks = Counter(
            "scriptgate_after_early_acks_total",
            "After-callbacks answered at once, their script run right after (after_ack_max_pending)",
            ["command"], registry=reg,
        )
        self.after_inline_full = Counter(
            "scriptgate_after_inline_full_total",
            "After-callbacks answered after their script because after_ack_max_pending runs were pending",
            ["command"], registry=reg,
        )
        self.after_pending = Gauge(
            "scriptgate_after_pending",
            "Early-acknowledged after-callback scripts not yet finished",
            registry=reg, multiprocess_mode="livesum",
        )
        self.after_failed = Counter(
            "scriptgate_after_failed_total",
            "Background runs of early-acknowledged after-callbacks that raised (logged; no other callback is affected)",
            registry=reg,
        )
        self.after_unfinished = Counter(
            "scriptgate_after_unfinished_total",
            "Background runs of early-acknowledged after-callbacks cut at a graceful stop (drain_grace_s over)",
            registry=reg,
        )
        self._children: dict[str, tuple] = {}
        self._after_children: dict[tuple[str, bool], Any] = {}
        self._seen: dict[tuple[str, str], int] = {}  # counters fed from totals: last total seen
        self._boxed_keys: set[str] = set()
        self._cache_ns: set[str] = set()

    def _advance(self, counter: Counter, label: str, total: int) -> None:
        last = self._seen.get((counter._name, label), 0)
        if total > last:
            counter.labels(label).inc(total - last)
        self._seen[(counter._name, label)] = total

    def after_acked(self, command: str) -> None:
        self._after_child(command, True).inc()

    def after_inline(self, command: str) -> None:
        self._after_child(command, False).inc()

    def _after_child(self, command: str, early: bool) -> Any:
        child = self._after_children.get((command, early))
        if child is None:
            child = (self.after_early_acks if early else self.after_inline_full).labels(command)
            self._after_children[(command, early)] = child
        return child

    def sync_after(self, after: Any) -> None:
        """The early-acknowledgement gauge and counters from ``server.service.after.EarlyAcks``."""
        self.after_pending.set(after.pending)
        self._advance_total(self.after_failed, after.failed)
        self._advance_total(self.after_unfinished, after.unfinished)

    def _advance_total(self, counter: Counter, total: int) -> None:
        last = self._seen.get((counter._name, ""), 0)
        if total > last:
            counter.inc(total - last)
        self._seen[(counter._name, "")] = total

    def refresh(self, state: Any, mem: dict[str, Any] | None = None) -> None:
        """Bring the gauges and the penalty-box counters up to date (before a scrape, and
        periodically: with several HTTP processes each one writes its own values)."""
        after = getattr(getattr(state, "dispatcher", None), "after", None)
        if after is not None:
            self.sync_after(after)
        box = getattr(state.pool, "box", None)
        if box is not None:
            for key, n in list(box.boxed.items()):
                if key:
                    self._advance(self.penalty_boxes, key, n)
            for key, n in list(box.refused.items()):
                if key:
                    self._advance(self.penalty_refused, key, n)
            now = {k for k in box.boxed_now() if k}
            for key in now | self._boxed_keys:
                self.penalty_boxed.labels(key).set(1 if key in now else 0)
            self._boxed_keys |= now
        if mem is None:
            from server.memory import host_memory
            mem = host_memory(state)
        self.memory.labels("rss").set(mem["rss_bytes"])
        self.memory.labels("rss_limit").set(mem["soft_limit_bytes"])
        for what in ("kv_cache", "recording_queue"):
            self.memory.labels(what).set(mem[f"{what}_bytes"])
            self.memory.labels(f"{what}_limit").set(mem[f"{what}_limit_bytes"])
        self.memory.labels("worker_kept").set(mem["worker_kept_bytes"])
        cache = getattr(state.store, "cache", None)
        if cache is not None:
            used = cache.namespace_bytes()
            for ns in set(used) | self._cache_ns:
                self.kv_cache_ns.labels(ns or "-").set(used.get(ns, 0))
            self._cache_ns |= set(used)

    def observe(self, command: str, verdict: str, error_kind: str | None, seconds: float) -> None:
        # Label children are cached: .labels() costs more than the increment itself.
        child = self._children.get(command)
        if child is None:
            child = (self.calls.labels(command), self.latency.labels(command))
            self._children[command] = child
        child[0].inc()
        child[1].observe(seconds)
        self.verdicts.labels(command, verdict).inc()
        if error_kind:
            self.errors.labels(command, error_kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
