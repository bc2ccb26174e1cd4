"""Prometheus metrics: calls, verdicts, script errors and latency per command; recordings.

With several HTTP processes (``--workers N``) prometheus-client's multiprocess mode is
used (``PROMETHEUS_MULTIPROC_DIR`` is set by the CLI before this module is imported), so
``/metrics`` on any process reports the totals of all of them.
"""

from __future__ import annotations

import os

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
            "Time from request body received to reply written, by command",
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
        self.recordings = Counter(
            "scriptgate_recordings_total",
            "Recorded callbacks: written to the store, or dropped (queue full, store slow or failing)",
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
        self._children: dict[str, tuple] = {}

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
