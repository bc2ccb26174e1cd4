"""Sharing the sandbox workers between commands: per-command queues and the penalty box.

Used by ``sandbox.host.pool.WorkerPool``; kept apart so the rules can be read (and tested)
without processes.

``FairQueue`` — every caller names a *key* (the callback command). Each key has its own
FIFO queue and may hold at most ``cap`` workers at once (default ``max(1, size - 1)``), so
a key that saturates leaves at least one worker to every other key and only ever waits
behind itself. When a worker comes free it goes to the waiting key that holds the fewest
workers (ties: the key that waited longest), i.e. max-min fair shares between keys that
all want more than they get.

``PenaltyBox`` — a key whose calls keep hitting their budgets (``strikes`` of the last
``window`` calls ended in a budget error while running) is boxed for ``base_s``, then
2x, 4x ... up to ``max_s``: its calls are refused without taking a worker, each after
``refusal_delay_ms`` (20 ms; the pool waits it). The pause keeps boxing from turning a slow
command into a fast one: a client that sends its next call as soon as the last is answered
(a bot, an SDK retrying a failed send) got its refusals back in ~1 ms and sent ~1,900
callbacks/s through the HTTP process, where the other commands' callbacks queued behind
them (victim p99 2.9x its baseline; 1.8x with the pause, at ~160/s). When
the box opens the key is on probation: one call at a time until one ends clean; a budget
hit on probation boxes it again for twice as long. ``clean_reset`` clean calls in a row
forget the key's history (the next box starts at ``base_s`` again).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("scriptgate.sandbox")

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-key FIFO queues of waiters (futures) with a per-key cap on held workers.

    Keys may belong to a *group* (the command's KV namespace, i.e. the team). Once keys of
    two or more groups have been seen, a group too holds at most ``cap`` workers, and a
    free worker goes to the group holding fewest first, then to its key holding fewest:
    a team with several commands gets no more of the pool than a team with one. Keys
    without a group (tests, admin checks) are not counted in any group."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.held: collections.Counter[str] = collections.Counter()
        self.group_held: collections.Counter[str] = collections.Counter()
        self._group: dict[str, str] = {}  # key -> its group
        self._groups: set[str] = set()
        self._queues: dict[str, collections.deque[Any]] = {}
        self._order: dict[str, int] = {}  # key -> ticket of its oldest waiter (tie-break)
        self._tickets = 0

    def set_group(self, key: str, group: str | None) -> None:
        if group is not None and self._group.get(key) != group and key not in self.held:
            self._group[key] = group
            self._groups.add(group)

    def _below_caps(self, key: str) -> bool:
        if self.held[key] >= self.cap:
            return False
        group = self._group.get(key)
        if group is None or len(self._groups) < 2:
            return True
        return self.group_held[group] < self.cap

    def may_take(self, key: str) -> bool:
        """The key may take a worker now (below its caps and nobody of its own queued first)."""
        return self._below_caps(key) and not self._waiting(key)

    def _waiting(self, key: str) -> bool:
        q = self._queues.get(key)
        if q is None:
            return False
        while q and q[0].done():
            q.popleft()
        if not q:
            del self._queues[key]
            self._order.pop(key, None)
            return False
        return True

    def queued(self, key: str) -> int:
        q = self._queues.get(key)
        return 0 if q is None else sum(1 for f in q if not f.done())

    def full(self, key: str, limit: int) -> bool:
        """``queued(key) >= limit``, counted only when it may be (a queue of after-callbacks
        can be long, and this is asked on every call)."""
        q = self._queues.get(key)
        return q is not None and len(q) >= limit and self.queued(key) >= limit

    def total_queued(self) -> int:
        return sum(self.queued(k) for k in list(self._queues))

    def push(self, key: str, fut: Any) -> None:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = collections.deque()
            self._tickets += 1
            self._order[key] = self._tickets
        q.append(fut)

    def hold(self, key: str) -> None:
        self.held[key] += 1
        group = self._group.get(key)
        if group is not None:
            self.group_held[group] += 1

    def unhold(self, key: str) -> None:
        if key not in self.held:
            return
        n = self.held[key] - 1
        if n > 0:
            self.held[key] = n
        else:
            del self.held[key]
        group = self._group.get(key)
        if group is not None and group in self.group_held:
            g = self.group_held[group] - 1
            if g > 0:
                self.group_held[group] = g
            else:
                del self.group_held[group]

    def _rank(self, key: str) -> tuple[int, int, int]:
        group = self._group.get(key)
        return (self.group_held[group] if group is not None else 0, self.held[key], self._order[key])

    def next_waiter(self, skip: Callable[[str], bool] | None = None) -> tuple[str, Any] | None:
        """Pop the waiter that should get the next free worker, or None. Keys for which
        ``skip`` is true are passed over (their waiters are dealt with elsewhere)."""
        best: str | None = None
        for key in list(self._queues):
            if not self._waiting(key) or (skip is not None and skip(key)) or not self._below_caps(key):
                continue
            if best is None or self._rank(key) < self._rank(best):
                best = key
        if best is None:
            return None
        q = self._queues[best]
        fut = q.popleft()
        if q:
            # The key goes to the back of the line among keys with equal holdings.
            self._tickets += 1
            self._order[best] = self._tickets
        else:
            del self._queues[best]
            del self._order[best]
        return best, fut

    def take(self, key: str) -> Any | None:
        """Pop the oldest waiter of ``key`` whatever its holdings, or None."""
        if not self._waiting(key):
            return None
        q = self._queues[key]
        fut = q.popleft()
        if not q:
            del self._queues[key]
            del self._order[key]
        return fut

    def has_eligible(self) -> bool:
        return any(self._waiting(k) and self._below_caps(k) for k in list(self._queues))

    def drain(self) -> list[Any]:
        out = [f for q in self._queues.values() for f in q]
        self._queues.clear()
        self._order.clear()
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        keys = set(self.held) | set(self._queues)
        return {k: {"held": self.held[k], "queued": self.queued(k), "namespace": self._group.get(k)}
                for k in sorted(keys)}


@dataclass(frozen=True)
class BoxSettings:
    strikes: int = 3  # budget hits among the last `window` calls that box a command
    window: int = 10
    base_s: float = 1.0  # first box; doubles on every box until the history is forgotten
    max_s: float = 60.0
    clean_reset: int = 20  # clean calls in a row that forget a command's history
    # A boxed command's refusals are answered after this long (0: at once), see PenaltyBox.
    refusal_delay_ms: float = 20.0


@dataclass
class _Entry:
    recent: collections.deque[bool]
    level: int = 0  # boxes so far (back-off exponent)
    until: float = 0.0
    probation: bool = False
    probing: int = 0
    clean_run: int = 0
    last_reason: str = ""


@dataclass
class PenaltyBox:
    settings: BoxSettings = field(default_factory=BoxSettings)
    clock: Callable[[], float] = time.monotonic
    # Called as on_box(key, seconds, level, reason) when a key is boxed (metrics, logs).
    on_box: Callable[[str, float, int, str], None] | None = None
    _entries: dict[str, _Entry] = field(default_factory=dict)
    boxed_total: int = 0
    refused_total: int = 0
    # Per key, kept when a key's history is forgotten (counters for /metrics).
    boxed: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)

    def admit(self, key: str) -> str | None:
        """None: the call may run. Otherwise the reason it is refused (the key is boxed).
        The empty key (callers that name no command: tests, tools) is never boxed."""
        e = self._entries.get(key)
        if e is None:
            return None
        now = self.clock()
        if now < e.until:
            return self._refuse(key, f"penalty box: {key} keeps exceeding its budgets "
                                   f"({e.last_reason}); refused for {e.until - now:.1f} s more")
        if e.probation:
            if e.probing:
                return self._refuse(key, f"penalty box: {key} is on probation after exceeding its budgets "
                                       "(one call at a time until one ends within its budgets)")
            e.probing += 1
        return None

    def closed(self, key: str) -> str | None:
        """For a call admitted earlier and still queued: the refusal if the key has been
        boxed since (it must not run now), else None."""
        if not self.is_closed(key):
            return None
        e = self._entries[key]
        return self._refuse(key, f"penalty box: {key} keeps exceeding its budgets "
                                 f"({e.last_reason}); refused for {max(0.0, e.until - self.clock()):.1f} s more")

    def is_closed(self, key: str) -> bool:
        """The key is boxed now (nothing counted)."""
        e = self._entries.get(key)
        return e is not None and self.clock() < e.until

    def _refuse(self, key: str, reason: str) -> str:
        self.refused[key] += 1
        self.refused_total += 1
        return reason

    def cancel(self, key: str) -> None:
        """An admitted call did not run (no worker before its deadline): not a verdict
        on the script, but the probation slot is free again."""
        e = self._entries.get(key)
        if e is not None and e.probing:
            e.probing -= 1

    def record(self, key: str, struck: bool, reason: str = "", admitted: bool = True) -> None:
        """The outcome of a call that ran: ``struck`` when it ended in a budget error.
        ``admitted``: it went through ``admit`` (and may be the probation call)."""
        e = self._entries.get(key)
        if e is None:
            if not struck or not key:
                return
            e = self._entries[key] = _Entry(collections.deque(maxlen=self.settings.window))
        probe = admitted and e.probation and e.probing > 0
        if probe:
            e.probing -= 1
        e.recent.append(struck)
        if struck:
            e.clean_run = 0
            e.last_reason = reason[:160] or e.last_reason
            if probe or sum(e.recent) >= self.settings.strikes:
                self._box(key, e)
            return
        e.clean_run += 1
        if probe:
            e.probation = False
        if e.clean_run >= self.settings.clean_reset and not e.probation and self.clock() >= e.until:
            del self._entries[key]

    def _box(self, key: str, e: _Entry) -> None:
        s = self.settings
        seconds = min(s.max_s, s.base_s * 2 ** e.level)
        e.level += 1
        e.until = self.clock() + seconds
        e.probation = True
        e.probing = 0
        e.recent.clear()
        self.boxed[key] += 1
        self.boxed_total += 1
        log.warning("penalty box: %s boxed for %.0f s (box #%d; calls keep exceeding their budgets: %s); "
                    "its callbacks get the failure policy meanwhile", key, seconds, e.level, e.last_reason)
        if self.on_box is not None:
            self.on_box(key, seconds, e.level, e.last_reason)

    def boxed_now(self) -> dict[str, float]:
        """Keys boxed now -> seconds left."""
        now = self.clock()
        return {k: round(e.until - now, 3) for k, e in self._entries.items() if e.until > now}

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "boxed": {k: {"seconds_left": round(e.until - now, 1), "box_number": e.level, "reason": e.last_reason}
                      for k, e in sorted(self._entries.items()) if e.until > now},
            "probation": sorted(k for k, e in self._entries.items() if e.probation and e.until <= now),
            "boxed_total": self.boxed_total,
            "refused_total": self.refused_total,
        }

    def suspect(self, key: str) -> bool:
        """The key hit a budget recently (its calls run at a lower CPU priority)."""
        e = self._entries.get(key)
        return e is not None and (e.probation or any(e.recent))
