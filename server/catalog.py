"""The OpenIM callback catalogue, loaded from ``data/callbacks.json`` (a copy of
``shared/openim/callbacks.json``) and turned into type specs the server checks against.

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

INT_RANGES: dict[str, tuple[int, int]] = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "int": (-(2**63), 2**63 - 1),  # Go int on 64-bit
    "uint32": (0, 2**32 - 1),
}
SCALARS = ("string", "bool", "null", *INT_RANGES)
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


@dataclass
class Command:
    name: str
    kind: str  # "before" or "after"
    config_key: str
    request: dict[str, TypeSpec]
    mutable: dict[str, TypeSpec]
    notes: list[str]

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
        for name, value in changed.items():
            spec = self.mutable.get(name)
            if spec is None:
                if not self.mutable:
                    return f"{self.name} cannot change any field (reject or continue only); got {name!r}"
                allowed = ", ".join(sorted(self.mutable))
                return f"field {name!r} cannot be changed by {self.name} (mutable: {allowed})"
            err = spec.check(value, name, strict_fields=True, lists_nullable=True)
            if err:
                return err
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
        commands[name] = Command(
            name=name,
            kind=kind,
            config_key=entry.get("config_key", ""),
            request={k: parse_type(v) for k, v in (entry.get("request") or {}).items()},
            mutable={k: parse_type(v) for k, v in (entry.get("response_mutable") or {}).items()},
            notes=list(entry.get("notes") or []),
        )
    return Catalog(commands)


@cache
def catalog() -> Catalog:
    """The catalogue shipped with the package (process-wide, read-only)."""
    text = resources.files("server").joinpath("data/callbacks.json").read_text("utf-8")
    return load_catalog(json.loads(text))
