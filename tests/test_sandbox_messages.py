"""What scripts see of the builtins, ``repr`` and formatting: names, signatures and messages.

These are part of the script-visible behaviour (scripts catch and show them), pinned here so
that restructuring ``safe_builtins``, ``convert`` or ``formatting`` cannot change them: the
wrapped builtins keep their names and signatures (a TypeError names ``int_()``, the host
qualname scrubbed to its last part), each kind of value keeps its text.
"""

from __future__ import annotations

import os
import sys

import pytest

from sandbox.api import Budgets
from sandbox.worker.runtime import compile_script, execute

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "attacks"))
from fakeport import DictKV

CLASSES = """
class C:
    x = 1
class E(ValueError):
    pass
"""


def shown(expr: str) -> str:
    """``str(expr)``, or ``str(e)`` of the exception it raises, as the script sees it."""
    source = CLASSES + f"""
def handle(req):
    try:
        r = {expr}
    except Exception as e:
        return allow(v=str(e))
    return allow(v=str(r))
"""
    result = execute(compile_script(source), {}, DictKV(), Budgets())
    assert result.error is None, result.error
    return result.fields["v"]


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("int(1, 2, 3)", "int_() takes from 0 to 2 positional arguments but 3 were given"),
        ("str(1, 2, 3, 4)", "str_() takes from 0 to 3 positional arguments but 4 were given"),
        ("list(1, 2)", "list_() takes from 0 to 1 positional arguments but 2 were given"),
        ("tuple(1, 2)", "tuple_() takes from 0 to 1 positional arguments but 2 were given"),
        ("set(1, 2)", "set_() takes from 0 to 1 positional arguments but 2 were given"),
        ("dict(1, 2)", "dict expected at most 1 argument, got 2"),
        ("str(obj=5) + list(iterable='xy')[1] + str(int(x=1))", "5y1"),
        ("divmod(1)", "divmod() missing 1 required positional argument: 'b'"),
        ("repr()", "repr() missing 1 required positional argument: 'obj'"),
        ("repr(1, 2)", "repr() takes 1 positional argument but 2 were given"),
        ("sorted()", "sorted() missing 1 required positional argument: 'iterable'"),
        ("sorted([1], 2)", "sorted() takes 1 positional argument but 2 were given"),
        ("reversed()", "reversed() missing 1 required positional argument: 'seq'"),
        ("enumerate()", "enumerate() missing 1 required positional argument: 'iterable'"),
        ("range()", "range expected at least 1 argument, got 0"),
        ("min()", "min expected at least 1 argument, got 0"),
        ("max(1, 2, foo=3)", "max() got an unexpected keyword argument 'foo'"),
        ("sum()", "sum() missing 1 required positional argument: 'iterable'"),
        ("any()", "any() missing 1 required positional argument: 'iterable'"),
        ("isinstance(1)", "isinstance() missing 1 required positional argument: 'classinfo'"),
        ("round()", "round() missing 1 required positional argument: 'number'"),
    ],
)
def test_builtin_signatures_and_messages(expr: str, text: str) -> None:
    assert shown(expr) == text


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("repr((1,))", "(1,)"),
        ("repr(set())", "set()"),
        ("repr([1, 'a', None, 2.5, True, b'x', range(3), {'k': (2, 3)}])",
         "[1, 'a', None, 2.5, True, b'x', range(0, 3), {'k': (2, 3)}]"),
        ("repr(ValueError('x', [1, 2]))", "ValueError('x', '[1, 2]')"),
        ("repr(len)", "<built-in function len>"),
        ("repr(sorted) + repr(min)", "<function sorted><function min>"),
        ("repr(int) + repr(str)", "<class 'int'><class 'str'>"),
        ("repr(print)", "<function print>"),
        ("repr(kv.get) + repr('abc'.upper)", "<method get><method upper>"),
        ("repr(lambda x: x)", "<function <lambda>>"),
        ("repr(C) + repr(C())", "<class 'C'><C object>"),
        ("repr(E('boom'))", "E('boom')"),
    ],
)
def test_repr_texts(expr: str, text: str) -> None:
    assert shown(expr) == text


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("'%(a' % {}", "incomplete format key"),
        ("'%(a)s %s' % {'a': 1}", "a %-format cannot mix %(key) conversions with un-keyed ones"),
        ("'%s %s' % (1,)", "not enough arguments for format string"),
        ("'%y' % 1", "unsupported format character 'y' (0x79) at index 1"),
        ("'%.99999999999999999999f' % 1.0", "precision too big"),
        ("'{}{0}'.format('a')", "cannot switch from automatic field numbering to manual field specification"),
        ("'{0}{}'.format('a')", "cannot switch from manual field specification to automatic field numbering"),
        ("'{0.x}'.format(1)",
         "format field '0.x': attribute and index lookups are not supported in scripts (pass the value itself)"),
        ("'{:{:{:{}}}}'.format(1, 2, 3, 4)", "Max string recursion exceeded"),
        ("'{10000000000}'.format(1)", "Replacement index 1 out of range for positional args tuple"),
        ("'{!x}'.format(1)", "Unknown conversion specifier x"),
        ("'{}'.format_map({'x': 2})", "Format string contains positional fields"),
        ("'{0:>{1}}|{x!r}'.format('a', 3, x='y')", "  a|'y'"),
    ],
)
def test_format_messages(expr: str, text: str) -> None:
    assert shown(expr) == text
