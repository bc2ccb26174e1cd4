"""Converting a script's result: ``convert.plain_copy`` charges one step per item of each
container it copies (and stops like any other step), results are copied, not shared, and
``elapsed_ms`` is a small float. (Moved from the former fast-path test files.)"""

from __future__ import annotations

from typing import Any

import pytest
from attacks.cases import H
from attacks.fakeport import run

from sandbox.api import Budgets
from sandbox.worker.budget import CLOCK_EVERY, BudgetExceeded, RunState
from sandbox.worker.convert import plain_copy
from tests.timing import FAR_S


def _items(x: Any) -> int:
    """The steps plain_copy charges for ``x``: the length of every container in it."""
    if type(x) not in (list, tuple, dict):
        return 0
    items = x.values() if type(x) is dict else x
    return len(x) + sum(_items(i) for i in items if type(i) is not str)


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
def test_plain_copy_charges_one_step_per_container_item(value: Any) -> None:
    st = RunState(Budgets())
    steps, ticks = st.steps_left, st.ticks_left
    got = plain_copy(value, st, "result", 0)
    assert got == plain_copy(value, None, "result", 0)
    assert steps - st.steps_left == _items(value)
    assert st.ticks_left <= ticks


def test_plain_copy_step_budget_stop() -> None:
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
    assert st.ticks_left == CLOCK_EVERY  # the slow step read the clock and reset the ticks


@pytest.mark.parametrize(
    "value, fields",
    [
        ({"a": ["x", "y"], "b": ("z", 1, None, True, 1.5)}, {"a": ["x", "y"], "b": ["z", 1, None, True, 1.5]}),
        ({"a": {"b": {"c": ["d"]}}}, {"a": {"b": {"c": ["d"]}}}),
    ],
)
def test_result_copy(value: Any, fields: Any) -> None:
    assert run(H(f"return allow({value!r})")).fields == fields


def test_elapsed_ms_is_a_small_float() -> None:
    r = run(H("return None"))
    assert type(r.elapsed_ms) is float and 0 <= r.elapsed_ms < 1000 * FAR_S  # milliseconds, not seconds
    assert round(r.elapsed_ms, 3) == r.elapsed_ms
