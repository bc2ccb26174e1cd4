"""The hot-path shortcuts give exactly the answers of the general code they skip."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from attacks.cases import H
from attacks.fakeport import DictKV, run

from sandbox import kvops
from sandbox.api import Budgets
from sandbox.api import KVError as PortKVError
from sandbox.worker import runtime
from sandbox.worker.kvapi import KVError
from sandbox.worker.runtime import compile_script, execute
from tests.timing import FAR_S

ASCII = [chr(i) for i in range(128)]
SAMPLES: list[Any] = [
    "", "k", "a:b", "x" * 512, "x" * 513, "é", "\ud800", "漢字", "a b", "a\tb", "a\x7f", "\x00",
    1, -5, 2**70, 1.5, True, False, None, b"k", ["k"], ("k",), {"k": 1},
    *("k" + c for c in ASCII), *(c * 3 for c in ASCII),
]  # fmt: skip


def _validate(op: str, args: list[Any], budgets: Budgets) -> tuple[str, Any]:
    try:
        return "ok", kvops.validate(op, args, budgets.kv_key_bytes, budgets.kv_value_bytes)[1]
    except PortKVError as e:
        return "KVError", str(e)


class Recording(DictKV):
    def call(self, op: str, args: list[Any]) -> Any:
        self.calls.append((op, args))
        answers = {"get": None, "hget": None, "smembers": [], "hgetall": {}}
        return answers.get(op, 0 if op in ("delete", "ttl", "scard", "llen") else False)


def _through_facade(op: str, args: list[Any], budgets: Budgets) -> tuple[str, Any]:
    """Call the kv facade directly inside a begun call; what it sent or the KVError text."""
    port = Recording()
    runtime.CALL.begin(budgets, port)
    try:
        getattr(runtime._GLOBALS["kv"], op)(*args)
    except KVError as e:
        assert port.calls == []
        return "KVError", str(e)
    finally:
        runtime.CALL.end()
    assert [c[0] for c in port.calls] == [op]
    return "ok", port.calls[0][1]


BUDGETS = Budgets(kv_key_bytes=512, kv_value_bytes=512)


@pytest.mark.parametrize("op", ["sismember", "hget"])
def test_key_value_fast_path_matches_validate(op: str) -> None:
    pairs = [*itertools.product(SAMPLES[:24], SAMPLES[:24]), *((s, "v") for s in SAMPLES), *(("k", s) for s in SAMPLES)]
    for key, value in pairs:
        assert _through_facade(op, [key, value], BUDGETS) == _validate(op, [key, value], BUDGETS), (key, value)


@pytest.mark.parametrize("op", ["get", "delete", "exists", "ttl", "smembers", "scard", "hgetall", "llen"])
def test_key_fast_path_matches_validate(op: str) -> None:
    for key in SAMPLES:
        assert _through_facade(op, [key], BUDGETS) == _validate(op, [key], BUDGETS), key


def test_fast_paths_see_per_call_limits() -> None:
    script = compile_script(H("return {'v': kv.sismember('k' * 10, 'v' * 10)}"))
    ok = execute(script, {}, DictKV(), Budgets())
    assert ok.fields == {"v": False}
    short_key = execute(compile_script(H("try:\n    kv.get('k' * 10)\nexcept KVError as e:\n    return {'e': str(e)}")),
                        {}, DictKV(), Budgets(kv_key_bytes=5))
    assert short_key.fields == {"e": "key is longer than 5 bytes"}
    short_value = execute(
        compile_script(H("try:\n    kv.sismember('k', 'v' * 10)\nexcept KVError as e:\n    return {'e': str(e)}")),
        {}, DictKV(), Budgets(kv_value_bytes=5))
    assert short_value.fields == {"e": "kv.sismember: value is longer than 5 bytes"}


@pytest.mark.parametrize(
    "value, fields",
    [
        ({"a": ["x", "y"], "b": ("z", 1, None, True, 1.5)}, {"a": ["x", "y"], "b": ["z", 1, None, True, 1.5]}),
        ({"a": {"b": {"c": ["d"]}}}, {"a": {"b": {"c": ["d"]}}}),
    ],
)
def test_result_copy(value: Any, fields: Any) -> None:
    src = H(f"return allow({value!r})")
    r = run(src)
    assert r.fields == fields


def test_elapsed_ms_is_a_small_float() -> None:
    r = run(H("return None"))
    assert type(r.elapsed_ms) is float and 0 <= r.elapsed_ms < 1000 * FAR_S  # milliseconds, not seconds
    assert round(r.elapsed_ms, 3) == r.elapsed_ms
