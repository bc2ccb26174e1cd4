"""Upload-time checks: check_source never raises, refuses with line/column, stays fast."""

from __future__ import annotations

import time

import pytest

from sandbox.api import CompileIssue
from sandbox.policy import MAX_AST_DEPTH, MAX_ISSUES, MAX_SOURCE_BYTES, check_source
from sandbox.worker.runtime import CompiledScript, PolicyRefused, compile_script
from tests.timing import SLACK_S

# Well under a second when idle; anything quadratic in 64 KiB of source takes minutes.
COMPILE_BOUND_S = 3 * SLACK_S

OK = "def handle(req):\n    return None\n"


def test_accepts_a_plain_handler() -> None:
    assert check_source(OK) == []
    script = compile_script(OK)
    assert isinstance(script, CompiledScript)
    assert len(script.sha256) == 64


def test_sha256_is_of_the_source() -> None:
    import hashlib

    assert compile_script(OK).sha256 == hashlib.sha256(OK.encode()).hexdigest()


@pytest.mark.parametrize(
    "source, line, col, fragment",
    [
        ("x = 1\n", 1, 0, "no top-level 'def handle(req):'"),
        ("def handler(req):\n    pass\n", 1, 0, "no top-level"),
        ("def f():\n    def handle(req):\n        pass\n", 1, 0, "no top-level"),
        ("handle = lambda req: None\n", 1, 0, "no top-level"),
        ("def handle():\n    pass\n", 1, 0, "exactly one parameter"),
        ("def handle(req, extra):\n    pass\n", 1, 0, "exactly one parameter"),
        ("def handle(req=None):\n    pass\n", 1, 0, "exactly one parameter"),
        ("def handle(*req):\n    pass\n", 1, 0, "exactly one parameter"),
        ("def handle(req, **kw):\n    pass\n", 1, 0, "exactly one parameter"),
        ("def handle(req):\n    return req.__class__\n", 2, 11, 'starts with "_"'),
        ("def handle(req):\n    x = 1\n    import os\n", 3, 4, "imports are not allowed"),
        ("def handle(req:\n", 1, 10, "syntax error"),
        ("def handle(req):\n\treturn 1\n  x\n", 3, 3, "syntax error"),
        ("def handle(req):\n    return\tfoo(\n", 2, 14, "syntax error"),
    ],
)
def test_refusals_carry_line_and_column(source: str, line: int, col: int, fragment: str) -> None:
    issues = check_source(source)
    assert any(i.line == line and i.col == col and fragment in i.message for i in issues), issues
    with pytest.raises(PolicyRefused) as info:
        compile_script(source)
    assert info.value.issues == issues
    assert f"line {issues[0].line}" in str(info.value)


def test_every_issue_is_reported_in_source_order() -> None:
    src = "import os\ndef handle(req):\n    x = req._y\n    with C:\n        pass\n    return exec\n"
    issues = check_source(src)
    assert [i.line for i in issues] == sorted(i.line for i in issues)
    assert {1, 3, 4, 6} <= {i.line for i in issues}
    assert all(isinstance(i, CompileIssue) for i in issues)


def test_issue_count_is_capped() -> None:
    src = "def handle(req):\n" + "".join(f"    x{i} = req._a{i}\n" for i in range(500))
    assert len(check_source(src)) <= MAX_ISSUES + 1


PATHOLOGICAL = {
    "not-chain": "def handle(req):\n    return " + "not " * 16000 + "1\n",
    "unary-minus": "def handle(req):\n    return " + "-" * 60000 + "1\n",
    "long-sum": "def handle(req):\n    return " + "+".join(["1"] * 30000) + "\n",
    "medium-sum": "def handle(req):\n    return " + "+".join(["1"] * 900) + "\n",
    "attribute-chain": "def handle(req):\n    return req" + ".a" * 30000 + "\n",
    "attribute-chain-medium": "def handle(req):\n    return req" + ".a" * 500 + "\n",
    "parens": "def handle(req):\n    return " + "(" * 30000 + "1" + ")" * 30000 + "\n",
    "lists": "def handle(req):\n    return " + "[" * 190 + "]" * 190 + "\n",
    "lambdas": "def handle(req):\n    return " + "lambda: " * 8000 + "1\n",
    "subscripts": "def handle(req):\n    return req" + "[0]" * 20000 + "\n",
    "power-tower": "def handle(req):\n    return " + "2**" * 20000 + "2\n",
    "if-exp": "def handle(req):\n    return " + "1 if 1 else " * 6000 + "1\n",
    "nested-ifs": "def handle(req):\n" + "".join(" " * (4 * i + 4) + "if req:\n" for i in range(99)) + " " * 400 + "pass\n",
    "nested-defs": "def handle(req):\n" + "".join(" " * (i + 1) + f"def f{i}():\n" for i in range(95))
    + " " * 96 + "pass\n",
    "many-nodes": "def handle(req):\n" + "    x = [" + ",".join(["1"] * 32000) + "]\n",
    "nul-byte": "def handle(req):\n    return 1\x00\n",
    "lone-surrogate": "def handle(req):\n    return '\ud800'\n",
    "bom-and-garbage": "\ufeff\x01\x02def handle(req): pass\n",
    "too-big": "def handle(req):\n    return None\n" + "#" * MAX_SOURCE_BYTES,
    "too-big-multibyte": "def handle(req):\n    return None\n#" + "\u00e9" * (MAX_SOURCE_BYTES // 2),
    "empty": "",
    "only-comments": "# nothing\n",
    "deep-dict": "def handle(req):\n    return " + "{'a': " * 150 + "1" + "}" * 150 + "\n",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_sources_become_issues_quickly(name: str) -> None:
    source = PATHOLOGICAL[name]
    start = time.monotonic()
    issues = check_source(source)
    elapsed = time.monotonic() - start
    assert issues, name
    assert all(isinstance(i, CompileIssue) and i.line >= 1 and i.col >= 0 for i in issues)
    assert elapsed < COMPILE_BOUND_S, (name, elapsed)


@pytest.mark.parametrize("value", [None, b"def handle(req): pass", 42, ["def handle(req): pass"]])
def test_non_text_sources_are_issues(value: object) -> None:
    assert check_source(value)[0].message == "source must be text"  # type: ignore[arg-type]


def test_size_limit_is_64_kib() -> None:
    assert MAX_SOURCE_BYTES == 65536
    issues = check_source(PATHOLOGICAL["too-big"])
    assert issues == [CompileIssue(1, 0, "source is larger than 65536 bytes")]


def test_depth_limit_names_the_line() -> None:
    src = "def handle(req):\n    x = 1\n    return " + "[" * 100 + "]" * 100 + "\n"
    issues = check_source(src)
    assert issues[0].line == 3 and f"{MAX_AST_DEPTH} levels" in issues[0].message


def test_large_legitimate_script_compiles_in_bounded_time() -> None:
    body = "".join(
        f"def helper{i}(req):\n    x = req.get('k{i}') or []\n    return [v for v in x if v != {i}]\n\n"
        for i in range(550)
    )
    source = body + "def handle(req):\n    return None\n"
    assert len(source.encode()) < MAX_SOURCE_BYTES
    start = time.monotonic()
    compile_script(source)
    assert time.monotonic() - start < COMPILE_BOUND_S


@pytest.mark.parametrize(
    "source",
    [
        "def handle(req):\n    type = req.get('type')\n    return {'t': type}\n",
        "def handle(req):\n    id = req['userID']\n    return {'id': id}\n",
        "def handle(req):\n    for input in req:\n        pass\n",
        "def f(hash):\n    return hash\ndef handle(req):\n    return None\n",
        "def handle(req):\n    x = [i for i in range(3)]\n    y = {k: v for k, v in req.items()}\n    return None\n",
        "def handle(req):\n    try:\n        pass\n    except (ValueError, KeyError) as e:\n        raise\n    finally:\n"
        "        for i in range(2):\n            break\n",
        "def handle(req):\n    while True:\n        try:\n            break\n        finally:\n            pass\n",
        "def handle(req):\n    f = lambda x, y=2: x + y\n    return {'v': f(1)}\n",
        "def handle(req):\n    a, *b = [1, 2, 3]\n    (c, d), e = (1, 2), 3\n    return None\n",
        "def handle(req):\n    global G\n    G = 1\n",
        "def handle(req):\n    x = f'{req!r:>10} {1 + 1}'\n    return None\n",
        "def handle(req: dict) -> dict:\n    return None\n",
        "def handle(req, /):\n    return None\n",
        "def handle(req):\n    del req['a']\n    assert req, 'msg'\n    return None\n",
    ],
)
def test_ordinary_python_is_accepted(source: str) -> None:
    assert check_source(source) == []


def test_check_source_matches_compile_script() -> None:
    for source in [*list(PATHOLOGICAL.values())[:5], OK]:
        issues = check_source(source)
        if issues:
            with pytest.raises(PolicyRefused):
                compile_script(source)
        else:
            compile_script(source)
