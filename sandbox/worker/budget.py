"""Per-call accounting: steps, wall clock, recursion depth, sizes, logs, KV ops.

``sandbox.worker.runtime`` keeps one ``RunState`` per process and resets every field of it at
the start of each ``execute`` call (``begin``), so nothing a script does is visible to the
next call; between calls it is parked in an already-stopped idle state (``end``). The
guard functions (``sandbox.worker.guards``) and the helper facades charge against it.

Stopping a script: every limit raises a ``Stop`` subclass. ``Stop`` derives from
``BaseException`` so ``except Exception`` in a script cannot catch it (bare ``except:``
and the name ``BaseException`` are refused at upload). It is also *sticky*: the first stop
is remembered in ``RunState.dead`` and every later guard call raises it again, so a
``finally:`` block that loops, calls helpers or touches KV dies as well.

Invariant the hot guards rely on: while ``dead`` is set (a stop, or the idle state between
calls), ``ticks_left`` is far below zero (``STOPPED_TICKS``) and stays there, since only
``check_clock`` (which raises first when stopped) and ``begin`` refill it. A guard that
counts a tick therefore needs one test, ``ticks_left <= 0``, to notice a stop as well as a
due clock check; its slow path (``check_clock``/``_slow_step``) looks at ``dead`` first.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from typing import Any, NoReturn

from sandbox.api import BUDGET, POLICY, UNAVAILABLE, Budgets

# How many cheap ticks pass between two reads of the monotonic clock. A tick costs a
# counter decrement; reading the clock costs ~50 ns more. 64 keeps the overshoot small
# even when each loop iteration does a lot of C-level work.
CLOCK_EVERY = 64
STOPPED_TICKS = -(1 << 62)  # ticks_left while stopped: no amount of counting reaches 0



_INT_LIMITS: dict[int, tuple[int, int]] = {}
_NO_LOGS: Any = ()
_monotonic_ns = time.monotonic_ns


def _int_limits(bits: int) -> tuple[int, int]:
    # Immutable ints, cached: building a 100k-bit int costs more than a whole small call.
    limits = _INT_LIMITS.get(bits)
    if limits is None:
        if len(_INT_LIMITS) >= 8:
            _INT_LIMITS.clear()
        limits = _INT_LIMITS[bits] = (1 << bits, -(1 << bits))
    return limits


def utf8_clean(text: str) -> str:
    """``text`` with lone surrogates replaced: logs and messages must survive JSON encoding."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


class DeadlineAlarm:
    """Makes the first guard after the wall-clock deadline notice it, however much C-level
    work the ticks before it stood for.

    Guards read the clock only every ``CLOCK_EVERY`` ticks, and one tick can stand for a
    long C call (a set operation, a sort, a regex over 1 MB): 64 of them would run far past
    the deadline. So a one-shot ``ITIMER_REAL`` is pending for the deadline of the main
    thread's running call; its SIGALRM handler only zeroes ``ticks_left`` (it raises
    nothing a script could catch), so the next guard reads the clock and stops the script:
    past the deadline by at most the one C call running when it fired.

    Cheap enough for every call: ``RunState.begin`` calls ``setitimer`` only when no timer
    is pending or the pending one would fire after this call's deadline. A timer left from
    an earlier call that fires during a later one re-arms itself for that call's deadline;
    one that fires between calls does nothing more. So a busy worker makes about one
    ``setitimer`` per ``wall_ms``, an idle one gets at most one signal after its last call.
    (A process-CPU timer, ``ITIMER_PROF``, would need no re-arming but makes the kernel
    serve ``CLOCK_PROCESS_CPUTIME_ID`` at tick granularity while it runs.)

    Started by the first ``RunState.begin`` of a call in a process (timers are not inherited
    across fork), for the main thread's state only, and only while nobody else handles SIGALRM (pytest-timeout does, during a test); elsewhere the tick-based checks
    alone apply.
    """

    __slots__ = ("fires_at", "started", "watched")

    def __init__(self) -> None:
        self.watched: RunState | None = None
        self.fires_at = 0  # monotonic ns when the pending timer fires; 0: none pending
        self.started = False  # in this process (reset in a forked child)

    def start(self, st: RunState) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are handled in the main thread only: not this state's
        self.started = True  # tried once per process
        if self._install():
            self.watched = st  # RunState.begin arms the timer for each call

    def arm(self, deadline: int) -> None:
        """A timer for ``deadline`` (monotonic ns), replacing any pending one."""
        now = _monotonic_ns()
        delay = max(deadline - now, 100_000)
        try:
            if signal.getsignal(signal.SIGALRM) != self._fired:
                raise ValueError("SIGALRM has another handler now")
            signal.setitimer(signal.ITIMER_REAL, delay / 1e9)
        except (OSError, ValueError):  # e.g. a seccomp filter without setitimer
            self.watched = None
            self.fires_at = 0
            return
        self.fires_at = now + delay

    def stop(self) -> None:
        if self.watched is not None and self.fires_at:
            self.watched = None
            self.fires_at = 0
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
            except (OSError, ValueError):
                pass

    def _install(self) -> bool:
        try:
            current = signal.getsignal(signal.SIGALRM)
            if current == self._fired:
                return True
            if current not in (signal.SIG_DFL, None):
                return False  # someone else's alarm: leave it alone
            signal.signal(signal.SIGALRM, self._fired)
        except (OSError, ValueError):
            return False
        # Stopped at exit: interpreter shutdown restores SIGALRM's default action, which
        # would kill the process if a pending timer fired after that.
        atexit.unregister(self.stop)  # (installed again after someone else's handler)
        atexit.register(self.stop)
        return True

    def _fired(self, signum: int, frame: Any) -> None:
        self.fires_at = 0
        st = self.watched
        if st is None or st.dead is not None:
            return  # between calls: nothing to watch until the next call arms it
        if _monotonic_ns() >= st.deadline:
            st.ticks_left = 0  # the next guard reads the clock
        else:
            self.arm(st.deadline)  # an earlier call's timer: now this call's

    def _forked(self) -> None:
        self.started = False  # the child has no timer (a fork does not inherit it)
        self.watched = None
        self.fires_at = 0


ALARM = DeadlineAlarm()
os.register_at_fork(after_in_child=ALARM._forked)


class Stop(BaseException):
    """Ends the script; not catchable by ``except Exception``. ``kind`` is an api error kind."""

    kind = POLICY

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExceeded(Stop):
    kind = BUDGET


class PolicyViolation(Stop):
    """The sandbox blocked an operation at run time (forbidden attribute, type, keyword...)."""

    kind = POLICY


class BackendUnavailable(Stop):
    """The KV backend could not be reached: the script must not go on as if it had an answer."""

    kind = UNAVAILABLE


class RunState:
    """Mutable per-call counters. Kept in ``__slots__`` for fast attribute access in guards.

    ``sandbox.worker.runtime`` keeps ONE instance per process (``CALL``): the guards, builtins and
    helpers are built once and bound to it, and ``begin`` resets every field at the start
    of each call (new budgets, new log list, no stop, no caches). Between calls ``end``
    parks it in an *idle* state that is already stopped, so anything that outlived a call
    fails if it is ever used outside one. A separate ``RunState(budgets)`` still works for
    code that wants a private one.
    """

    __slots__ = (
        "budgets",
        "dead",
        "deadline",
        "depth",
        "fmt_cache",
        "int_limit",
        "kv_key_bytes",
        "kv_ops",
        "kv_ops_max",
        "kv_value_bytes",
        "log_bytes",
        "logs",
        "max_bits",
        "max_depth",
        "max_items",
        "max_str",
        "neg_int_limit",
        "port",
        "re_cache",
        "started",
        "steps_left",
        "ticks_left",
        "wall_ns",
    )

    def __init__(self, budgets: Budgets) -> None:
        self.budgets: Budgets | None = None
        # Per-call caches (format strings parsed by ``%``, compiled patterns): made lazily,
        # dropped by ``end``.
        self.fmt_cache: dict[str, Any] | None = None
        self.re_cache: dict[Any, Any] | None = None
        self.begin(budgets, None)

    def begin(self, budgets: Budgets, port: Any) -> None:
        """Start a call: every field is set here, nothing is carried over from before.

        The fields copied from the budgets (``use_budgets``) are a function of the budgets
        alone (``Budgets`` is frozen): they are set again only when the budgets object
        differs from the previous call's.
        """
        if budgets is not self.budgets:
            self.use_budgets(budgets)
        self.port = port
        self.started = started = _monotonic_ns()  # integer nanoseconds: no float rounding
        self.deadline = deadline = started + self.wall_ns
        self.steps_left = budgets.steps
        self.ticks_left = CLOCK_EVERY
        self.depth = 0
        self.dead: Stop | None = None
        self.logs: list[str] = []
        self.log_bytes = 0
        self.kv_ops = 0
        # After ``dead`` is cleared: a timer firing from here on sees a call in progress
        # and re-arms itself for this deadline if it is early.
        alarm = ALARM
        if alarm.watched is self:
            if not 0 < alarm.fires_at <= deadline:
                alarm.arm(deadline)  # no timer pending that fires by this call's deadline
        elif not alarm.started and port is not None:
            alarm.start(self)  # a process's first call (a fork starts without a timer)
            if alarm.watched is self:
                alarm.arm(deadline)
        # fmt_cache and re_cache are None: set so by __init__ and by end()

    def use_budgets(self, budgets: Budgets) -> None:
        """Hot budget values, copied so the guards need one attribute load each."""
        self.budgets = budgets
        self.wall_ns = budgets.wall_ms * 1_000_000
        self.max_depth = budgets.recursion
        self.max_str = budgets.max_str
        self.max_items = budgets.max_items
        self.kv_key_bytes = budgets.kv_key_bytes
        self.kv_value_bytes = budgets.kv_value_bytes
        self.kv_ops_max = budgets.kv_ops
        self.max_bits = bits = budgets.max_int_bits
        self.int_limit, self.neg_int_limit = _INT_LIMITS.get(bits) or _int_limits(bits)

    def end(self) -> None:
        """Finish a call: drop every reference it made and refuse any further use."""
        self.dead = IDLE  # every guard checks ``dead`` (directly or on its slow path)
        self.ticks_left = STOPPED_TICKS
        self.port = None
        self.logs = _NO_LOGS  # never appended to: add_log refuses first (dead is IDLE)
        self.fmt_cache = None
        self.re_cache = None

    # -- stopping -----------------------------------------------------------------------

    def stop(self, exc: Stop) -> NoReturn:
        """Remember the first stop and raise it (or the earlier one if already dead)."""
        self.ticks_left = STOPPED_TICKS  # every ticking guard takes its slow path from now on
        if self.dead is None:
            self.dead = exc
            raise exc
        raise type(self.dead)(self.dead.message)

    def reraise(self) -> NoReturn:
        dead = self.dead
        assert dead is not None
        raise type(dead)(dead.message)

    def exceeded(self, name: str, limit: int | float, detail: str = "") -> NoReturn:
        extra = f": {detail}" if detail else ""
        self.stop(BudgetExceeded(f"budget exceeded: {name} (limit {limit}){extra}"))

    def refuse(self, message: str) -> NoReturn:
        self.stop(PolicyViolation(f"blocked by sandbox: {message}"))

    # -- time and steps -----------------------------------------------------------------

    def check_clock(self) -> None:
        if self.dead is not None:
            self.reraise()
        self.ticks_left = CLOCK_EVERY
        if _monotonic_ns() > self.deadline:
            self.exceeded("wall_ms", self.budgets.wall_ms)

    def tick(self) -> bool:
        """A loop iteration or comprehension item: checks the clock now and then, costs no step.

        Returns True so it can sit in a comprehension's ``if`` clause.
        """
        left = self.ticks_left - 1
        self.ticks_left = left
        if left <= 0:  # a clock check is due, or the script is stopped (STOPPED_TICKS)
            self.check_clock()
        return True

    def step(self) -> None:
        """One unit of script work (while-loop iteration, function call)."""
        self.steps_left -= 1
        self.ticks_left -= 1
        if self.ticks_left <= 0 or self.steps_left < 0:  # or stopped (STOPPED_TICKS)
            self._slow_step()

    def charge(self, n: int) -> None:
        """Charge ``n`` steps at once (items about to be iterated by a loop or in C)."""
        self.steps_left -= n
        # Big batches stand for real C-level work: look at the clock right away.
        self.ticks_left -= 1 if n < 1024 else CLOCK_EVERY
        if self.ticks_left <= 0 or self.steps_left < 0:  # or stopped (STOPPED_TICKS)
            self._slow_step()

    def _slow_step(self) -> None:
        if self.dead is not None:
            self.reraise()
        if self.steps_left < 0:
            self.exceeded("steps", self.budgets.steps)
        self.check_clock()

    def enter(self) -> None:
        """Script function entry: one step plus one level of recursion depth."""
        depth = self.depth + 1
        if depth > self.max_depth:
            self.exceeded("recursion", self.budgets.recursion, "script functions nested too deeply")
        self.depth = depth
        # self.step(), inlined (one call less per script function call)
        self.steps_left -= 1
        self.ticks_left -= 1
        if self.ticks_left <= 0 or self.steps_left < 0:  # or stopped (STOPPED_TICKS)
            self._slow_step()

    def leave(self) -> None:
        self.depth -= 1

    def alive(self) -> None:
        """Raise again if the script has already been stopped (for non-loop guards)."""
        if self.dead is not None:
            self.reraise()

    # -- sizes --------------------------------------------------------------------------

    def check_str(self, n: int) -> None:
        if n > self.budgets.max_str:
            self.exceeded("max_str", self.budgets.max_str, f"a string of {n} characters")

    def check_bytes(self, n: int) -> None:
        if n > self.budgets.max_bytes:
            self.exceeded("max_bytes", self.budgets.max_bytes, f"a bytes object of {n} bytes")

    def check_items(self, n: int) -> None:
        if n > self.budgets.max_items:
            self.exceeded("max_items", self.budgets.max_items, f"a container of {n} items")

    def check_bits(self, n: int | float) -> None:
        if n > self.budgets.max_int_bits:
            self.exceeded("max_int_bits", self.budgets.max_int_bits, "an integer that large")

    # -- logs ---------------------------------------------------------------------------

    def add_log(self, line: str) -> None:
        self.alive()
        line = utf8_clean(line)
        b = self.budgets
        if len(self.logs) >= b.log_lines:
            self.exceeded("log_lines", b.log_lines)
        room = b.log_bytes - self.log_bytes
        # A character is at least one byte: refuse before encoding a huge line.
        size = len(line) if len(line) > room or line.isascii() else len(line.encode("utf-8", "replace"))
        if size > room:
            self.exceeded("log_bytes", b.log_bytes)
        self.log_bytes += size
        self.logs.append(line)

    def elapsed_ms(self) -> float:
        return (_monotonic_ns() - self.started) // 1000 / 1000  # whole microseconds


# The stop an idle state (between two calls) answers with: nothing may run outside a call.
# ``dead is IDLE`` also tells ``sandbox.worker.runtime`` that no call is in progress.
IDLE = PolicyViolation("sandbox error: no call in progress")
