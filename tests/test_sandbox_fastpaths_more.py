"""The inlined charge in ``convert.plain_copy`` and the bool-answer fast path in ``KV._op``
behave exactly like the slow paths they replace (same results, same steps, same errors)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.api import Budgets
from sandbox.worker import kvapi
from sandbox.worker.budget import CLOCK_EVERY, BackendUnavailable, BudgetExceeded, RunState
from sandbox.worker.convert import plain_copy


def _slow_plain_copy(v: Any, st: RunState) -> tuple[Any, int, int]:
    """Reference: charge via RunState.charge, as before the inlining."""
    out = plain_copy(v, None, "result", 0)

    def walk(x: Any) -> None:
        if type(x) in (list, tuple, dict):
            st.charge(len(x))
            for item in (x.values() if type(x) is dict else x):
                if type(item) is not str:
                    walk(item)

    walk(v)
    return out, st.steps_left, st.ticks_left


@pytest.mark.parametrize(
    "value",
    [
        {"a": ["x", "y"]},
        {"a": [1, 2.5, None, True, {"b": ("c",)}]},
        ["s"] * 2000,
        {str(i): i for i in range(1500)},
        [],
        {},
    ],
)
def test_plain_copy_charges_like_charge(value: Any) -> None:
    fast, slow = RunState(Budgets()), RunState(Budgets())
    got = plain_copy(value, fast, "result", 0)
    want, steps, ticks = _slow_plain_copy(value, slow)
    assert got == want
    assert (fast.steps_left, fast.ticks_left) == (steps, ticks)


def test_plain_copy_step_budget_stop_is_the_same() -> None:
    st = RunState(Budgets(steps=10))
    with pytest.raises(BudgetExceeded, match=r"budget exceeded: steps \(limit 10\)"):
        plain_copy({"a": ["x"] * 20}, st, "result", 0)
    assert st.dead is not None
    with pytest.raises(BudgetExceeded):
        plain_copy(["x"], st, "result", 0)  # sticky: a stopped state stays stopped


def test_plain_copy_checks_the_clock_when_ticks_run_out() -> None:
    st = RunState(Budgets())
    st.ticks_left = 1
    plain_copy(["x", "y"], st, "result", 0)
    assert st.ticks_left == CLOCK_EVERY  # _slow_step -> check_clock reset it


class _Port:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def call(self, op: str, args: list[Any]) -> Any:
        return self.answer


@pytest.mark.parametrize("answer", [True, False, 0, 1])
@pytest.mark.parametrize("op", ["sismember", "exists"])
def test_bool_answers(op: str, answer: Any) -> None:
    st = RunState(Budgets())
    st.begin(Budgets(), _Port(answer))
    kv = kvapi.KV(st)
    args = ("k", "m") if op == "sismember" else ("k",)
    got = getattr(kv, op)(*args)
    assert type(got) is bool and got == bool(answer)
    assert st.kv_ops == 1


@pytest.mark.parametrize("op,args", [("get", ("k",)), ("hget", ("k", "f")), ("scard", ("k",)), ("smembers", ("k",))])
@pytest.mark.parametrize("answer", [True, False])
def test_bool_answer_to_a_non_bool_op_is_still_malformed(op: str, args: tuple[Any, ...], answer: bool) -> None:
    st = RunState(Budgets())
    st.begin(Budgets(), _Port(answer))
    kv = kvapi.KV(st)
    with pytest.raises(BackendUnavailable, match=rf"KV backend returned malformed data \(kv.{op}\)"):
        getattr(kv, op)(*args)


def test_bool_ops_are_exactly_the_is_bool_ones() -> None:
    assert {n for n, (check, _) in kvapi._RESULTS.items() if check is kvapi._is_bool} == kvapi._BOOL_OPS
