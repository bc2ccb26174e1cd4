"""The OpenIM callback catalogue, loaded from ``data/callbacks.json`` (a copy of
``shared/openim/callbacks.json``) and turned into type specs the server checks against.

Each entry also has a ``scriptgate`` object, ScriptGate's own data that the shared copy
lacks: ``openim_lines`` (the OpenIM lines that send the command: ``main``, ``v3.8``),
``line_notes`` (line-specific behaviour, per line), ``reply_traps`` (reply fields OpenIM
dereferences through a pointer that may be nil: ``when`` = ``request_null`` or
``always``), ``content_json_object``, ``invite_narrowing`` (see server/service/callbacks.py) and
``notes`` (ScriptGate's own notes, for people).

The JSON describes types as Go-ish strings with free-text notes, for example
``"string[]|null"`` or ``"object[] {userID:string (REQUIRED - null panics), roleLevel:int32|null}"``.
``parse_type`` turns those into ``TypeSpec`` trees; ``TypeSpec.check`` validates JSON data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from server.config import OPENIM_LINES  # main = 7848d7c, v3.8 = the v3.8.3-patch.N release line

INT_RANGES: dict[str, tuple[int, int]] = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "int": (-(2**63), 2**63 - 1),  # Go int on 64-bit
    "uint32": (0, 2**32 - 1),
}
SCALARS = ("string", "bool", "null", *INT_RANGES)
# The five fields every reply carries; a script cannot set them as fields.
COMMON_REPLY_FIELDS = ("actionCode", "errCode", "errMsg", "errDlt", "nextCode")
_SCALAR_RE = re.compile(r"^(string|int32|int64|uint32|int|bool|null)(\[\])?(?:\s+ms)?(\|null)?\s*")


@dataclass
class TypeSpec:
    kind: str  # string, bool, null, int32, int64, int, uint32, list, object, map
    nullable: bool = False
    item: TypeSpec | None = None  # list items
    fields: dict[str, TypeSpec] = field(default_factory=dict)  # object fields
    required: bool = False  # as a field of an object: must be present and non-null
    note: str = ""

    def describe(self) -> str:
        if self.kind == "list":
            base = f"list of {self.item.describe() if self.item else 'values'}"
        elif self.kind == "object":
            base = "object"
        elif self.kind == "map":
            base = "object of booleans"
        elif self.kind in INT_RANGES:
            base = f"{self.kind} integer"
        else:
            base = self.kind
        return base + (" or null" if self.nullable else "")

    def canonical(self, value: Any, path: str) -> tuple[Any, str | None]:
        """``value`` with object keys renamed to this spec's spelling where they differ only
        in case, as Go's encoding/json matches them; (value, error) on a key clash."""
        if self.kind == "list" and self.item is not None and type(value) is list:
            if self.item.kind not in ("object", "list"):
                return value, None  # nothing to rename (lists of 10,000 IDs stay as they are)
            out_list = []
            for i, item in enumerate(value):
                item, err = self.item.canonical(item, f"{path}[{i}]")
                if err:
                    return value, err
                out_list.append(item)
            return out_list, None
        if self.kind != "object" or not self.fields or type(value) is not dict:
            return value, None
        renamed, err = canonical_keys(value, self.fields, path)
        if err:
            return value, err
        out: dict[str, Any] = {}
        for key, item in renamed.items():
            spec = self.fields.get(key)
            if spec is not None:
                item, err = spec.canonical(item, f"{path}.{key}")
                if err:
                    return value, err
            out[key] = item
        return out, None

    def check(self, value: Any, path: str, *, strict_fields: bool, lists_nullable: bool) -> str | None:
        """Return None if ``value`` fits, else a one-line reason naming ``path``.

        ``strict_fields`` refuses unknown keys inside objects (replies: a typo would be
        dropped silently by OpenIM). ``lists_nullable`` accepts null for any list, as Go
        encodes nil slices (requests).
        """
        if value is None:
            if self.nullable or self.kind == "null" or (lists_nullable and self.kind == "list"):
                return None
            return f"{path} must be {self.describe()}, not null"
        kind = self.kind
        if kind == "string":
            ok = type(value) is str
        elif kind == "bool":
            ok = type(value) is bool
        elif kind in INT_RANGES:
            if type(value) is not int:
                return f"{path} must be {self.describe()}"
            low, high = INT_RANGES[kind]
            if not low <= value <= high:
                return f"{path} is out of range for {kind} ({low}..{high})"
            return None
        elif kind == "null":
            return f"{path} must be null"
        elif kind == "list":
            if type(value) is not list:
                return f"{path} must be {self.describe()}"
            if self.item is not None:
                for i, item in enumerate(value):
                    err = self.item.check(
                        item, f"{path}[{i}]", strict_fields=strict_fields, lists_nullable=lists_nullable
                    )
                    if err:
                        return err
            return None
        elif kind == "map":
            if type(value) is not dict:
                return f"{path} must be {self.describe()}"
            for k, v in value.items():
                if type(v) is not bool:
                    return f"{path}.{k} must be a bool"
            return None
        elif kind == "object":
            if type(value) is not dict:
                return f"{path} must be an object"
            for name, spec in self.fields.items():
                if name not in value:
                    if spec.required:
                        return f"{path}.{name} is required"
                    continue
                if spec.required and value[name] is None:
                    return f"{path}.{name} is required and must not be null"
                err = spec.check(
                    value[name], f"{path}.{name}", strict_fields=strict_fields, lists_nullable=lists_nullable
                )
                if err:
                    return err
            if strict_fields and self.fields:
                for name in value:
                    if name not in self.fields:
                        return f"{path}.{name} is not a field of {path}"
            return None
        else:  # pragma: no cover - parse_type only produces the kinds above
            return f"{path}: unknown type {kind}"
        return None if ok else f"{path} must be {self.describe()}"


def fold(name: str) -> str:
    """A key as Go's encoding/json compares it with a field name (case-insensitively; the
    Kelvin sign and the long s fold to k and s)."""
    return name.replace("\u212a", "k").replace("\u017f", "s").lower()


def canonical_keys(value: dict[str, Any], names: dict[str, Any], path: str = "") -> tuple[dict[str, Any], str | None]:
    """Rename keys of ``value`` that match one of ``names`` only case-insensitively.

    Exact names win; two keys for one field (``nickName`` and ``nickname``) are an error,
    because Go keeps whichever comes last in the JSON text and the script cannot mean both."""
    if all(key in names for key in value):
        return value, None
    folded: dict[str, str] = {}
    for name in names:
        folded.setdefault(fold(name), name)
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key, item in value.items():
        name = key if key in names else folded.get(fold(key), key)
        if name in source:
            where = f"{path}." if path else ""
            return value, f"{where}{source[name]!r} and {where}{key!r} both set {name!r} (OpenIM matches keys case-insensitively)"
        source[name] = key
        out[name] = item
    return out, None


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside (), {} and <>."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "({<":
            depth += 1
        elif ch in ")}>":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _matching(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "({<":
            depth += 1
        elif text[i] in ")}>":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced type spec: {text!r}")


def _parse_fields(body: str) -> dict[str, TypeSpec]:
    out: dict[str, TypeSpec] = {}
    for part in _split_top(body):
        name, _, spec = part.partition(":")
        parsed = parse_type(spec)
        parsed.required = "REQUIRED" in parsed.note
        out[name.strip()] = parsed
    return out


def _tail(text: str) -> tuple[bool, str]:
    """Parse what follows a type: an optional ``|null`` and an optional ``(note)``."""
    text = text.strip()
    nullable = False
    if text.startswith("|null"):
        nullable, text = True, text[5:].strip()
    note = text[1:-1].strip() if text.startswith("(") and text.endswith(")") else text
    return nullable, note


def parse_type(text: str) -> TypeSpec:
    text = text.strip()
    if text.startswith("object<"):
        end = _matching(text, text.index("<"))
        nullable, note = _tail(text[end + 1 :])
        return TypeSpec("map", nullable=nullable, note=note)
    if text.startswith("object"):
        rest = text[len("object") :].strip()
        is_list = rest.startswith("[]")
        if is_list:
            rest = rest[2:].strip()
            if rest.startswith("of "):
                rest = rest[3:].strip()
        fields: dict[str, TypeSpec] = {}
        brace = rest.find("{")
        if brace != -1 and (rest.find("(") == -1 or brace < rest.find("(")):
            end = _matching(rest, brace)
            fields = _parse_fields(rest[brace + 1 : end])
            rest = rest[end + 1 :]
        nullable, note = _tail(rest)
        obj = TypeSpec("object", fields=fields)
        if is_list:
            return TypeSpec("list", nullable=nullable, item=obj, note=note)
        obj.nullable, obj.note = nullable, note
        return obj
    m = _SCALAR_RE.match(text)
    if not m:
        raise ValueError(f"cannot parse type spec {text!r}")
    base, is_list, null = m.group(1), bool(m.group(2)), bool(m.group(3))
    note = _tail(text[m.end() :])[1]
    if is_list:
        return TypeSpec("list", nullable=null, item=TypeSpec(base), note=note)
    return TypeSpec(base, nullable=null or base == "null", note=note)


@dataclass(frozen=True)
class Trap:
    """A reply field OpenIM writes through a pointer that may be nil (a 500 for the user)."""

    field: str
    when: str  # request_null: when the request's field is null or absent; always: any non-null value
    why: str


@dataclass
class Command:
    name: str
    kind: str  # "before" or "after"
    config_key: str
    request: dict[str, TypeSpec]
    mutable: dict[str, TypeSpec]
    notes: list[str]
    openim_lines: tuple[str, ...] = OPENIM_LINES
    line_notes: dict[str, str] = field(default_factory=dict)
    traps: tuple[Trap, ...] = ()
    content_json_object: bool = False  # beforeMsgModify: a reply content must be a JSON object text
    invite_narrowing: bool = False  # beforeInviteJoinGroup: invitedUserIDs narrowing (server/service/callbacks.py)

    @property
    def needs_request(self) -> bool:
        """Whether checking a reply needs the request's values."""
        return bool(self.traps) or self.invite_narrowing

    @property
    def is_before(self) -> bool:
        return self.kind == "before"

    @property
    def echo_fields(self) -> tuple[str, ...]:
        """Reply fields OpenIM applies even when the reply leaves them out (set-group-info:
        a missing groupID makes the update fail with "record not found"). Every continue
        reply must carry them, so they default to the request's values."""
        return tuple(name for name, spec in self.mutable.items() if "always applied" in spec.note.lower())

    def with_echo(self, payload: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        echo = self.echo_fields
        if not echo or body.get("nextCode") == 1:
            return body
        for name in echo:
            if name not in body and name in payload:
                body[name] = payload[name]
        return body

    def check_request(self, body: dict[str, Any]) -> str | None:
        """Check the known request fields' types; unknown and missing fields are allowed
        (OpenIM adds fields across versions, and hand-written examples omit some)."""
        for name, spec in self.request.items():
            if name in body:
                err = spec.check(body[name], name, strict_fields=False, lists_nullable=True)
                if err:
                    return err
        return None

    def check_reply_fields(self, changed: dict[str, Any]) -> str | None:
        """Check fields a script wants to change: each must be mutable and well-typed."""
        return self.canonical_reply(changed)[1]

    def canonical_reply(self, changed: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """(fields spelled as the catalogue spells them, None), or (changed, reason) when
        they cannot go into OpenIM's reply: a field the command cannot change, a common
        reply field, a wrong JSON type, a clash of spellings, or a content that is not a
        JSON object where OpenIM requires one."""
        fields, err = canonical_keys(changed, self.mutable)
        if err:
            return changed, err
        out: dict[str, Any] = {}
        for name, value in fields.items():
            spec = self.mutable.get(name)
            if spec is None:
                if name in COMMON_REPLY_FIELDS or fold(name) in _COMMON_FOLDED:
                    return changed, (f"{name!r} cannot be returned as a field: use deny(errCode, errMsg, errDlt) to "
                                     "reject, allow() to continue")
                if not self.mutable:
                    return changed, f"{self.name} cannot change any field (reject or continue only); got {name!r}"
                allowed = ", ".join(sorted(self.mutable))
                return changed, f"field {name!r} cannot be changed by {self.name} (mutable: {allowed})"
            value, err = spec.canonical(value, name)
            if err is None:
                err = spec.check(value, name, strict_fields=True, lists_nullable=True)
            if err is None and name == "content" and self.content_json_object and value is not None:
                err = content_problem(value)
            if err:
                return changed, err
            out[name] = value
        return out, None

    def trap_problem(self, request: dict[str, Any], fields: dict[str, Any]) -> str | None:
        """Why OpenIM would dereference a nil pointer applying ``fields``, or None."""
        for trap in self.traps:
            if fields.get(trap.field) is None:
                continue
            if trap.when == "always" or request.get(trap.field) is None:
                return f"{trap.field} cannot be set here: {trap.why}"
        return None

    def sent_by(self, line: str) -> bool:
        return line in self.openim_lines


_COMMON_FOLDED = {fold(n) for n in COMMON_REPLY_FIELDS}


def content_problem(text: str) -> str | None:
    """Why OpenIM cannot use ``text`` as message content, or None.

    OpenIM main decodes the reply's content into a Go struct (``json.Unmarshal(content,
    &struct{}{})``) and fails the send with ArgsError 1001 unless it is a JSON object; the
    clients parse it as one on every line. NaN and Infinity are not JSON to Go."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return "content must be JSON text (a JSON object such as json.dumps({'content': ...})): OpenIM fails the send"
    if type(value) is not dict:
        return (f"content must be a JSON object, not a JSON {type(value).__name__}: OpenIM fails the send "
                "(ArgsError 1001)")
    return None


@dataclass
class Catalog:
    commands: dict[str, Command]

    def get(self, name: str) -> Command | None:
        return self.commands.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.commands

    def __len__(self) -> int:
        return len(self.commands)


def load_catalog(raw: dict[str, Any]) -> Catalog:
    commands: dict[str, Command] = {}
    for name, entry in raw.items():
        kind = entry["kind"]
        if kind not in ("before", "after"):
            raise ValueError(f"{name}: unknown kind {kind!r}")
        own = entry.get("scriptgate") or {}
        lines = tuple(own.get("openim_lines") or OPENIM_LINES)
        if not set(lines) <= set(OPENIM_LINES):
            raise ValueError(f"{name}: unknown OpenIM line in {lines}")
        traps = tuple(Trap(t["field"], t["when"], t["why"]) for t in own.get("reply_traps") or ())
        for trap in traps:
            if trap.when not in ("request_null", "always") or trap.field not in (entry.get("response_mutable") or {}):
                raise ValueError(f"{name}: bad reply trap {trap}")
        commands[name] = Command(
            name=name,
            kind=kind,
            config_key=entry.get("config_key", ""),
            request={k: parse_type(v) for k, v in (entry.get("request") or {}).items()},
            mutable={k: parse_type(v) for k, v in (entry.get("response_mutable") or {}).items()},
            notes=list(entry.get("notes") or []),
            openim_lines=lines,
            line_notes=dict(own.get("line_notes") or {}),
            traps=traps,
            content_json_object=bool(own.get("content_json_object")),
            invite_narrowing=bool(own.get("invite_narrowing")),
        )
    return Catalog(commands)


@cache
def catalog() -> Catalog:
    """The catalogue shipped with the package (process-wide, read-only)."""
    text = resources.files("server").joinpath("data/callbacks.json").read_text("utf-8")
    return load_catalog(json.loads(text))
