"""The one KV op table (``sandbox.kvops.OPS``) drives every side: the worker's ``kv`` methods,
the host's check of a ``kv`` frame, the store's dispatch and the caches. And the worker's
``kv`` methods refuse exactly what the host refuses, with the same messages."""

from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path
from typing import Any

import pytest
from attacks.cases import H
from attacks.fakeport import DictKV

from sandbox import kvops
from sandbox.api import Budgets, KVRefused
from sandbox.policy import KV_CONST_KEY, KV_DIRECT
from sandbox.worker import kvapi, runtime
from sandbox.worker.budget import BackendUnavailable, RunState
from sandbox.worker.kvapi import KVError
from sandbox.worker.readcache import MISS, ReadCache
from sandbox.worker.runtime import compile_script, execute
from server.store.kv import KVEngine

ROOT = Path(__file__).resolve().parent.parent


# -- the table drives all three sides, and nothing else exists ------------------------------


def test_every_op_has_a_worker_method_and_nothing_else_is_public() -> None:
    assert kvapi.KV.PUBLIC == set(kvops.OPS)
    for name, op in kvops.OPS.items():
        method = getattr(kvapi.KV, name)
        assert str(inspect.signature(method)) == f"(self, {op.params})"  # the documented names
        assert method.__qualname__ == f"KV.{name}"
    public = {n for n in vars(kvapi.KV) if not n.startswith("_")} - {"PUBLIC", "script_repr"}
    assert public == set(kvops.OPS)
    assert set(kvapi.CONST_KEY_METHODS) == set(KV_CONST_KEY) == {n for n, op in kvops.OPS.items() if op.key_shaped}
    assert set(KV_DIRECT) == set(kvops.OPS)


def test_every_op_has_a_store_method_and_nothing_else_exists() -> None:
    methods = {n.removeprefix("_op_") for n in vars(KVEngine) if n.startswith("_op_")}
    assert methods == set(kvops.OPS)


def test_every_argument_and_answer_kind_is_handled() -> None:
    kinds = {kind for op in kvops.OPS.values() for kind in op.args}
    assert kinds == set(kvops.CHECKS)  # the host's validation of each argument
    assert {op.answer for op in kvops.OPS.values()} == set(kvapi._ANSWERS)  # the worker's answer check
    for op in kvops.OPS.values():
        params = [p.strip() for p in op.params.split(",")]
        if op.convention is None:
            assert len(params) == len(op.args), op.name  # one wire argument per parameter
        assert params[0] == "key" and op.args[0] == kvops.KEY  # the namespace is applied to it


def test_the_host_checks_every_op() -> None:
    for name, op in kvops.OPS.items():
        with pytest.raises(KVRefused, match="wrong number of arguments"):
            kvops.validate(name, [], 512, 512)
        with pytest.raises(KVRefused, match="key must be a str"):
            kvops.validate(name, [5] + [None] * (len(op.args) - 1), 512, 512)
    with pytest.raises(KVRefused, match="unknown KV operation"):
        kvops.validate("flushall", ["k"], 512, 512)


def test_cached_ops_are_reads_and_share_entries_with_their_siblings() -> None:
    cached = {n: op.cache for n, op in kvops.OPS.items() if op.cache}
    assert cached == {"get": "g", "exists": "e", "sismember": "m", "smismember": "m", "hget": "h"}
    assert not any(kvops.OPS[n].writes for n in cached)


def test_no_parallel_op_tables_are_left() -> None:
    # Per-op facts live in kvops.OPS only: no module spells out a set or dict of op names.
    names = set(kvops.OPS)
    files = [*ROOT.glob("sandbox/**/*.py"), ROOT / "server/store/kv.py", ROOT / "server/offline/kv_overlay.py"]
    for path in files:
        if path.name == "kvops.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Set, ast.Dict, ast.Tuple, ast.List)):
                elts = node.keys if isinstance(node, ast.Dict) else node.elts
                consts = {e.value for e in elts if isinstance(e, ast.Constant) and type(e.value) is str}
                assert len(consts & names) < 2, f"{path.relative_to(ROOT)}:{node.lineno} lists KV ops"


def test_worker_read_cache_keeps_only_the_tables_cached_ops() -> None:
    cache = ReadCache()
    for name, op in kvops.OPS.items():
        args = ["k", ["m"]] if op.convention == kvops.MEMBER_LIST else ["k", "m"][: len(op.args)]
        answer = [True] if op.answer == kvops.BOOLS else "v"
        cache.store(name, args, answer, "tag:" + name)
        kept = cache.lookup(name, args)
        if op.cache:
            assert kept == answer, name
        else:
            assert kept is MISS and len(cache) == 0, name
        cache.clear()


# -- the worker checks what the host checks ----------------------------------------------------

ASCII = [chr(i) for i in range(128)]
SAMPLES: list[Any] = [
    "", "k", "a:b", "x" * 512, "x" * 513, "é", "\ud800", "漢字", "a b", "a\tb", "a\x7f", "\x00",
    1, -5, 2**70, 1.5, True, False, None, b"k", ["k"], ("k",), {"k": 1},
    *("k" + c for c in ASCII), *(c * 3 for c in ASCII),
]  # fmt: skip
BUDGETS = Budgets(kv_key_bytes=512, kv_value_bytes=512)


def _host(op: str, args: list[Any]) -> tuple[str, Any]:
    try:
        return "ok", kvops.validate(op, args, BUDGETS.kv_key_bytes, BUDGETS.kv_value_bytes)[1]
    except KVRefused as e:
        return "refused", str(e)


class Recording(DictKV):
    def call(self, op: str, args: list[Any]) -> Any:
        self.calls.append((op, args))
        kind = kvops.OPS[op].answer
        if kind == kvops.BOOLS:
            return [False] * len(args[1])
        answers = {kvops.OPT_STR: None, kvops.STR_SET: [], kvops.STRS: [], kvops.STR_MAP: {}, kvops.NUM: 0}
        return answers.get(kind, False)


def _worker(op: str, args: list[Any]) -> tuple[str, Any]:
    """Call the kv facade inside a begun call: what it sent, or its refusal's text."""
    port = Recording()
    runtime.CALL.begin(BUDGETS, port)
    try:
        getattr(runtime._GLOBALS["kv"], op)(*args)
    except KVError as e:
        assert port.calls == []
        return "refused", str(e)
    finally:
        runtime.CALL.end()
    assert [c[0] for c in port.calls] == [op]
    return "ok", port.calls[0][1]


@pytest.mark.parametrize("op", sorted(n for n, o in kvops.OPS.items() if o.args == (kvops.KEY, kvops.VALUE)))
def test_key_value_ops_refuse_what_the_host_refuses(op: str) -> None:
    pairs = [*itertools.product(SAMPLES[:24], SAMPLES[:24]), *((s, "v") for s in SAMPLES), *(("k", s) for s in SAMPLES)]
    for key, value in pairs:
        assert _worker(op, [key, value]) == _host(op, [key, value]), (key, value)


@pytest.mark.parametrize("op", sorted(n for n, o in kvops.OPS.items() if o.args == (kvops.KEY,)))
def test_key_ops_refuse_what_the_host_refuses(op: str) -> None:
    for key in SAMPLES:
        assert _worker(op, [key]) == _host(op, [key]), key


@pytest.mark.parametrize("op", sorted(n for n, o in kvops.OPS.items() if not o.key_shaped and not o.convention))
def test_other_ops_refuse_what_the_host_refuses(op: str) -> None:
    spec = kvops.OPS[op]
    for key, value in itertools.product(SAMPLES[:24], SAMPLES[:24]):
        wire: list[Any] = [key] + [value] * (len(spec.args) - 1)
        script_args = [key] + [value] * (len(spec.args) - 1)
        if "*" in spec.params:
            script_args[1:] = [value]  # one member, packed into a list by the method
            wire[1] = [value]
        assert _worker(op, script_args) == _host(op, wire), (key, value)


def test_limits_are_the_calls_own() -> None:
    ok = execute(compile_script(H("return {'v': kv.sismember('k' * 10, 'v' * 10)}")), {}, DictKV(), Budgets())
    assert ok.fields == {"v": False}
    short_key = execute(compile_script(H("try:\n    kv.get('k' * 10)\nexcept KVError as e:\n    return {'e': str(e)}")),
                        {}, DictKV(), Budgets(kv_key_bytes=5))
    assert short_key.fields == {"e": "key is longer than 5 bytes"}
    short_value = execute(
        compile_script(H("try:\n    kv.sismember('k', 'v' * 10)\nexcept KVError as e:\n    return {'e': str(e)}")),
        {}, DictKV(), Budgets(kv_value_bytes=5))
    assert short_value.fields == {"e": "kv.sismember: value is longer than 5 bytes"}


# -- answers -----------------------------------------------------------------------------------


class _Port:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def call(self, op: str, args: list[Any]) -> Any:
        return self.answer


@pytest.mark.parametrize("answer", [True, False, 0, 1])
@pytest.mark.parametrize("op", sorted(n for n, o in kvops.OPS.items() if o.answer == kvops.BOOL))
def test_bool_answers(op: str, answer: Any) -> None:
    st = RunState(Budgets())
    st.begin(Budgets(), _Port(answer))
    args = {"sismember": ("k", "m"), "expire": ("k", 5)}.get(op, ("k",))
    got = getattr(kvapi.KV(st), op)(*args)
    assert type(got) is bool and got == bool(answer)
    assert st.kv_ops == 1


@pytest.mark.parametrize("op,args", [("get", ("k",)), ("hget", ("k", "f")), ("scard", ("k",)), ("smembers", ("k",))])
@pytest.mark.parametrize("answer", [True, False])
def test_bool_answer_to_a_non_bool_op_is_malformed(op: str, args: tuple[Any, ...], answer: bool) -> None:
    st = RunState(Budgets())
    st.begin(Budgets(), _Port(answer))
    with pytest.raises(BackendUnavailable, match=rf"KV backend returned malformed data \(kv.{op}\)"):
        getattr(kvapi.KV(st), op)(*args)


def test_methods_keep_working_under_python_O() -> None:
    # The checks are plain code, not asserts: `python -O` keeps refusing what it must.
    import subprocess
    import sys

    code = ("from sandbox.worker import kvapi\nfrom sandbox.api import Budgets\n"
            "from sandbox.worker.budget import RunState\n"
            "st = RunState(Budgets())\nst.begin(Budgets(), None)\n"
            "try:\n    kvapi.KV(st).get('')\nexcept kvapi.KVError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "key must not be empty"
