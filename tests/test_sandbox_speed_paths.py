"""The speed paths of issue #3 behave exactly like the general paths they bypass.

- ``kv.<op>(...)`` on the global ``kv`` is compiled to a direct call of the facade's bound
  method (no ``_getattr_``); the facade's key / key-value methods check inline, and with a
  constant key of a valid shape only the key's length is checked at run time.
- a KV op counts as a tick; a port that waited checks the deadline itself (``KVDeadline``).
- a comprehension clause whose first ``if`` (or element) always calls a ticking guard or
  a KV op gets no separate ``_tick_()``; ``for x in a[k]`` is one fused guard call.
- ``_verdict`` copies common results inline instead of through ``plain_copy``.
- ``RunState.begin`` copies the budget values only when the budgets object changes.
"""

from __future__ import annotations

import ast
import math
from typing import Any

import orjson
import pytest

from sandbox.api import ERROR, Budgets
from sandbox.policy import KV_DIRECT, ScriptPolicy, _bound_names
from sandbox.worker import kvapi
from sandbox.worker.budget import BudgetExceeded, RunState
from sandbox.worker.convert import InvalidResult, plain_copy
from sandbox.worker.helpers import Verdict
from sandbox.worker.runtime import _verdict, compile_script, execute
from tests.attacks.fakeport import DictKV


def _transformed(source: str) -> str:
    tree = ast.parse(source)
    policy = ScriptPolicy(_bound_names(tree))
    tree = policy.visit(tree)
    assert policy.issues == []
    return ast.unparse(tree)


def _run(source: str, payload: Any = None, data: dict[str, Any] | None = None, **budgets: int) -> Any:
    return execute(compile_script(source), payload or {}, DictKV(data), Budgets().merged(budgets))


# -- direct kv calls -----------------------------------------------------------------------


def test_kv_calls_on_the_global_are_direct() -> None:
    code = _transformed("def handle(req):\n    return kv.get('a') or kv.sadd('s', *req['m'])\n")
    assert "_kv_get_k_('a')" in code and "_apply_(_kv_sadd_, 's'" in code
    assert "_getattr_(kv" not in code


@pytest.mark.parametrize(
    ("call", "direct"),
    [
        ("kv.get('a')", "_kv_get_k_('a')"),
        ("kv.sismember('blocklist:users', req)", "_kv_sismember_k_('blocklist:users', req)"),
        ("kv.get('" + "k" * 600 + "')", "_kv_get_k_('"),  # the length is a budget: checked at run time
        # constants that are not a valid key shape, and keys that are not constants: every check
        ("kv.get('')", "_kv_get_('')"),
        ("kv.get('a b')", "_kv_get_k_('a b')"),
        ("kv.get('a\\nb')", "_kv_get_('a\\nb')"),
        ("kv.get('clé')", "_kv_get_('clé')"),
        ("kv.get(5)", "_kv_get_(5)"),
        ("kv.get(req)", "_kv_get_(req)"),
        ("kv.set('a', 'b')", "_kv_set_('a', 'b')"),  # not a key / key-value op
    ],
)
def test_constant_keys_of_simple_ops_skip_the_shape_check(call: str, direct: str) -> None:
    assert direct in _transformed(f"def handle(req):\n    return {call}\n")


@pytest.mark.parametrize(
    "binding",
    ["kv = 1", "def f(kv):\n    pass", "for kv in []:\n    pass", "x = [kv for kv in []]",
     "global kv", "f = lambda kv: 0", "try:\n    pass\nexcept Exception as kv:\n    pass"],
)
def test_a_script_that_binds_kv_keeps_the_guarded_lookup(binding: str) -> None:
    code = _transformed(f"{binding}\ndef handle(req):\n    return kv.get('a')\n")
    if binding == "global kv":  # names the global without binding it
        assert "_kv_get_k_('a')" in code
    else:
        assert "_getattr_(kv, 'get')('a')" in code


def test_non_op_attributes_and_uncalled_ops_keep_the_guard() -> None:
    code = _transformed("def handle(req):\n    f = kv.get\n    return kv.nope('a')\n")
    assert "_getattr_(kv, 'get')" in code and "_getattr_(kv, 'nope')('a')" in code


def test_every_op_has_a_direct_name() -> None:
    assert set(KV_DIRECT) == set(kvapi.KV.PUBLIC)
    assert all(name.startswith("_") for name in KV_DIRECT.values())  # unreachable by scripts


ATTEMPT = "def attempt(f):\n    try:\n        return ['ok', f()]\n    except Exception as e:\n        return ['error', str(e)]\n"


@pytest.mark.parametrize(
    "expr",
    [
        "KV.sismember('s', 'm')",
        "KV.sismember(key='s', member='m')",
        "KV.hget(key='h', field='f')",
        "KV.hget('h', 'f')",
        "KV.get('a')",
        "KV.get(key='a')",
        "KV.exists('a')",
        "KV.scard('s')",
        "sorted(KV.smembers('s'))",
        "KV.hgetall('h')",
        "KV.sismember('s', 5)",
        "KV.sismember('s', 2.5)",
        "KV.sismember('s', True)",
        "KV.sismember('s', 'é')",
        "KV.get('clé')",
        # refused arguments: same KVError text either way
        "KV.get('')",
        "KV.get(5)",
        "KV.get('a\\nb')",
        "KV.get('k' * 600)",
        "KV.get('" + "k" * 600 + "')",  # a constant key: only its length is checked at run time
        "KV.sismember('" + "s" * 600 + "', 'm')",
        "KV.get('a b')",
        "KV.sismember('s', None)",
        "KV.sismember('s', 'x' * 70000)",
        "KV.sismember('s', '\\ud800')",
        "KV.hget('a', 'f')",  # wrong type in the store
        # wrong arity / keywords: the same TypeError as a plain method
        "KV.get()",
        "KV.get('a', 'b')",
        "KV.sismember('s')",
        "KV.sismember(key='s', value='m')",
        "KV.get(key='a', value='b')",
        "KV.get(k='a')",
    ],
)
def test_direct_and_guarded_kv_calls_agree(expr: str) -> None:
    # `kv.<op>` is compiled to the direct call; `k.<op>` with `k = kv` goes through _getattr_.
    data = {"s": {"m", "n"}, "a": "1", "h": {"f": "v"}, "clé": "x"}
    direct_src = ATTEMPT + "def handle(req):\n    return {'r': attempt(lambda: " + expr.replace("KV", "kv") + ")}\n"
    guarded_src = ATTEMPT + "def handle(req):\n    k = kv\n    return {'r': attempt(lambda: " + expr.replace("KV", "k") + ")}\n"
    assert "_kv_" in _transformed(direct_src) and "_kv_" not in _transformed(guarded_src)
    direct, guarded = _run(direct_src, data=data), _run(guarded_src, data=data)
    assert direct.verdict == guarded.verdict == "modify", (direct, guarded)
    assert direct.fields == guarded.fields
    assert direct.kv_ops == guarded.kv_ops


def test_direct_kv_calls_respect_the_kv_ops_budget_and_stop() -> None:
    source = "def handle(req):\n    for i in range(100):\n        kv.get('a')\n"
    assert "_tick_" not in _transformed(source)  # the op checks the clock itself
    result = _run(source, kv_ops=10)
    assert result.verdict == ERROR and result.error.kind == "budget"
    assert "kv_ops (limit 10)" in result.error.message


# A script that runs out of steps, then runs its `finally:` (the next lines, indented 8).
AFTER_A_STOP = "def handle(req):\n    try:\n        while True:\n            pass\n    finally:\n"


def test_direct_kv_call_after_a_stop_is_refused() -> None:
    # The stop is sticky: a `finally` that calls kv after the budget ran out dies too.
    source = AFTER_A_STOP + "        kv.set('after', 'stop')\n"
    kv = DictKV()
    result = execute(compile_script(source), {}, kv, Budgets(steps=1000))
    assert result.verdict == ERROR and "steps (limit 1000)" in result.error.message
    assert kv.calls == []


# -- ticks ---------------------------------------------------------------------------------


def test_comprehension_tick_is_left_out_only_when_a_guard_ticks_per_item() -> None:
    code = _transformed(
        "def handle(req):\n"
        "    a = [u for u in req['x'] if kv.sismember('s', u)]\n"
        "    b = [u for u in req['x'] if u not in a]\n"
        "    c = [kv.get(u) for u in req['x']]\n"
        "    d = [u for u in req['x'] if kv.smismember('s', [])]\n"
        "    e = [u for v in req['x'] for u in v if u]\n"
        "    f = [u.x for v in req['x'] for u in v]\n"
        "    g = [u for u in req['x'] if u or kv.get(u)]\n"
        "    h = [(lambda: kv.get(u)) for u in req['x']]\n"
    )
    lines = {line.split("=")[0].strip(): line for line in code.splitlines() if " = _sized_" in line}
    assert lines["a"].count("_tick_") == 0
    assert lines["b"].count("_tick_") == 0 and "_getiter_item_(req, 'x', True)" in lines["b"]  # call-free
    assert lines["c"].count("_tick_") == 0
    assert lines["d"].count("_tick_") == 1  # smismember([]) answers without a clock check
    assert lines["e"].count("_tick_") == 2
    assert lines["f"].count("_tick_") == 1  # the inner clause's element ticks; the outer does not
    assert lines["g"].count("_tick_") == 1  # kv.get only runs when `u` is falsy
    assert lines["h"].count("_tick_") == 1  # a lambda body does not run per item
    assert code.count("_getiter_item_(req, 'x')") == 7


@pytest.mark.parametrize(
    "body",
    [
        # a list grown while a comprehension walks it, with no ticking guard per item
        "l = [1]\n    a = l.append\n    r = [a(x) for x in l if not kv.smismember('s', [])]",
        "l = [1]\n    a = l.append\n    r = [a(x) for x in l]",
        "l = [1]\n    a = l.append\n    r = [a(x) for y in [l] for x in y]",
        "l = [1]\n    a = l.append\n    r = sum(1 for x in l if a(x) is None)",
        "l = [1]\n    a = l.append\n    for x in l:\n        a(x)",
    ],
)
def test_endless_comprehensions_are_still_stopped(body: str) -> None:
    result = _run("def handle(req):\n    " + body + "\n", wall_ms=200, max_items=10**9)
    assert result.verdict == ERROR and result.error.kind == "budget", result
    assert "wall_ms (limit 200)" in result.error.message


def test_comprehension_with_kv_per_item_is_bounded_by_kv_ops() -> None:
    source = "def handle(req):\n    l = [1]\n    a = l.append\n    r = [a(x) for x in l if kv.exists('k')]\n"
    result = _run(source, data={"k": "1"}, kv_ops=50)
    assert result.verdict == ERROR and "kv_ops (limit 50)" in result.error.message


@pytest.mark.parametrize(
    "payload,fragment,kind",
    [
        ({"x": 5}, "'int' object is not iterable", "exception"),
        ({"y": []}, "KeyError: 'x'", "exception"),
    ],
)
def test_fused_iteration_guard_errors(payload: dict[str, Any], fragment: str, kind: str) -> None:
    result = _run("def handle(req):\n    return {'r': [v for v in req['x']]}\n", payload=payload)
    assert result.verdict == ERROR and result.error.kind == kind
    assert fragment in result.error.message


def test_fused_iteration_guard_refuses_what_getitem_refuses() -> None:
    result = _run("def handle(req):\n    for v in kv['x']:\n        pass\n")
    assert result.verdict == ERROR and result.error.kind == "policy"
    assert "<kv> cannot be indexed" in result.error.message


def test_fused_iteration_guard_charges_steps() -> None:
    source = "def handle(req):\n    n = 0\n    for v in req['x']:\n        n += 1\n    return {'n': n}\n"
    assert "_getiter_item_" in _transformed(source)
    assert _run(source, payload={"x": list(range(50))}, steps=1000).fields == {"n": 50}
    result = _run(source, payload={"x": list(range(5000))}, steps=1000)
    assert result.verdict == ERROR and "steps (limit 1000)" in result.error.message


# -- _verdict --------------------------------------------------------------------------------


def _reference_verdict(fields: dict[str, Any], budgets: Budgets) -> tuple[Any, int]:
    st = RunState(budgets)
    try:
        out: Any = plain_copy(fields, st, "result", 0)
    except (InvalidResult, BudgetExceeded) as e:
        out = (type(e), str(e))
    return out, st.steps_left


NAN = math.nan
FIELDS = [
    {"a": ["x", "y"]},
    {"a": "x", "b": True, "c": None, "d": ["p", None, False]},
    {"a": 1, "b": 2.5},
    {"a": ["x"] * 40},
    {"a": ["x"] * 15 + [1]},
    {"a": ["x"] * 40 + [1]},
    {"a": [["x"]]},
    {"a": ("x", "y")},
    {"a": {"b": "c"}},
    {1: "x"},
    {"a": "x", 1: "y"},
    {"a": NAN},
    {"a": [NAN]},
    {"a": 2**70},
    {"a": [object()]},
    {"a": ["x"] * 3000},
]


@pytest.mark.parametrize("fields", FIELDS, ids=range(len(FIELDS)))
@pytest.mark.parametrize("steps", [5_000_000, 20])
@pytest.mark.parametrize("wrap", [False, True])
def test_verdict_fast_copy_matches_plain_copy(fields: dict[str, Any], steps: int, wrap: bool) -> None:
    budgets = Budgets(steps=steps)
    want, want_steps = _reference_verdict(fields, budgets)
    st = RunState(budgets)
    try:
        kind, got, data = _verdict(Verdict("allow", fields) if wrap else fields, st)
        assert kind == "modify"
        assert type(got) is dict and got is not fields
        assert data == orjson.dumps(got)  # the JSON the worker sends instead of encoding again
        for key, value in got.items():
            if type(value) is list:
                assert value is not fields[key]  # a copy, never the script's own list
    except (InvalidResult, BudgetExceeded) as e:
        got = (type(e), str(e))
    assert got == want or (got != got and want != want)
    assert repr(got) == repr(want)
    assert st.steps_left == want_steps


# -- RunState.begin ----------------------------------------------------------------------


def test_begin_follows_changed_budgets() -> None:
    a, b = Budgets(), Budgets(max_str=10, max_items=20, max_int_bits=30, recursion=5, wall_ms=7)
    st = RunState(a)
    for budgets in (b, b, a, b, Budgets(**{**b.to_wire()})):
        st.end()
        st.begin(budgets, None)
        fresh = RunState(budgets)
        for slot in ("max_str", "max_items", "max_bits", "int_limit", "neg_int_limit", "max_depth", "wall_ns",
                     "steps_left", "ticks_left", "depth", "dead", "logs", "kv_ops", "log_bytes", "port"):
            assert getattr(st, slot) == getattr(fresh, slot), slot
        assert st.budgets == budgets
        assert st.deadline - st.started == fresh.deadline - fresh.started == budgets.wall_ms * 1_000_000


# -- execute(payload=bytes) ------------------------------------------------------------------


ECHO = (
    "def handle(req):\n"
    "    log(req)\n"
    "    req['seen'] = True\n"
    "    return {'req': req, 'n': len(req.get('list', []))}\n"
)


@pytest.mark.parametrize(
    "payload",
    [
        {"a": "x", "list": ["p", "q"], "n": 5, "f": 2.5, "z": None, "b": False, "d": {"e": [1, {"g": "h"}]}},
        {"big": 2**63 - 1, "neg": -(2**63), "u": 2**64 - 1, "text": "héllo ☃"},
        {},
    ],
)
def test_bytes_payload_is_the_same_as_data(payload: dict[str, Any]) -> None:
    import orjson

    script = compile_script(ECHO)
    from_data = execute(script, payload, DictKV(), Budgets())
    from_bytes = execute(script, orjson.dumps(payload), DictKV(), Budgets())
    assert from_data.verdict == from_bytes.verdict == "modify", (from_data, from_bytes)
    assert from_data.fields == from_bytes.fields
    assert from_data.logs == from_bytes.logs
    assert "seen" not in payload  # the data form is copied; the bytes form is parsed afresh


def test_invalid_json_bytes_run_no_script_code() -> None:
    kv = DictKV()
    result = execute(compile_script("def handle(req):\n    kv.set('ran', 'yes')\n"), b"{nope", kv, Budgets())
    assert result.verdict == ERROR and result.error.kind == "exception"
    assert "JSONDecodeError" in result.error.message
    assert kv.calls == [] and result.logs == []


# -- the KV op's clock, the result object ------------------------------------------------------


def test_a_port_that_waited_past_the_deadline_stops_the_script_with_the_wall_budget() -> None:
    from sandbox.api import KVDeadline

    class LatePort:
        def call(self, op: str, args: list[Any]) -> Any:
            raise KVDeadline("late")

    source = "def handle(req):\n    try:\n        kv.get('a')\n    except Exception:\n        return allow(caught=True)\n"
    result = execute(compile_script(source), {}, LatePort(), Budgets(wall_ms=50))
    assert result.verdict == ERROR and result.error.kind == "budget", result
    assert result.error.message.startswith("budget exceeded: wall_ms (limit 50)")


def test_kv_ops_count_as_ticks_and_the_clock_is_still_read() -> None:
    # 64 ops between two reads of the clock: a long loop of them still meets the wall budget.
    source = "def handle(req):\n    while True:\n        kv.exists('a')\n"
    result = _run(source, wall_ms=50, kv_ops=10**9, steps=10**9)
    assert result.verdict == ERROR and "wall_ms (limit 50)" in result.error.message


@pytest.mark.parametrize("source", ["def handle(req):\n    return allow(a=['x'])\n", "def handle(req):\n    return None\n"])
def test_execute_fills_every_field_of_its_result(source: str) -> None:
    import dataclasses

    from sandbox.api import RunResult

    result = execute(compile_script(source), b"{}", DictKV(), Budgets())
    values = {f.name: getattr(result, f.name) for f in dataclasses.fields(RunResult)}  # none missing
    assert result == RunResult(**values)
    assert values["fields_json"] is None or orjson.loads(values["fields_json"]) == result.fields


# -- call-free loops: the iteration guard takes the loop's ticks ---------------------------------


def test_only_loops_that_call_nothing_per_item_leave_their_ticks_to_the_iteration_guard() -> None:
    code = _transformed(
        "def handle(req):\n"
        "    a = [w for w in req['w'] if w in req]\n"
        "    b = {w: 1 for w in req['w'] if not w}\n"
        "    c = [w for w in req['w'] if len(w)]\n"  # a call
        "    d = sum(1 for w in req['w'] if w in req)\n"  # a generator: other code runs between items
        "    for w in req['w']:\n"
        "        if w == 'x':\n"
        "            found = True\n"
        "            break\n"
        "    for w in req['w']:\n"
        "        found = w + 'x'\n"  # _add_ is a call
    )
    lines = [line.strip() for line in code.splitlines()]
    assert lines[3] == "a = _sized_([w for w in _getiter_item_(req, 'w', True) if w in req])"
    assert lines[4] == "b = _sized_({w: 1 for w in _getiter_item_(req, 'w', True) if not w})"
    assert "_tick_()" in lines[5] and "True" not in lines[5]
    assert "_tick_()" in lines[6] and "True" not in lines[6]
    assert lines[7] == "for w in _getiter_item_(req, 'w', True):"
    assert "_tick_()" not in lines[8]
    assert code.count("_getiter_item_(req, 'w')") == 3


CALL_FREE = [
    "[x for x in v if x != 3]",
    "{x: x for x in v}",
    "{x for x in v if x}",
    "[x for x in v]",
]


@pytest.mark.parametrize("expr", CALL_FREE)
@pytest.mark.parametrize(
    "value", [[], [1, 2, 3], list(range(63)), list(range(64)), list(range(65)), list(range(1000)), "ab" * 100,
              {str(i): i for i in range(200)}],
    ids=["empty", "3", "63", "64", "65", "1000", "str", "dict"],
)
def test_call_free_loops_see_every_item_in_order(expr: str, value: Any) -> None:
    # sets and dicts come back as their sorted keys (a result must be JSON)
    shown = f"sorted({expr})" if expr.startswith("{") else expr
    source = f"def handle(req):\n    v = req['v']\n    out = {expr}\n    n = 0\n    for x in v:\n        n = x\n    return {{'out': {shown.replace(expr, 'out')}, 'last': n}}\n"
    assert "True)" in _transformed(source)
    result = _run(source, payload={"v": value})
    assert result.error is None, result
    want = eval(shown, {}, {"v": value})  # the same comprehension, natively
    assert result.fields["out"] == want
    assert result.fields["last"] == (list(value)[-1] if len(value) else 0)


def test_a_call_free_loop_is_still_charged_and_stopped_by_the_clock() -> None:
    # Quadratic C-level work with no call per item: the clock is read between chunks.
    source = "def handle(req):\n    v = list(range(20000))\n    return {'n': len([x for x in v if x in v])}\n"
    assert "True)" in _transformed(source)
    result = _run(source, wall_ms=100)
    assert result.verdict == ERROR and "wall_ms (limit 100)" in result.error.message, result
    result = _run("def handle(req):\n    return {'n': [x for x in req['v'] if x]}\n", payload={"v": list(range(5000))},
                  steps=1000)
    assert result.verdict == ERROR and "steps (limit 1000)" in result.error.message


def test_a_call_free_loop_after_a_stop_dies_at_once() -> None:
    source = AFTER_A_STOP + "        for x in req['v']:\n            y = x\n"
    assert "True)" in _transformed(source)
    result = _run(source, payload={"v": [1, 2, 3]}, steps=1000)
    assert result.verdict == ERROR and "steps (limit 1000)" in result.error.message


# -- issue #17: findall of a one-class run in Python's engine; KV lists checked in one pass --

RUN_TEXTS = [
    "hello world, 42 times_over",
    "Ünïcödé wörds çà et là: naïve café ½ ² ٣ 四 ﾊﾝｶｸ",
    "Σίσυφος ΟΔΥΣΣΕΥΣ İstanbul straße ǅemal",
    "mixed_snake-case CamelCase123 ..., ;; \t\n tabs",
    "",
    "a" * 3000 + " " + "b1_" * 500,
]


@pytest.mark.parametrize("pattern", [r"\w+", r"\d+", r"[a-z0-9_]+", r"[A-Za-z]+"])
def test_findall_fast_path_matches_the_re2_path(pattern: str) -> None:
    from sandbox.worker.helpers import _class_run

    assert _class_run(pattern, 0) is not None and _class_run(pattern, 2) is None  # flags: re2
    # "(?:X)+" matches what "X+" does but is not a one-class run: re2 answers it.
    source = ("def handle(req):\n"
              "    return {'fast': [re.findall(P, t) for t in req['texts']],\n"
              "            'slow': [re.findall('(?:' + P[:-1] + ')+', t) for t in req['texts']]}\n")
    r = _run(source.replace("P", repr(pattern)), {"texts": RUN_TEXTS})
    assert r.error is None, r.error
    assert r.fields["fast"] == r.fields["slow"]
    assert any(r.fields["fast"])


@pytest.mark.parametrize("pattern", [r"\w*", r"(\w+)", r"\w+\d", r"[^a]+", r"\s+", r"\W+", r"[\w']+", r"(a+)+"])
def test_other_patterns_keep_re2(pattern: str) -> None:
    from sandbox.worker.helpers import _class_run

    assert _class_run(pattern, 0) is None


def test_findall_fast_path_keeps_the_checks() -> None:
    lone = _run("def handle(req):\n    return {'w': re.findall(r'\\w+', 'a ' + chr(0xD800))}\n")
    assert lone.verdict == ERROR and "surrogate" in lone.error.message
    many = _run("def handle(req):\n    return {'n': len(re.findall(r'\\w+', 'a ' * 5000))}\n", max_items=1000)
    assert many.verdict == ERROR and "budget exceeded" in many.error.message


def test_kv_value_lists_checked_in_one_pass_refuse_as_before() -> None:
    from sandbox import kvops
    from sandbox.api import KVRefused

    op = kvops.OPS["smismember"]
    assert kvops._check_values(["a", "b"], op, 100, 10) == ["a", "b"]
    for bad, needle in ((["a", 1.5, "b"], None), (["ok", "x" * 11], "longer"), (["é" * 6], "longer"),
                        (["a", None], "must be")):
        if needle is None:
            assert kvops._check_values(bad, op, 100, 10) == ["a", "1.5", "b"]
            continue
        with pytest.raises(KVRefused, match=needle):
            kvops._check_values(bad, op, 100, 10)


def test_bool_answers_converted_as_before() -> None:
    check, convert = kvapi._ANSWERS[kvops_bools()]
    assert check([True, False]) and check([1, 0, True]) and not check([2]) and not check("x")
    assert convert([True, False]) == [True, False]
    assert convert([1, 0, True]) == [True, False, True]
    assert all(type(x) is bool for x in convert([1, 0]))


def kvops_bools() -> str:
    from sandbox import kvops

    return kvops.BOOLS
