"""The per-process toolkit (guards, builtins, helpers built once, bound to ``runtime.CALL``)
must not carry anything from one call to the next: budgets, stops, counters, caches, logs,
the KV port, or objects a script made or rebound."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest
from attacks.cases import H
from attacks.fakeport import DictKV, run

from sandbox.api import Budgets
from sandbox.worker import runtime
from sandbox.worker.budget import Stop
from sandbox.worker.runtime import compile_script, execute


def _snapshot() -> tuple[dict[str, int], dict[str, int]]:
    g = runtime._GLOBALS
    return {k: id(v) for k, v in g.items()}, {k: id(v) for k, v in g["__builtins__"].items()}


def _assert_idle() -> None:
    st = runtime.CALL
    assert st.port is None and st.re_cache is None and st.fmt_cache is None and st.logs == ()  # immutable
    assert st.dead is not None


HOSTILE_REBINDS = [
    "json = None\nkv = None\nlog = None\nallow = None\n" + H("return None"),
    "def handle(req):\n    global len, str, deny\n    len = 1\n    str = 2\n    deny = 3\n    return None\n",
    "del json\n" + H("return None"),
    H("try:\n    allow.x = 1\nexcept Exception:\n    pass\nreturn None"),
    H("try:\n    sorted.__defaults__ = (1,)\nexcept Exception:\n    pass\nreturn None"),
    H("re.compile('a')\njson.loads('1')\nx = '%s-%d' % ('a', 1)\nreturn None"),
]


@pytest.mark.parametrize("source", HOSTILE_REBINDS)
def test_rebinding_or_touching_helpers_leaves_the_shared_toolkit_unchanged(source: str) -> None:
    before = _snapshot()
    try:
        script = compile_script(source)
    except runtime.PolicyRefused:
        return  # refused at upload: even better
    execute(script, {}, DictKV(), Budgets())
    assert _snapshot() == before
    _assert_idle()
    check = compile_script(H("return {'j': json.loads('[1]'), 'n': len('ab'), 's': str(3), 'k': repr(kv)}"))
    assert execute(check, {}, DictKV(), Budgets()).fields == {"j": [1], "n": 2, "s": "3", "k": "<kv>"}


def test_facades_have_no_per_instance_state() -> None:
    for name in ("json", "re", "time", "kv"):
        obj = runtime._GLOBALS[name]
        assert not hasattr(obj, "__dict__"), name
        assert type(obj).__slots__ in ((), ("_st",)), name  # only the shared state, nothing per call


def test_each_call_uses_its_own_budgets() -> None:
    loop = compile_script(H("n = 0\nwhile n < 5000:\n    n += 1\nreturn {'n': n}"))
    big = Budgets()
    small = Budgets(steps=1000)
    assert execute(loop, {}, DictKV(), big).fields == {"n": 5000}
    r = execute(loop, {}, DictKV(), small)
    assert r.error is not None and r.error.message.startswith("budget exceeded: steps (limit 1000)")
    assert execute(loop, {}, DictKV(), big).fields == {"n": 5000}


@pytest.mark.parametrize(
    "body, budget, message",
    [
        ("x = 1 << 200", {"max_int_bits": 64}, "budget exceeded: max_int_bits (limit 64)"),
        ("x = 2 ** 100 + 2 ** 100", {"max_int_bits": 64}, "budget exceeded: max_int_bits (limit 64)"),
        ("x = 1\nfor i in range(80):\n    x += x", {"max_int_bits": 64}, "budget exceeded: max_int_bits (limit 64)"),
        ("x = 'a' * 10 + 'b' * 10", {"max_str": 15}, "budget exceeded: max_str (limit 15)"),
        ("x = f'{1:30}'", {"max_str": 15}, "budget exceeded: max_str (limit 15)"),
        ("x = '%30s' % 'a'", {"max_str": 15}, "budget exceeded: max_str (limit 15)"),
        ("x = range(100)", {"max_items": 50}, "budget exceeded: max_items (limit 50)"),
        ("x = [i for i in range(40) for j in range(2)]", {"max_items": 50}, "budget exceeded: max_items (limit 50)"),
        ("x = round(5, -40)", {"max_int_bits": 64}, None),
        ("for i in range(3):\n    kv.get('k')", {"kv_ops": 2}, "budget exceeded: kv_ops (limit 2)"),
        ("for i in range(3):\n    log(i)", {"log_lines": 2}, "budget exceeded: log_lines (limit 2)"),
    ],
)
def test_budgets_are_read_per_call_not_captured(body: str, budget: dict[str, int], message: str | None) -> None:
    script = compile_script(H(body + "\nreturn None"))
    assert execute(script, {}, DictKV(), Budgets()).error is None
    r = execute(script, {}, DictKV(), Budgets().merged(budget))
    if message is None:
        assert r.error is None, r.error
    else:
        assert r.error is not None and r.error.message.startswith(message), r.error
    assert execute(script, {}, DictKV(), Budgets()).error is None


@pytest.mark.parametrize(
    "body",
    [
        "while True:\n    pass",  # steps
        "try:\n    x = kv.port\nfinally:\n    pass",  # policy stop
        "kv.get('k')",  # unavailable (port down)
        "def r(n):\n    return r(n + 1)\nr(0)",  # recursion
    ],
)
def test_a_stop_does_not_poison_the_next_call(body: str) -> None:
    r1 = run(H(body), kv=DictKV(down=True), steps=10_000)
    assert r1.error is not None and r1.error.kind in ("budget", "policy", "unavailable")
    _assert_idle()
    r2 = run(H("x = [i for i in range(100)]\nlog('ok')\nreturn {'n': len(x), 'v': kv.get('k')}"),
             kv=DictKV({"k": "v"}))
    assert r2.error is None, r2.error
    assert r2.fields == {"n": 100, "v": "v"} and r2.logs == ["ok"] and r2.kv_ops == 1


def test_wall_clock_deadline_is_per_call() -> None:
    slow = compile_script(H("while True:\n    pass"))
    r = execute(slow, {}, DictKV(), Budgets(wall_ms=20, steps=10**9))
    assert r.error is not None and r.error.message.startswith("budget exceeded: wall_ms (limit 20)")
    fast = compile_script(H("n = 0\nfor i in range(1000):\n    n += i\nreturn {'n': n}"))
    assert execute(fast, {}, DictKV(), Budgets(wall_ms=20)).fields == {"n": 499500}


def test_logs_and_counters_start_empty_and_returned_logs_are_not_reused() -> None:
    script = compile_script(H("log('a')\nkv.incr('c')\nreturn None"))
    r1 = execute(script, {}, DictKV(), Budgets())
    r2 = execute(script, {}, DictKV(), Budgets())
    assert r1.logs == ["a"] and r2.logs == ["a"] and r1.logs is not r2.logs
    assert r1.kv_ops == r2.kv_ops == 1


def test_pattern_cache_is_per_call() -> None:
    many = compile_script(H("for i in range(200):\n    re.compile('a' + str(i))\nreturn None"))
    assert execute(many, {}, DictKV(), Budgets()).error is None
    again = compile_script(H("re.compile('b')\nreturn None"))
    assert execute(again, {}, DictKV(), Budgets()).error is None
    assert runtime.CALL.re_cache is None


def test_format_cache_is_per_call_and_charged_each_call() -> None:
    # Parsing a %-format costs steps once per call: a later call must pay again.
    script = compile_script(H("x = '" + "%s" * 40 + "' % tuple(range(40))\nreturn None"))
    for _ in range(2):
        r = execute(script, {}, DictKV(), Budgets(steps=60))
        assert r.error is not None and r.error.message.startswith("budget exceeded: steps (limit 60)")
    assert runtime.CALL.fmt_cache is None


class GrabbingKV(DictKV):
    """A port that (like a hostile smuggling channel would) grabs the script's globals."""

    def __init__(self) -> None:
        super().__init__()
        self.globals_ref: dict[str, Any] = {}
        self.grabbed: dict[str, Any] = {}

    def call(self, op: str, args: list[Any]) -> Any:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != "<script>":
            frame = frame.f_back
        assert frame is not None
        self.globals_ref = frame.f_globals
        self.grabbed = dict(frame.f_globals)
        return super().call(op, args)


def test_objects_that_outlive_a_call_are_inert_outside_calls_and_bound_by_later_budgets() -> None:
    port = GrabbingKV()
    src = "P = re.compile('a+')\ndef mine():\n    return json.loads('1')\n" + H("kv.get('k')\nreturn None")
    assert execute(compile_script(src), {}, port, Budgets()).error is None
    assert port.globals_ref == {}  # the globals were cleared when the call ended
    keep = port.grabbed  # but a copy taken during the call kept its objects alive
    assert {"P", "mine", "log", "kv", "json", "re", "__builtins__"} <= set(keep)
    _assert_idle()
    # Outside a call: every shared helper and every per-call object refuses to work.
    attempts = [
        lambda: keep["log"]("x"),
        lambda: keep["kv"].get("k"),
        lambda: keep["json"].loads("1"),
        lambda: keep["P"].search("aaa"),
        lambda: keep["re"].compile("b"),
        lambda: keep["__builtins__"]["_getiter_"]([1, 2]),
        lambda: keep["__builtins__"]["_getattr_"]("abc", "upper"),
        lambda: keep["__builtins__"]["_step_"](),
    ]
    for attempt in attempts:
        with pytest.raises(Stop, match="no call in progress"):
            attempt()
    # The script's own function lost its globals, and its first guard call stops it.
    with pytest.raises(Stop, match="no call in progress"):
        keep["mine"]()
    # Inside a later call, a leftover helper charges that call, under that call's budgets.
    calls: list[Any] = []

    class Replaying(DictKV):
        def call(self, op: str, args: list[Any]) -> Any:
            try:
                keep["log"]("smuggled")
            except Stop as e:
                calls.append(e)
            return super().call(op, args)

    r = execute(compile_script(H("kv.get('k')\nreturn None")), {}, Replaying(), Budgets(log_lines=1))
    assert r.logs == ["smuggled"] and calls == []
    r = execute(compile_script(H("log('own')\nkv.get('k')\nreturn None")), {}, Replaying(), Budgets(log_lines=1))
    assert r.error is not None and r.error.message.startswith("budget exceeded: log_lines (limit 1)")


def test_nested_execute_is_refused_and_the_outer_call_is_unharmed() -> None:
    inner_results: list[Any] = []
    inner = compile_script(H("return {'inner': 1}"))

    class NestingKV(DictKV):
        def call(self, op: str, args: list[Any]) -> Any:
            inner_results.append(execute(inner, {}, DictKV(), Budgets()))
            return super().call(op, args)

    r = execute(compile_script(H("kv.set('k', 'v')\nlog('outer')\nreturn {'v': kv.get('k')}")), {}, NestingKV(),
                Budgets())
    assert r.error is None and r.fields == {"v": "v"} and r.logs == ["outer"] and r.kv_ops == 2
    assert [x.error.message for x in inner_results] == [
        "sandbox error: another call is already running in this thread"
    ] * 2
    _assert_idle()


def test_threads_have_their_own_state_and_toolkit() -> None:
    entered, release = threading.Event(), threading.Event()

    class BlockingKV(DictKV):
        def call(self, op: str, args: list[Any]) -> Any:
            entered.set()
            release.wait(5)
            return super().call(op, args)

    out: list[Any] = []
    seen: list[Any] = []

    def other_thread() -> None:
        src = H("log('t')\nv = kv.get('k')\nn = 0\nwhile n < 500:\n    n += 1\nreturn {'v': v, 'n': n}")
        out.append(execute(compile_script(src), {}, BlockingKV({"k": "1"}), Budgets(wall_ms=10_000)))
        seen.append(runtime._PER_THREAD.toolkit)

    t = threading.Thread(target=other_thread)
    t.start()
    assert entered.wait(5)
    try:
        # While the other thread is inside a call, this thread's calls run on their own state.
        r = execute(compile_script(H("log('main')\nreturn {'x': 1}")), {}, DictKV(), Budgets(steps=100))
        assert r.fields == {"x": 1} and r.logs == ["main"]
        r = execute(compile_script(H("while True:\n    pass")), {}, DictKV(), Budgets(steps=100))
        assert r.error is not None and r.error.message.startswith("budget exceeded: steps (limit 100)")
    finally:
        release.set()
        t.join(5)
    # The other thread's call kept its own budgets (steps=5M), logs and counters.
    assert out[0].error is None and out[0].fields == {"v": "1", "n": 500}
    assert out[0].logs == ["t"] and out[0].kv_ops == 1
    st, template, _modules = seen[0]
    assert st is not runtime.CALL and template is not runtime._GLOBALS
    assert template["log"] is not runtime._GLOBALS["log"]
    _assert_idle()


# -- modules that only define functions and constants run once per thread ---------------------

from sandbox.policy import definitions_only  # noqa: E402


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def handle(req):\n    return None\n", True),
        ('"""doc"""\nLIMIT = 5\nKEY = "k"\ndef f(a, b=1, *c, d="x", **e):\n    pass\ndef handle(req):\n    pass\n', True),
        ("A = B = 1\ndef handle(req):\n    pass\n", True),
        ("CACHE = []\ndef handle(req):\n    pass\n", False),  # a mutable value: made per call
        ("CACHE = {}\ndef handle(req):\n    pass\n", False),
        ("N = -1\ndef handle(req):\n    pass\n", False),  # not a constant node
        ("def f(x=[]):\n    pass\ndef handle(req):\n    pass\n", False),  # a mutable default
        ("def handle(req: dict):\n    pass\n", False),  # annotations run code
        ("def handle(req) -> None:\n    pass\n", False),
        ("def d(f):\n    return f\n@d\ndef handle(req):\n    pass\n", False),  # (refused anyway)
        ("log('x')\ndef handle(req):\n    pass\n", False),
        ("x = kv.get('k')\ndef handle(req):\n    pass\n", False),
        ("a, b = 1, 2\ndef handle(req):\n    pass\n", False),
        ("handle = lambda req: None\n", False),  # (refused anyway)
        ("for i in range(3):\n    pass\ndef handle(req):\n    pass\n", False),
    ],
)
def test_which_modules_run_once(source: str, expected: bool) -> None:
    assert definitions_only(source) is expected
    if "@d" not in source and "lambda" not in source:
        assert compile_script(source).definitions_only is expected


def test_a_module_run_once_still_gives_every_call_fresh_globals() -> None:
    source = (
        "LIMIT = 2\n"
        "def bump():\n"
        "    global LIMIT, extra\n"
        "    LIMIT = LIMIT + 1\n"
        "    extra = 'set by an earlier call'\n"
        "    return LIMIT\n"
        "def handle(req):\n"
        "    seen = [LIMIT, 'extra' in globals_seen()]\n"
        "    bump()\n"
        "    return {'seen': seen, 'after': LIMIT}\n"
        "def globals_seen():\n"
        "    try:\n"
        "        extra\n"
        "        return ['extra']\n"
        "    except Exception:\n"
        "        return []\n"
    )
    script = compile_script(source)
    assert script.definitions_only
    for _ in range(3):  # the first call runs the module, the others reuse its bindings
        r = execute(script, {}, DictKV(), Budgets())
        assert r.error is None and r.fields == {"seen": [2, False], "after": 3}, r
    _assert_idle()


def test_a_module_with_mutable_state_runs_on_every_call() -> None:
    script = compile_script("SEEN = []\ndef handle(req):\n    SEEN.append(1)\n    return {'n': len(SEEN)}\n")
    assert not script.definitions_only
    assert [execute(script, {}, DictKV(), Budgets()).fields for _ in range(3)] == [{"n": 1}] * 3


def test_modules_run_once_are_kept_per_thread_and_bounded() -> None:
    _st, _template, modules = runtime._PER_THREAD.toolkit
    scripts = [compile_script(f"def handle(req):\n    return {{'i': {i}}}\n") for i in range(runtime.MAX_KEPT_MODULES + 5)]
    for i, script in enumerate(scripts):
        assert execute(script, {}, DictKV(), Budgets()).fields == {"i": i}
    assert len(modules) == runtime.MAX_KEPT_MODULES
    assert id(scripts[0]) not in modules and modules[id(scripts[-1])][0] is scripts[-1]
    # The evicted one runs again from scratch, correctly.
    assert execute(scripts[0], {}, DictKV(), Budgets()).fields == {"i": 0}
    # Its globals dict is emptied after every call: nothing a call made is held between calls.
    assert all(not g for _script, g, _bindings, _handle in modules.values())
