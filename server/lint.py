"""Offline warnings for scripts: fields the command cannot change, and known OpenIM traps.

Warnings never block an upload (the sandbox policy does that); they point at code that
would be refused at run time (``invalid_result``) or that OpenIM handles surprisingly
(``shared/openim/PROTOCOL.md`` §9.5 and the notes in ``callbacks.json``).

The analysis is syntactic and deliberately conservative: it looks at ``allow(...)``,
``deny(...)``, returned dict literals and returns inside ``handle``. Anything it cannot
see (``allow(**fields)``, fields built in variables) is given the benefit of the doubt.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from typing import Any

from server.catalog import Command
from server.config import ERRCODE_MAX, ERRCODE_MIN

SET_GROUP_INFO = "callbackBeforeSetGroupInfoCommand"
SET_GROUP_INFO_EX = "callbackBeforeSetGroupInfoExCommand"
UPDATE_USER_INFO_EX = "callbackBeforeUpdateUserInfoExCommand"
MSG_MODIFY = "callbackBeforeMsgModifyCommand"
MEMBERS_JOIN = "callbackBeforeMembersJoinGroupCommand"
INVITE = "callbackBeforeInviteJoinGroupCommand"

# beforeSetGroupInfoEx applies every one of these from the reply: a missing one (null)
# means "don't update", so the user's change to it is silently dropped.
SET_GROUP_INFO_EX_FIELDS = (
    "groupName", "introduction", "faceURL", "ex", "needVerification", "lookMemberInfo", "applyMemberFriend",
)
# Reply names that differ from the request's, per command (PROTOCOL.md §9.6).
RENAMED = {MSG_MODIFY: {"faceURL": "senderFaceURL", "atUserList": "atUserIDList"}}
# Reply fields that some OpenIM versions parse but never apply (callbacks.json notes).
IGNORED_BY_SOME = {
    INVITE: {
        "invitedUserIDs": (
            "OpenIM server main ignores invitedUserIDs in this reply and only accepts or rejects the "
            "whole invitation (the documented contract narrows the list); deny() if a user must not join"
        )
    }
}


@dataclass(frozen=True)
class Warning_:
    line: int
    col: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "col": self.col, "message": self.message}


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
    return getattr(node, "lineno", 1), getattr(node, "col_offset", 0)


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


def _check_deny(site: Site) -> list[tuple[ast.AST, str]]:
    code = site.args[0] if site.args else site.fields.get("errCode")
    if code is None:
        return [] if site.opaque else [(site.node, "deny() needs an errCode (an integer in 100..2147483647)")]
    known, value = _const(code)
    if not known:
        return []
    if type(value) is not int:
        return [(code, f"deny() errCode must be an integer, not {type(value).__name__} (OpenIM fails the call with 90007)")]
    if not ERRCODE_MIN <= value <= ERRCODE_MAX:
        return [(code, f"deny() errCode {value} is outside {ERRCODE_MIN}..{ERRCODE_MAX}: OpenIM turns it into a 500 "
                       "(docs convention: 5000-9999); the server refuses it as invalid_result")]
    return []


def _check_content(value: ast.expr) -> str | None:
    """beforeMsgModify ``content``: OpenIM main refuses (1001 ArgsError) non-object JSON."""
    known, text = _const(value)
    if known:
        if text is None:
            return None
        if type(text) is not str:
            return "content must be a string holding a JSON object (json.dumps({...}))"
        try:
            parsed = json.loads(text)
        except ValueError:
            return "content is not JSON: OpenIM main refuses it with 1001 ArgsError; use json.dumps({...})"
        return None if isinstance(parsed, dict) else "content must be a JSON object, not another JSON value (1001 ArgsError)"
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add | ast.Mod)):
        return "content is built as text: it must be a JSON object string; prefer json.dumps({...})"
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "dumps":
        if value.args and isinstance(value.args[0], ast.List | ast.Tuple | ast.Constant):
            return "content must encode a JSON object: json.dumps({...}), not a list or a scalar"
    return None


def _member_entries_without_user_id(value: ast.expr) -> list[ast.AST]:
    bad: list[ast.AST] = []
    for node in ast.walk(value):
        if isinstance(node, ast.Dict):
            keys = node.keys
            if all(isinstance(k, ast.Constant) for k in keys) and "userID" not in {k.value for k in keys}:  # type: ignore[union-attr]
                bad.append(node)
        elif _call_name(node) == "dict":
            call: ast.Call = node  # type: ignore[assignment]
            if not call.args and all(kw.arg for kw in call.keywords) and "userID" not in {kw.arg for kw in call.keywords}:
                bad.append(node)
    return bad


def _empty_literal(value: ast.expr) -> bool:
    known, v = _const(value)
    return known and (v == "" or v == [] or v == ())


def _check_fields(command: Command, site: Site, guarded: set[str]) -> list[tuple[ast.AST, str]]:
    out: list[tuple[ast.AST, str]] = []
    name = command.name
    for field_name, value in site.fields.items():
        spec = command.mutable.get(field_name)
        if spec is None:
            hint = RENAMED.get(name, {}).get(field_name)
            if hint:
                out.append((value, f"{name} cannot change {field_name!r}: the reply calls it {hint!r}"))
            else:
                allowed = ", ".join(sorted(command.mutable)) or "none (reject or continue only)"
                out.append((value, f"{name} cannot change {field_name!r}; mutable fields: {allowed}"))
            continue
        note = IGNORED_BY_SOME.get(name, {}).get(field_name)
        if note:
            out.append((value, note))
        if ("if non-empty" in spec.note or "'' = no change" in spec.note) and _empty_literal(value):
            out.append((value, f"{field_name}: an empty value leaves it unchanged in OpenIM ({spec.note})"))
        if name == UPDATE_USER_INFO_EX and not _is_none(value):
            if field_name == "ex":
                out.append((value, "never return ex in beforeUpdateUserInfoEx: ex is always null in the request and "
                                   "OpenIM dereferences a nil pointer (user gets error 500)"))
            elif field_name not in guarded:
                out.append((value, f"return {field_name} only when the request's {field_name} is not null "
                                   f"(check req.get({field_name!r}) is not None first): otherwise OpenIM "
                                   "dereferences a nil pointer (user gets error 500)"))
        if name == MSG_MODIFY and field_name == "content":
            problem = _check_content(value)
            if problem:
                out.append((value, problem))
        if name == MSG_MODIFY and field_name == "offlinePushInfo" and not _is_none(value):
            out.append((value, "avoid offlinePushInfo in beforeMsgModify: if the message had none, OpenIM "
                               "dereferences a nil pointer (500), and the request does not tell"))
        if name == MEMBERS_JOIN and field_name == "memberCallbackList":
            for bad in _member_entries_without_user_id(value):
                out.append((bad, "every memberCallbackList entry needs userID: OpenIM matches entries by "
                                 "userID and a missing one panics (500)"))
    return out


def _check_group_info(command: Command, site: Site) -> list[tuple[ast.AST, str]]:
    # OpenIM applies groupID (and, for the Ex variant, every field) from the reply even when
    # it is absent. The server echoes the request's values into every continue reply
    # (Command.with_echo), so scripts need not; only a changed groupID is worth a word.
    if site.kind == "deny" or site.opaque:
        return []
    value = site.fields.get("groupID")
    if isinstance(value, ast.Constant):
        return [(value, f"{command.name}: OpenIM updates the group named by the reply's groupID; a constant "
                        "groupID changes another group (leave it out: the server echoes the request's)")]
    return []


def warnings(command: Command, source: str) -> list[Warning_]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found: list[tuple[ast.AST, str]] = []
    guarded = _guarded_names(tree)
    for site in collect_sites(tree):
        if not command.is_before:
            if site.kind == "deny":
                found.append((site.node, f"{command.name} is an after callback: deny() has no effect "
                                         "(OpenIM ignores the reply; the action already happened)"))
            elif site.fields:
                fields = ", ".join(site.fields)
                found.append((site.node, f"{command.name} is an after callback: returned fields are ignored ({fields})"))
            continue
        if site.kind == "deny":
            found.extend(_check_deny(site))
        elif site.kind == "allow":
            found.extend(_check_fields(command, site, guarded))
        if command.name in (SET_GROUP_INFO, SET_GROUP_INFO_EX):
            found.extend(_check_group_info(command, site))
    seen: set[tuple[int, int, str]] = set()
    out: list[Warning_] = []
    for node, message in found:
        line, col = _pos(node)
        if (line, col, message) not in seen:
            seen.add((line, col, message))
            out.append(Warning_(line, col, message))
    out.sort(key=lambda w: (w.line, w.col))
    return out
