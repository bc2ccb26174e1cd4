"""Budget bypasses closed at their cause, and the Python people write that is now allowed.

The hostile scripts for each bypass are in ``tests/attacks/cases.py`` (every one must meet
its specific stop); this file checks the mechanisms themselves: the %-format size bound
against what CPython builds, the deadline alarm, a caught MemoryError under a real memory
limit, and honest scripts using classes, generators and ``str.format``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from sandbox.api import ALLOW, BUDGET, ERROR, MODIFY, Budgets
from sandbox.worker.budget import ALARM, CLOCK_EVERY, BudgetExceeded, RunState
from sandbox.worker.convert import ascii_length, repr_length
from sandbox.worker.formatting import parse_percent, percent_args, percent_bound
from sandbox.worker.runtime import compile_script, execute

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "attacks"))
from fakeport import DictKV


def run(source: str, payload: Any = None, **budgets: int) -> Any:
    return execute(compile_script(source), payload or {}, DictKV(), Budgets().merged(budgets))


# -- %-formatting: the bound is never below what CPython builds ---------------------------------

_ALPHABET = ["%", "%", "(", ")", "s", "r", "a", "d", "x", "f", "c", "*", ".", "-", "0", "1", "5", "9", "l", "h",
             "a", "b", "é", "\U0001f600", "\x00"]  # fmt: skip
_VALUES: list[Any] = [0, -7, 3, 12, 1 << 70, 2.5, -1e300, True, None, "", "ab", "é\x00\U0001f600" * 3, [1, "x"]]


def _bound_or_stop(fmt: str, args: Any) -> tuple[int, str | None]:
    st = RunState(Budgets(max_str=10_000_000))
    literal, specs = parse_percent(fmt)
    safe, mapping = percent_args(st, specs, args)
    try:
        built = fmt % safe
    except (TypeError, ValueError, KeyError, OverflowError):
        built = None
    return percent_bound(st, literal, specs, safe, mapping), built


def test_percent_bound_covers_what_cpython_builds() -> None:
    rng = random.Random(1234)  # fixed: the same formats every run
    checked = 0
    for _ in range(20_000):
        fmt = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 12)))
        kind = rng.random()
        if kind < 0.4:
            args: Any = tuple(rng.choice(_VALUES) for _ in range(rng.randint(0, 4)))
        elif kind < 0.7:
            args = {k: rng.choice(_VALUES) for k in ("a", "", "(a)", "b)", "a)s")}
        else:
            args = rng.choice(_VALUES)
        try:
            bound, built = _bound_or_stop(fmt, args)
        except (TypeError, ValueError, KeyError):
            continue  # refused before CPython runs (as CPython would, or a mixed format)
        except BudgetExceeded:
            continue  # a `*` width of 1 << 70: CPython cannot build it either (OverflowError)
        if built is not None:
            assert bound >= len(built), (fmt, args, bound, len(built))
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    "fmt",
    ["%((x)s)5s", "%(()s)9s", "%(a)s%(a)s", "%-*.*s|", "%ls%hd%Ld", "%%%5d%%", "%.s", "%.0f", "%#x", "%+05d"],
)
def test_percent_grammar_matches_cpython(fmt: str) -> None:
    args: Any = {"(x)s": "v", "()s": 1, "a": "é"} if "(" in fmt else (7, 3, "abcdef", 1, 2)[: fmt.count("%") + 2]
    try:
        expected = fmt % args
    except (TypeError, ValueError):
        return
    arg = "req['a']" if type(args) is dict else "tuple(req['a'])"  # (JSON has no tuples)
    r = run(f"def handle(req):\n    return {{'s': {fmt!r} % {arg}}}\n", {"a": args})
    assert r.verdict == MODIFY, r
    assert r.fields["s"] == expected


def test_repr_and_ascii_lengths_are_exact_or_above() -> None:
    for s in ["", "abc", "a'b", "a\"b'c", "\x00\t\n", "é", "\U0001f600" * 70_000, "\ud800x", "'" * 70_000 + '"']:
        assert repr_length(s, 10**9) >= len(repr(s))
        assert ascii_length(s, 10**9, True) >= len(ascii(s))
        assert ascii_length(s, 10**9, False) >= len(s.encode("ascii", "backslashreplace"))


# -- the deadline alarm -------------------------------------------------------------------------


@pytest.fixture
def own_alarm() -> Any:
    """The alarm for this test's process, then as it was. (pytest-timeout's signal method
    owns SIGALRM during a test; ``timeout(0)`` lets the alarm have it.)"""
    saved = (ALARM.watched, ALARM.fires_at, ALARM.started)
    ALARM.watched, ALARM.fires_at, ALARM.started = None, 0, False
    yield ALARM
    ALARM.stop()
    ALARM.watched, ALARM.fires_at, ALARM.started = saved


@pytest.mark.timeout(0)
def test_deadline_alarm_stops_the_next_guard_after_a_long_c_call(own_alarm: Any) -> None:
    st = RunState(Budgets(wall_ms=50))
    try:
        own_alarm.start(st)
        st.begin(Budgets(wall_ms=50), None)  # a call: arms the timer for its deadline
        assert own_alarm.watched is st and own_alarm.fires_at, "the timer could not be started"
        # A long C call, during which no guard runs.
        give_up = time.monotonic() + 10
        while st.ticks_left != 0 and time.monotonic() < give_up:
            sum(range(100_000))
        # Without the alarm, ticks_left would still be CLOCK_EVERY: 64 more long calls.
        assert st.ticks_left == 0
        with pytest.raises(BudgetExceeded, match="wall_ms"):
            st.tick()
    finally:
        st.end()


@pytest.mark.timeout(0)
def test_alarm_from_an_earlier_call_rearms_for_the_next(own_alarm: Any) -> None:
    st = RunState(Budgets(wall_ms=30))
    own_alarm.start(st)
    st.begin(Budgets(wall_ms=30), None)
    assert own_alarm.fires_at
    st.end()  # the call ends; its timer is still pending and fires in between calls
    give_up = time.monotonic() + 10
    while own_alarm.fires_at and time.monotonic() < give_up:
        time.sleep(0.005)
    assert own_alarm.fires_at == 0 and st.ticks_left != 0  # fired, touched nothing
    st.begin(Budgets(wall_ms=30), None)  # a new call: no timer pending, so one is armed
    assert own_alarm.fires_at
    try:
        while st.ticks_left != 0 and time.monotonic() < give_up:
            sum(range(100_000))
        assert st.ticks_left == 0
    finally:
        st.end()


def test_alarm_leaves_a_call_within_its_deadline_alone() -> None:
    st = RunState(Budgets(wall_ms=60_000))
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        sum(range(10_000))
    assert st.ticks_left == CLOCK_EVERY
    st.end()


@pytest.mark.timeout(0)
def test_loop_of_long_c_calls_stops_near_the_deadline(own_alarm: Any) -> None:
    # Each lst.count() is one C call of a few ms that counts one step: 64 of them used to
    # pass between two clock reads.
    src = "def handle(req):\n    lst = [0] * 1000000\n    while True:\n        lst.count(1)\n"
    r = run(src, wall_ms=200)
    assert r.verdict == ERROR and r.error.kind == BUDGET and "wall_ms" in r.error.message
    lst = [0] * 1_000_000
    one = time.perf_counter()
    lst.count(1)
    one = time.perf_counter() - one
    assert r.elapsed_ms < 200 + 1000 * max(one * 8, 0.05), (r.elapsed_ms, one)


# -- MemoryError cannot be caught and ignored -------------------------------------------------


def test_caught_memory_error_stops_the_script() -> None:
    # A real MemoryError needs a real limit: a child process with RLIMIT_AS a little above
    # what it already uses.
    script = textwrap.dedent(
        """
        import resource, sys
        sys.path.insert(0, sys.argv[1])
        from sandbox.api import Budgets
        from sandbox.worker.runtime import compile_script, execute
        sys.path.insert(0, sys.argv[1] + "/tests/attacks")
        from fakeport import DictKV
        src = '''
        def handle(req):
            n = 0
            while n < 5:
                try:
                    x = [0] * 40000000
                except Exception:
                    n += 1
            return {"caught": n}
        '''
        code = compile_script(src.strip() + "\\n")
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        limit = pages * resource.getpagesize() + 150 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        r = execute(code, {}, DictKV(), Budgets(max_items=100_000_000, steps=10**9))
        print(r.verdict, r.error.kind if r.error else "-", r.error.message if r.error else r.fields)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, os.getcwd()], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("error budget budget exceeded: memory"), out.stdout


def test_finally_replacing_a_stop_cannot_be_caught() -> None:
    src = (
        "def handle(req):\n    try:\n        try:\n            while True:\n                pass\n"
        "        finally:\n            x = 1 // 0\n    except Exception:\n        return {'went_on': 1}\n"
    )
    r = run(src, steps=10_000)
    assert r.verdict == ERROR and r.error.kind == BUDGET and "steps" in r.error.message


# -- what honest scripts can now write ------------------------------------------------------------


CLASSES_SRC = '''
class Rule:
    """A keyword rule."""
    action = "deny"

    def __init__(self, word, code):
        self.word = word
        self.code = code

    def matches(self, text):
        return self.word in text

    def __lt__(self, other):
        return self.code < other.code


class Refused(ValueError):
    def __init__(self, rule):
        self.rule = rule


SEEN = []


def handle(req):
    SEEN.append(1)
    rules = sorted([Rule("spam", 5002), Rule("scam", 5001)])
    try:
        for rule in rules:
            if rule.matches(req["text"]):
                raise Refused(rule)
    except Refused as e:
        return deny(e.rule.code, "{} matched".format(e.rule.word), "rule {0}/{n}".format(1, n=len(rules)))
    return {"rules": [r.word for r in rules], "calls": len(SEEN), "kind": Rule.action, "isa": isinstance(rules[0], Rule)}
'''


def test_classes_work_and_do_not_survive_the_call() -> None:
    code = compile_script(CLASSES_SRC)
    r = execute(code, {"text": "a scam here"}, DictKV(), Budgets())
    assert r.verdict == "deny" and r.fields == {"errCode": 5001, "errMsg": "scam matched", "errDlt": "rule 1/2"}
    for _ in range(2):  # a fresh module (and fresh classes, and SEEN) every call
        r = execute(code, {"text": "fine"}, DictKV(), Budgets())
        assert r.verdict == MODIFY and r.fields == {"rules": ["scam", "spam"], "calls": 1, "kind": "deny", "isa": True}


GENERATORS_SRC = '''
def chunks(items, n):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def evens(limit):
    n = 0
    while n < limit:
        yield n
        n += 2


def flat(rows):
    for row in rows:
        yield from row


def handle(req):
    return {
        "chunks": list(chunks(req["ids"], 2)),
        "sum": sum(evens(10)),
        "flat": list(flat([[1], [2, 3]])),
        "gen": [x * 2 for x in evens(6)],
        "any": any(x > 3 for x in evens(100)),
    }
'''


def test_generator_functions() -> None:
    r = run(GENERATORS_SRC, {"ids": ["a", "b", "c"]})
    assert r.verdict == MODIFY, r
    assert r.fields == {"chunks": [["a", "b"], ["c"]], "sum": 20, "flat": [1, 2, 3], "gen": [0, 4, 8], "any": True}


def test_generator_steps_are_charged_inside_the_generator() -> None:
    src = "def gen():\n    while True:\n        yield 1\ndef handle(req):\n    for x in gen():\n        pass\n"
    r = run(src, steps=50_000, wall_ms=20_000)
    assert r.verdict == ERROR and "steps" in r.error.message


def test_suspended_generator_runs_nothing_after_the_call() -> None:
    # A generator left suspended (even in a reference cycle) can run no script code when
    # the host closes or collects it: `finally` is refused in generator functions, and
    # GeneratorExit cannot be caught by `except Exception`.
    src = (
        "KEEP = []\ndef gen():\n    while True:\n        try:\n            yield 1\n        except Exception:\n"
        "            log('ran')\ndef handle(req):\n    g = gen()\n    for x in g:\n        break\n"
        "    KEEP.append(g)\n    KEEP.append(KEEP)\n"
    )
    r = run(src)
    assert r.verdict == ALLOW and r.logs == []
    import gc

    gc.collect()
    r = run("def handle(req):\n    return {'ok': 1}\n")
    assert r.verdict == MODIFY


def test_str_format_and_format_map() -> None:
    src = (
        "def handle(req):\n"
        "    return {\n"
        "        'a': '{} joined'.format(req['name']),\n"
        "        'b': '{0}-{1}-{0}'.format('x', 2),\n"
        "        'c': '{name!r:>8}|{n:05.1f}|{n:,}'.format(name='bo', n=1234.5),\n"
        "        'd': '{who} has {count} items'.format_map({'who': 'al', 'count': 3}),\n"
        "        'e': '{:{w}}|{{}}'.format('k', w=3),\n"
        "        'f': '{}'.format(kv),\n"
        "    }\n"
    )
    r = run(src, {"name": "ann"})
    assert r.verdict == MODIFY, r
    assert r.fields == {
        "a": "ann joined",
        "b": "x-2-x",
        "c": "    'bo'|1234.5|1,234.5",
        "d": "al has 3 items",
        "e": "k  |{}",
        "f": "<kv>",
    }


def test_int_from_text_in_any_base_up_to_the_limit() -> None:
    src = "def handle(req):\n    return {'a': int('ff', 16), 'b': int(' 101 ', 2), 'c': int('0o17', 0), 'd': int('12')}\n"
    r = run(src)
    assert r.fields == {"a": 255, "b": 5, "c": 15, "d": 12}
    assert run("def handle(req):\n    x = int('1' * 99000, 2)\n    return {'b': x.bit_length()}\n").fields == {"b": 99000}
