"""Upload-time checks of scripts against what OpenIM does with the reply (docs/openim.md).

Findings are errors or warnings. An error is a reply the server would certainly refuse
(``invalid_result``) or repair if the code runs: a literal field the command cannot
change, a literal value of the wrong JSON type, a common reply field such as nextCode, a
member without userID, a nil-pointer trap, a literal content that is not a JSON object, a
literal deny() errCode OpenIM cannot use. Errors refuse the upload (``PUT
/admin/scripts``, ``scriptgate check``/``push``). Warnings point at code that OpenIM
handles surprisingly (``shared/openim/PROTOCOL.md`` §9.5, the notes in ``callbacks.json``)
or that the configured OpenIM line never runs; they never block an upload (``--strict``
makes ``check``/``push`` fail on them).

The analysis is syntactic and deliberately conservative: it looks at ``allow(...)``,
``deny(...)``, returned dict literals and returns inside ``handle``. Anything it cannot
see (``allow(**fields)``, fields built in variables) is given the benefit of the doubt.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from typing import Any

from sandbox.api import ERRCODE_MAX, ERRCODE_MIN
from server.catalog import Command, TypeSpec, content_problem, fold
from server.reply import COMMON_REPLY_FIELDS

ERROR, WARNING = "error", "warning"
TEXT = 101  # OpenIM contentType of a text message

MSG_MODIFY = "callbackBeforeMsgModifyCommand"

INVITE_NARROWING = (
    "OpenIM (main and v3.8) ignores invitedUserIDs in this reply: a list narrower than the request's is "
    "answered with a rejection of the whole invitation naming the removed users (config invite_narrowing = "
    "\"reject\"; \"refused_members\" sends refusedMembersAccount instead); say so with deny(...)"
)


@dataclass(frozen=True)
class Warning_:
    """A finding (the name is historical: ``severity`` says whether it is an error)."""

    line: int
    col: int
    message: str
    severity: str = WARNING

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "col": self.col, "message": self.message}


Finding = Warning_


@dataclass
class Site:
    """A place where the script decides: allow(...), deny(...), a returned dict, or a
    plain ``return`` / ``return None`` in ``handle`` (= allow())."""

    node: ast.AST
    kind: str  # allow | deny | none
    fields: dict[str, ast.expr] = field(default_factory=dict)
    opaque: bool = False  # **kwargs or computed keys: the full field set is unknown
    args: list[ast.expr] = field(default_factory=list)  # positional arguments (deny)


def _pos(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 1), getattr(node, "col_offset", 0)  # the module: line 1, col 0


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _keyword_site(node: ast.Call, kind: str) -> Site:
    site = Site(node, kind, args=list(node.args))
    for kw in node.keywords:
        if kw.arg is None:
            site.opaque = True
        else:
            site.fields[kw.arg] = kw.value
    if kind == "allow" and node.args:
        site.opaque = True
    return site


def _dict_site(node: ast.Dict) -> Site:
    site = Site(node, "allow")
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            site.fields[key.value] = value
        else:
            site.opaque = True
    return site


def _handle(tree: ast.Module) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "handle":
            return node
    return None


def _own_nodes(func: ast.FunctionDef) -> list[ast.AST]:
    """Nodes of ``func``'s body, not descending into nested functions or lambdas."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                stack.append(child)
    return out


def _always_returns(body: list[ast.stmt]) -> bool:
    """True if control cannot fall off the end of ``body`` (conservative)."""
    if not body:
        return False
    last = body[-1]
    if isinstance(last, ast.Return | ast.Raise):
        return True
    if isinstance(last, ast.If):
        return _always_returns(last.body) and _always_returns(last.orelse)
    if isinstance(last, ast.Try):
        if last.finalbody and _always_returns(last.finalbody):
            return True
        ends = [last.orelse or last.body, *(h.body for h in last.handlers)]
        return all(_always_returns(b) for b in ends)
    if isinstance(last, ast.While) and isinstance(last.test, ast.Constant) and last.test.value is True:
        return not any(isinstance(n, ast.Break) for n in ast.walk(last))
    return False


def collect_sites(tree: ast.Module) -> list[Site]:
    sites: list[Site] = []
    for node in ast.walk(tree):
        name = _call_name(node)
        if name in ("allow", "deny"):
            sites.append(_keyword_site(node, name))  # type: ignore[arg-type]
    handle = _handle(tree)
    if handle is None:
        return sites
    # Returned dicts and bare returns count only in handle itself: a helper returning a
    # dict is usually data, not the reply.
    for node in _own_nodes(handle):
        if not isinstance(node, ast.Return):
            continue
        if isinstance(node.value, ast.Dict):
            sites.append(_dict_site(node.value))
        elif _call_name(node.value) == "dict":
            sites.append(_keyword_site(node.value, "allow"))  # type: ignore[arg-type]
        elif node.value is None or (isinstance(node.value, ast.Constant) and node.value.value is None):
            sites.append(Site(node, "none"))
    if not _always_returns(handle.body):
        end = handle.body[-1]
        sites.append(Site(ast.Return(lineno=getattr(end, "end_lineno", None) or end.lineno, col_offset=0), "none"))
    return sites


# --- the checks ------------------------------------------------------------------------


def _const(node: ast.expr) -> tuple[bool, Any]:
    """(True, value) for a literal (including negative numbers), else (False, None)."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


_FOLD_OPS = {ast.Pow: pow, ast.Mult: lambda a, b: a * b, ast.Add: lambda a, b: a + b,
             ast.Sub: lambda a, b: a - b, ast.LShift: lambda a, b: a << b}


def _fold_const(node: ast.expr) -> tuple[bool, Any]:
    """``_const`` plus integer arithmetic on literals (``2**31``, ``1 << 63``), kept small."""
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD_OPS:
        lk, left = _fold_const(node.left)
        rk, right = _fold_const(node.right)
        if not (lk and rk and type(left) is int and type(right) is int):
            return False, None
        if isinstance(node.op, ast.Pow | ast.LShift) and not (0 <= right <= 256 and abs(left) <= 2**64):
            return False, None
        return True, _FOLD_OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        known, value = _fold_const(node.operand)
        if known and type(value) is int:
            return True, -value
    return _const(node)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _guarded_names(tree: ast.AST) -> set[str]:
    """String constants that appear in a condition (if/while tests, conditional
    expressions, comparisons, boolean operators): fields a script checks before use."""
    names: set[str] = set()
    tests: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.IfExp):
            tests.append(node.test)
        elif isinstance(node, ast.comprehension):
            tests.extend(node.ifs)
        elif isinstance(node, ast.Compare | ast.BoolOp):
            tests.append(node)
    for test in tests:
        for sub in ast.walk(test):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                names.add(sub.value)
    return names


def _check_deny(site: Site) -> list[tuple[ast.AST, str, str]]:
    code = site.args[0] if site.args else site.fields.get("errCode")
    if code is None:
        return [] if site.opaque else [(site.node, f"deny() needs an errCode (an integer in {ERRCODE_MIN}..{ERRCODE_MAX})", ERROR)]
    known, value = _fold_const(code)
    if not known:
        return []
    if type(value) is not int:
        return [(code, f"deny() errCode must be an integer in {ERRCODE_MIN}..{ERRCODE_MAX}, not "
                       f"{type(value).__name__} (the server would send deny_errcode_fallback instead)", ERROR)]
    if not ERRCODE_MIN <= value <= ERRCODE_MAX:
        return [(code, f"deny() errCode {value} is outside {ERRCODE_MIN}..{ERRCODE_MAX}: OpenIM cannot use it as a "
                       "rejection code (docs convention: 5000-9999; the server would send deny_errcode_fallback "
                       "instead)", ERROR)]
    return []


Found = tuple[ast.AST, str, str]  # node, message, severity


def _check_content(value: ast.expr) -> Found | None:
    """beforeMsgModify ``content``: OpenIM main refuses (1001 ArgsError) non-object JSON,
    and the server refuses it as invalid_result on every line."""
    known, text = _const(value)
    if known:
        if text is None:
            return None
        if type(text) is not str:
            return value, "content must be a string holding a JSON object (json.dumps({...}))", ERROR
        problem = content_problem(text)
        return (value, problem, ERROR) if problem else None
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add | ast.Mod)):
        return value, "content is built as text: it must be a JSON object string; prefer json.dumps({...})", WARNING
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "dumps":
        if value.args and isinstance(value.args[0], ast.List | ast.Tuple | ast.Constant):
            return value, "content must encode a JSON object: json.dumps({...}), not a list or a scalar", ERROR
    return None


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _object_entries(node: ast.expr) -> tuple[list[tuple[str, ast.expr]], bool] | None:
    """The literal keys of a dict display or ``dict(k=v)`` call, and whether that is all
    of them; None for anything else."""
    if isinstance(node, ast.Dict):
        out, complete = [], True
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                out.append((key.value, value))
            else:
                complete = False
        return out, complete
    if _call_name(node) == "dict":
        call: ast.Call = node  # type: ignore[assignment]
        out = [(kw.arg, kw.value) for kw in call.keywords if kw.arg]
        return out, not call.args and all(kw.arg for kw in call.keywords)
    return None


def _check_value(spec: TypeSpec, node: ast.expr, path: str) -> list[Found]:
    """Check the literal parts of ``node`` against ``spec`` (what Go's decoder accepts)."""
    if spec.kind == "list":
        if isinstance(node, ast.List | ast.Tuple) and spec.item is not None:
            out: list[Found] = []
            for i, item in enumerate(node.elts):
                out.extend(_check_value(spec.item, item, f"{path}[{i}]"))
            return out
        if isinstance(node, ast.ListComp) and spec.item is not None:
            return _check_value(spec.item, node.elt, f"{path}[]")
    if spec.kind == "object" and spec.fields:
        entries = _object_entries(node)
        if entries is not None:
            return _check_object(spec, node, path, *entries)
    known, value = _fold_const(node)
    if not known:
        return []
    if isinstance(value, tuple):
        value = list(value)
    err = spec.check(value, path)
    if err:
        return [(node, f"{err}: OpenIM cannot decode it (the server refuses the reply as invalid_result)", ERROR)]
    return []


def _check_object(spec: TypeSpec, node: ast.expr, path: str, items: list[tuple[str, ast.expr]],
                  complete: bool) -> list[Found]:
    """The literal entries of an object value (a dict display or dict(...)) against ``spec``'s fields."""
    out: list[Found] = []
    seen: set[str] = set()
    names = list(spec.fields)
    folded = {fold(n): n for n in names}
    for key, value in items:
        name = key if key in spec.fields else folded.get(fold(key))
        if name is None:
            out.append((value, f"{path}.{key} is not a field of {path}{_suggest(key, names)}", ERROR))
            continue
        if name != key:
            out.append((value, f"{path}.{key}: did you mean {name}? (OpenIM matches keys case-insensitively, "
                               f"so it is sent as {name})", WARNING))
        seen.add(name)
        out.extend(_check_value(spec.fields[name], value, f"{path}.{name}"))
    if complete:
        for name, field_spec in spec.fields.items():
            if field_spec.required and name not in seen:
                out.append((node, f"{path} needs {name}: OpenIM matches entries by {name} and a missing one "
                                  "panics (500)", ERROR))
    return out


def _empty_literal(value: ast.expr) -> bool:
    known, v = _const(value)
    return known and (v == "" or v == [] or v == ())


def _is_request_field(value: ast.expr, name: str) -> bool:
    """``req["name"]`` or ``req.get("name")`` (any object: the request is usually ``req``)."""
    if isinstance(value, ast.Subscript):
        key = value.slice
        return isinstance(key, ast.Constant) and key.value == name
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "get":
        return bool(value.args) and isinstance(value.args[0], ast.Constant) and value.args[0].value == name
    return False


def _check_fields(command: Command, site: Site, guarded: set[str]) -> list[Found]:
    out: list[Found] = []
    name = command.name
    names = list(command.mutable)
    folded = {fold(n): n for n in names}
    for given, value in site.fields.items():
        field_name = given if given in command.mutable else folded.get(fold(given))
        if field_name is None:
            hint = command.reply_names.get(given)
            if given in COMMON_REPLY_FIELDS or fold(given) in {fold(c) for c in COMMON_REPLY_FIELDS}:
                out.append((value, f"{given!r} cannot be returned as a field: deny(errCode, errMsg, errDlt) rejects, "
                                   "allow() continues (the server refuses this reply as invalid_result)", ERROR))
            elif hint:
                out.append((value, f"{name} cannot change {given!r}: the reply calls it {hint!r}", ERROR))
            elif not names:
                out.append((value, f"{name} cannot change any field (its reply can only reject or continue); "
                                   f"{given!r} would be refused as invalid_result", ERROR))
            else:
                allowed = ", ".join(sorted(names))
                out.append((value, f"{name} cannot change {given!r}{_suggest(given, names)}; mutable fields: "
                                   f"{allowed}", ERROR))
            continue
        spec = command.mutable[field_name]
        if field_name != given:
            out.append((value, f"{given!r}: did you mean {field_name}? (OpenIM matches keys case-insensitively, so it "
                               f"is sent as {field_name})", WARNING))
        out.extend(_check_value(spec, value, field_name))
        if command.invite_narrowing and field_name == "invitedUserIDs" and not _is_request_field(value, field_name):
            out.append((value, INVITE_NARROWING, WARNING))
        if field_name in command.empty_unchanged and _empty_literal(value):
            out.append((value, f"{field_name}: an empty value leaves it unchanged in OpenIM ({spec.note})", WARNING))
        for trap in command.traps:
            if trap.field != field_name or _is_none(value):
                continue
            known, _ = _const(value)
            never = trap.when == "always" or command.request.get(field_name, TypeSpec("null")).kind == "null"
            if never:
                out.append((value, f"never return {field_name} in {name}: {trap.why}; the server refuses it as "
                                   "invalid_result", ERROR if known else WARNING))
            elif field_name not in guarded:
                out.append((value, f"return {field_name} only when the request's {field_name} is not null (check "
                                   f"req.get({field_name!r}) is not None first): {trap.why}; the server refuses "
                                   "it as invalid_result", WARNING))
        if command.content_json_object and field_name == "content":
            problem = _check_content(value)
            if problem:
                out.append(problem)
    return out


def _check_group_info(command: Command, site: Site) -> list[Found]:
    # OpenIM applies groupID (and, for the Ex variant, every field) from the reply even when
    # it is absent. The server echoes the request's values into every continue reply
    # (Command.with_echo), so scripts need not; only a changed groupID is worth a word.
    if site.kind == "deny" or site.opaque:
        return []
    value = site.fields.get("groupID")
    if isinstance(value, ast.Constant):
        return [(value, f"{command.name}: OpenIM updates the group named by the reply's groupID; a constant "
                        "groupID changes another group (leave it out: the server echoes the request's)", WARNING)]
    return []


def _is_content_type(node: ast.expr) -> bool:
    return _is_request_field(node, "contentType")


def _content_type_checks(tree: ast.AST) -> list[tuple[ast.expr, list[int]]]:
    """Comparisons of the request's contentType with types other than Text (101)."""
    out: list[tuple[ast.expr, list[int]]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if not any(_is_content_type(o) for o in operands):
            continue
        for operand in operands:
            known, value = _const(operand)
            if not known:
                continue
            values = value if isinstance(value, tuple | list | set | frozenset) else [value]
            others = sorted(v for v in values if type(v) is int and v != TEXT)
            if others:
                out.append((operand, others))
                break
    return out


def _line_findings(command: Command, tree: ast.Module, openim: str) -> list[Found]:
    out: list[Found] = []
    if not command.sent_by(openim):
        lines = " and ".join(command.openim_lines)
        out.append((tree, f"OpenIM {openim} never sends {command.name} (only {lines} does): this script never runs "
                          f"with the configured OpenIM line (openim = {openim!r})", WARNING))
    if command.name == MSG_MODIFY:
        for node, others in _content_type_checks(tree):
            shown = ", ".join(map(str, others))
            out.append((node, f"{MSG_MODIFY} runs only for Text messages (contentType 101) on OpenIM v3.8 (OpenIM "
                              f"issue #3739), so the branch for contentType {shown} never runs there"
                              + ("" if openim == "v3.8" else "; main at 7848d7c also calls it for other types"),
                        WARNING))
    return out


def check(command: Command, source: str, openim: str = "main") -> list[Finding]:
    """Every finding for ``source`` as the script of ``command`` (errors and warnings),
    for the OpenIM line ``openim`` (main | v3.8), sorted by position."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found: list[Found] = _line_findings(command, tree, openim)
    guarded = _guarded_names(tree)
    for site in collect_sites(tree):
        if not command.is_before:
            if site.kind == "deny":
                found.append((site.node, f"{command.name} is an after callback: deny() has no effect "
                                         "(OpenIM ignores the reply; the action already happened)", WARNING))
            elif site.fields:
                fields = ", ".join(site.fields)
                found.append((site.node, f"{command.name} is an after callback: returned fields are ignored ({fields})",
                              WARNING))
            continue
        if site.kind == "deny":
            found.extend(_check_deny(site))
        elif site.kind == "allow":
            found.extend(_check_fields(command, site, guarded))
        if "groupID" in command.echoed:  # set-group-info and its Ex variant
            found.extend(_check_group_info(command, site))
    seen: set[tuple[int, int, str]] = set()
    out: list[Finding] = []
    for node, message, severity in found:
        line, col = _pos(node)
        if (line, col, message) not in seen:
            seen.add((line, col, message))
            out.append(Finding(line, col, message, severity))
    out.sort(key=lambda w: (w.line, w.col))
    return out


def warnings(command: Command, source: str, openim: str = "main") -> list[Finding]:
    return [f for f in check(command, source, openim) if f.severity == WARNING]


def errors(command: Command, source: str, openim: str = "main") -> list[Finding]:
    return [f for f in check(command, source, openim) if f.severity == ERROR]
