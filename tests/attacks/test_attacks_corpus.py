"""Every attack in ``cases.py`` meets its specific defence, and nothing else happens."""

from __future__ import annotations

import orjson
import pytest
from cases import ALL, Attack
from fakeport import DictKV

from sandbox.api import ERROR, Budgets
from sandbox.policy import check_source
from sandbox.worker.runtime import PolicyRefused, compile_script, execute

# Host details no error message may carry.
LEAKS = ("0x7f", "/root", "/work", "site-packages", ".py\"", "<locals>", "Traceback", "File \"", "secret")

assert len({a.id for a in ALL}) == len(ALL), "attack ids must be unique"


@pytest.mark.parametrize("attack", [a for a in ALL if a.refused], ids=lambda a: a.id)
def test_refused_at_upload(attack: Attack) -> None:
    line, fragment = attack.refused  # type: ignore[misc]
    issues = check_source(attack.source)
    assert any(i.line == line and fragment in i.message for i in issues), issues
    with pytest.raises(PolicyRefused) as info:
        compile_script(attack.source)
    assert info.value.issues == issues


@pytest.mark.parametrize("attack", [a for a in ALL if a.kind], ids=lambda a: a.id)
def test_stopped_at_run_time(attack: Attack) -> None:
    assert check_source(attack.source) == [], "run-time attacks must compile"
    kv = DictKV(attack.kv_data, down=attack.kv_down)
    result = execute(compile_script(attack.source), {"x": 1}, kv, Budgets().merged(attack.budgets))
    assert result.verdict == ERROR, result
    assert result.error is not None
    assert result.error.kind == attack.kind, result.error
    assert attack.fragment in result.error.message, result.error
    assert len(result.error.message) <= 512
    orjson.dumps(result.to_wire())  # whatever happened, the worker can ship the result
    for leak in LEAKS:
        assert leak not in result.error.message, result.error
    if attack.kind != "invalid_result" and attack.id != "handle-replaced":
        assert "(line " in result.error.message, "run-time errors name the script line"


def test_corpus_size() -> None:
    assert len(ALL) >= 100
