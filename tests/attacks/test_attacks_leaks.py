"""Attacks whose defence is *what does not happen*: no host object, address, path or secret
reaches the script or the error; no side effect survives a stop; no state survives a call."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cases import H
from fakeport import DictKV, run

from sandbox.api import ERROR, Budgets
from sandbox.worker.runtime import compile_script, execute

ADDRESS = re.compile(r"0x[0-9a-f]{6,}")
HOST_WORDS = ("/root", "/work", "site-packages", "<locals>", "sandbox.", "RunState", "Traceback", "secret")


def assert_clean(text: str) -> None:
    assert not ADDRESS.search(text), text
    for word in HOST_WORDS:
        assert word not in text, (word, text)


def plain(value: Any) -> None:
    """Everything handed back to the host is exact JSON data."""
    t = type(value)
    assert t in (str, int, float, bool, type(None), list, dict), t
    if t is list:
        for item in value:
            plain(item)
    elif t is dict:
        for k, item in value.items():
            assert type(k) is str
            plain(item)


EVERYTHING = "[kv, json, re, time, log, allow, deny, now, sha256, md5, sha1, hmac_sha256, print, len, str, list, " \
             "dict, set, tuple, int, float, bool, repr, sorted, range, isinstance, KVError, ValueError, kv.get, " \
             "json.loads, re.compile('a'), re.search('a', 'a'), 'x'.upper, [].append, {}.get, allow(), deny(5001), " \
             "(lambda: 0), (x for x in [1]), range(3), {}.keys(), Exception('e')]"


@pytest.mark.parametrize(
    "expression",
    [
        "repr(x)",
        "str(x)",
        "f'{x}'",
        "f'{x!r}'",
        "f'{x!a:>10}'",
        "'%s' % (x,)",
        "'%r' % (x,)",
        "'%(a)s' % {'a': x}",
        "repr(kv.get) + str(print) + f'{kv.get=}'",
    ],
    ids=["repr", "str", "fstring", "fstring-r", "fstring-a", "percent-s", "percent-r", "percent-map", "debug"],
)
def test_text_of_any_object_reveals_no_address_or_host_path(expression: str) -> None:
    result = run(H(f"x = {EVERYTHING}\nreturn {{'t': {expression}}}"))
    assert result.verdict == "modify", result.error
    assert_clean(result.fields["t"])
    assert "<kv>" in result.fields["t"] or "method" in result.fields["t"]


def test_print_and_log_of_objects_reveal_nothing() -> None:
    result = run(H(f"print({EVERYTHING})\nlog(kv, re.compile('x'), sep=' | ')\nreturn None"))
    assert result.verdict == "allow", result.error
    assert len(result.logs) == 2
    for line in result.logs:
        assert_clean(line)


def test_host_raised_exception_args_are_scrubbed_strings() -> None:
    # list.index() puts repr(obj) in its message: "<function log at 0x7f..> is not in list".
    result = run(H("try:\n    [].index(log)\nexcept ValueError as e:\n    return {'a': e.args, 's': str(e)}"))
    assert result.verdict == "modify", result.error
    assert result.fields["a"] == ["<function log> is not in list"]
    assert_clean(result.fields["s"])


def test_exception_args_never_hand_back_host_objects() -> None:
    # KeyError(key) carries the key object itself; e.args gives a description, not the object.
    result = run(H("try:\n    {}[kv]\nexcept KeyError as e:\n    return {'a': e.args, 's': str(e), 'r': repr(e)}"))
    assert result.verdict == "modify", result.error
    assert result.fields == {"a": ["<kv>"], "s": "<kv>", "r": "KeyError('<kv>')"}


def test_error_message_of_helper_misuse_has_no_host_frames() -> None:
    for body in ("str(1, 2, 3, 4)", "kv.get()", "json.loads(5)", "re.compile(5)", "sorted(5)", "range('a')",
                 "log(sep=5)", "'a'.join(5)", "allow(1, 2)", "sha256(5)", "kv.hset('h', 'f')"):
        result = run(H(body))
        assert result.verdict == ERROR and result.error is not None, body
        assert result.error.kind in ("exception", "policy"), (body, result.error)
        assert_clean(result.error.message)
        assert "(line 2)" in result.error.message, result.error


def test_kv_outage_message_has_no_connection_details() -> None:
    result = run(H("kv.get('k')"), kv=DictKV(down=True))
    assert result.error is not None and result.error.kind == "unavailable"
    assert "redis" not in result.error.message and "10.0.0.5" not in result.error.message
    assert_clean(result.error.message)


def test_kv_refusal_is_catchable_and_plain() -> None:
    kv = DictKV({"s": {"a"}})
    result = run(H("try:\n    kv.get('s')\nexcept KVError as e:\n    return {'a': e.args, 's': str(e)}"), kv=kv)
    assert result.verdict == "modify", result.error
    assert result.fields["a"] == ["WRONGTYPE Operation against a key holding the wrong kind of value"]


def test_sticky_stop_prevents_side_effects_in_finally() -> None:
    kv = DictKV()
    src = H("try:\n    while True:\n        pass\nfinally:\n    kv.set('after', '1')\n    log('after')")
    result = run(src, kv=kv, steps=10_000)
    assert result.error is not None and result.error.kind == "budget"
    assert "steps (limit 10000)" in result.error.message
    assert kv.calls == [] and result.logs == []


def test_sticky_stop_survives_exception_replacement_in_finally() -> None:
    src = H("try:\n    x = kv.port\nfinally:\n    try:\n        kv.get('k')\n    except Exception:\n        pass")
    result = run(src)
    assert result.error is not None and result.error.kind == "policy"
    assert "attribute 'port'" in result.error.message


def test_kv_unavailable_cannot_be_retried_in_a_loop() -> None:
    kv = DictKV(down=True)
    src = H("for i in range(100):\n    try:\n        kv.get('k')\n    except Exception:\n        pass\nreturn allow()")
    result = run(src, kv=kv)
    assert result.error is not None and result.error.kind == "unavailable"
    assert len(kv.calls) == 1


def test_payload_is_a_fresh_copy() -> None:
    payload = {"list": [1, 2], "nested": {"a": "b"}}
    result = run(H("req['list'].append(3)\nreq['nested']['a'] = 'x'\nreq['new'] = 1\nreturn None"), payload=payload)
    assert result.verdict == "allow", result.error
    assert payload == {"list": [1, 2], "nested": {"a": "b"}}


def test_fresh_globals_every_call() -> None:
    src = "COUNT = [0]\nSEEN = {}\n" + H("COUNT.append(1)\nSEEN[len(COUNT)] = 1\nreturn {'n': len(COUNT), 's': len(SEEN)}")
    script = compile_script(src)
    results = [execute(script, {}, DictKV(), Budgets()) for _ in range(3)]
    assert [r.fields for r in results] == [{"n": 2, "s": 1}] * 3


def test_default_arguments_do_not_carry_state_between_calls() -> None:
    src = "def add(x, acc=[]):\n    acc.append(x)\n    return len(acc)\n" + H("return {'n': add(1)}")
    script = compile_script(src)
    assert [execute(script, {}, DictKV(), Budgets()).fields["n"] for _ in range(3)] == [1, 1, 1]


def test_results_are_plain_json_copies() -> None:
    result = run(H("t = (1, [2, (3,)], {'a': (4, 5)})\nreturn allow(t=t, s='x', f=1.5, n=None, b=True)"))
    assert result.verdict == "modify", result.error
    assert result.fields == {"t": [1, [2, [3]], {"a": [4, 5]}], "s": "x", "f": 1.5, "n": None, "b": True}
    plain(result.fields)


def test_result_dict_is_copied_not_referenced() -> None:
    result = run(H("d = {'a': [1]}\nreturn d"))
    assert result.fields == {"a": [1]}
    plain(result.fields)


def test_no_output_reaches_the_real_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(H("print('hello', 'world', sep='-')\nprint('no newline', end='')\nreturn None"))
    assert result.logs == ["hello-world", "no newline"]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_generated_tracebacks_only_name_script_lines() -> None:
    src = "def helper(x):\n    return json.loads(x)\n\ndef handle(req):\n    return helper('{bad')\n"
    result = run(src)
    assert result.error is not None and result.error.kind == "exception"
    assert result.error.message.startswith("ValueError: invalid JSON")
    assert result.error.message.endswith("(line 2)")
    assert_clean(result.error.message)


def test_error_message_is_bounded() -> None:
    result = run(H("raise ValueError('x' * 100000)"))
    assert result.error is not None and len(result.error.message) <= 512


def test_exception_raised_with_host_object_is_described_not_returned() -> None:
    result = run(H("try:\n    raise ValueError(kv, log)\nexcept ValueError as e:\n    return {'a': e.args}"))
    assert result.fields == {"a": ["<kv>", "<function log>"]}


def test_rebinding_helpers_affects_only_this_call() -> None:
    src = "json = None\nkv = None\n" + H("return {'j': json is None}")
    script = compile_script(src)
    assert execute(script, {}, DictKV(), Budgets()).fields == {"j": True}
    other = compile_script(H("return {'j': json.loads('1')}"))
    assert execute(other, {}, DictKV(), Budgets()).fields == {"j": 1}


@pytest.mark.parametrize(
    "body, kind",
    [
        ("log('\\ud800')\nraise ValueError('\\udfff')", "exception"),
        ("return deny(5001, 'x\\ud800')", None),  # still a deny: the text is cleaned (M2)
        ("return {'k\\ud800': 1}", "invalid_result"),
        ("return {'k': ['\\ud800']}", "invalid_result"),
        ("kv.get('\\ud800')", "exception"),
        ("x = kv.port\nlog('\\ud800')", "policy"),
    ],
)
def test_lone_surrogates_never_break_the_result_encoding(body: str, kind: str | None) -> None:
    import orjson

    result = run(H(body))
    if kind is None:
        assert result.verdict == "deny" and result.fields["errMsg"] == "x?", result
    else:
        assert result.error is not None and result.error.kind == kind, result
    orjson.dumps(result.to_wire())


def test_unicode_errors_read_like_python() -> None:
    result = run(H("b'\\xff'.decode()"))
    assert result.error is not None
    assert result.error.message == ("UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0: "
                                    "invalid start byte (line 2)")
