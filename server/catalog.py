"""The OpenIM callback catalogue, loaded from ``data/callbacks.json`` (a copy of
``shared/openim/callbacks.json``) and compiled once into the checks the server runs.

The shared part of each entry describes types as Go-ish strings with free-text notes, for
people (``"string[]|null"``, ``"object[] {userID:string (REQUIRED - null panics)}"``).
ScriptGate reads none of that prose. Each entry's ``scriptgate`` object is ScriptGate's own,
machine-read data:

- ``request_schema`` / ``reply_schema``: JSON Schema (2020-12) of the request and of the
  fields a script may set in the reply, compiled once at load into ``TypeSpec`` trees.
  Lists accept null everywhere (Go encodes a nil slice as null); reply objects are closed
  (``additionalProperties: false``: OpenIM would silently drop a misspelt field).
- ``echoed``: reply fields OpenIM applies even when the reply leaves them out; every
  continue reply carries them, defaulting to the request's values (``Command.with_echo``).
- ``empty_unchanged``: reply fields where an empty value means "no change" (a lint hint).
- ``reply_names``: request field -> the reply field that sets it, where OpenIM names them
  differently (beforeMsgModify: ``faceURL`` -> ``senderFaceURL``; PROTOCOL.md section 9.6).
- ``openim_lines`` (the OpenIM lines that send the command: ``main``, ``v3.8``),
  ``line_notes`` (line-specific behaviour, per line), ``reply_traps`` (reply fields OpenIM
  dereferences through a pointer that may be nil: ``when`` = ``request_null`` or
  ``always``), ``content_json_object``, ``invite_narrowing`` (see server/service/callbacks.py)
  and ``notes`` (ScriptGate's own notes, for people).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from server.config import OPENIM_LINES  # main = 7848d7c, v3.8 = the v3.8.3-patch.N release line
from server.reply import COMMON_REPLY_FIELDS

# The JSON Schema keywords the catalogue uses. Anything else is refused at load (deny by
# default): a keyword this module does not enforce must not look enforced.
_KEYWORDS = frozenset({"$schema", "type", "format", "minimum", "maximum", "items", "properties", "required",
                       "additionalProperties", "description"})
_JSON_KINDS = {"string": "string", "boolean": "bool", "null": "null", "array": "list", "object": "object"}


@dataclass
class TypeSpec:
    """One field's type, compiled once at load from its JSON Schema (``request_schema`` /
    ``reply_schema`` in callbacks.json) into the checks the callback path runs.

    Why not a general JSON Schema validator at run time: the catalogue uses a handful of
    keywords, the callback path checks every request (jsonschema 4.26 took ~150 us for an
    invite request that these checks do in ~7 us), and its messages are worded for OpenIM users. The
    tests validate the same schemas with ``jsonschema`` and compare verdicts. One deliberate
    difference: an integer must be a JSON integer (``1.0`` is refused, as Go's decoder does).
    """

    kind: str  # string, bool, null, list, object, map, or an integer format: int32, int64, int, uint32
    nullable: bool = False
    item: TypeSpec | None = None  # list items
    fields: dict[str, TypeSpec] = field(default_factory=dict)  # object fields
    required: bool = False  # as a field of an object: must be present and non-null
    closed: bool = False  # an object with additionalProperties: false (reply objects: OpenIM drops typos)
    low: int = 0  # integer range (minimum, maximum)
    high: int = 0
    note: str = ""  # the schema's description

    @classmethod
    def from_schema(cls, schema: dict[str, Any], required: bool = False) -> TypeSpec:
        unknown = set(schema) - _KEYWORDS
        if unknown:
            raise ValueError(f"unsupported JSON Schema keyword(s): {', '.join(sorted(unknown))}")
        types = schema.get("type")
        names = [types] if isinstance(types, str) else list(types or ())
        base = [t for t in names if t != "null"] or ["null"]
        if len(base) != 1:
            raise ValueError(f"a field has one JSON type (and optionally null), not {types!r}")
        spec = cls("", nullable="null" in names and base[0] != "null", required=required,
                   note=schema.get("description", ""))
        if base[0] == "integer":
            spec.kind, spec.low, spec.high = schema["format"], schema["minimum"], schema["maximum"]
        elif base[0] in _JSON_KINDS:
            spec.kind = _JSON_KINDS[base[0]]
        else:
            raise ValueError(f"unsupported JSON type {base[0]!r}")
        if "items" in schema:
            spec.item = cls.from_schema(schema["items"])
        extra = schema.get("additionalProperties", True)
        if isinstance(extra, dict):  # {"type": "boolean"}: a map of flags
            if extra != {"type": "boolean"}:
                raise ValueError(f"unsupported additionalProperties {extra!r}")
            spec.kind = "map"
        spec.closed = extra is False
        needed = set(schema.get("required") or ())
        spec.fields = {n: cls.from_schema(s, n in needed) for n, s in (schema.get("properties") or {}).items()}
        if needed - set(spec.fields):
            raise ValueError(f"required names no property: {sorted(needed - set(spec.fields))}")
        return spec

    def describe(self) -> str:
        if self.kind == "list":
            base = f"list of {self.item.describe() if self.item else 'values'}"
        elif self.kind == "map":
            base = "object of booleans"
        elif self.kind in _CHECKS:
            base = self.kind
        else:
            base = f"{self.kind} integer"
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

    def check(self, value: Any, path: str) -> str | None:
        """Return None if ``value`` fits, else a one-line reason naming ``path``."""
        if value is None:
            if self.nullable or self.kind == "null":
                return None
            return f"{path} must be {self.describe()}, not null"
        return _CHECKS.get(self.kind, _check_int)(self, value, path)


def _check_string(spec: TypeSpec, value: Any, path: str) -> str | None:
    return None if type(value) is str else f"{path} must be {spec.describe()}"


def _check_bool(spec: TypeSpec, value: Any, path: str) -> str | None:
    return None if type(value) is bool else f"{path} must be {spec.describe()}"


def _check_null(spec: TypeSpec, value: Any, path: str) -> str | None:
    return f"{path} must be null"


def _check_int(spec: TypeSpec, value: Any, path: str) -> str | None:
    if type(value) is not int:  # bool is not int here; 1.0 is refused, as by Go's decoder
        return f"{path} must be {spec.describe()}"
    if not spec.low <= value <= spec.high:
        return f"{path} is out of range for {spec.kind} ({spec.low}..{spec.high})"
    return None


def _check_list(spec: TypeSpec, value: Any, path: str) -> str | None:
    if type(value) is not list:
        return f"{path} must be {spec.describe()}"
    item = spec.item
    if item is not None:
        for i, entry in enumerate(value):
            err = item.check(entry, f"{path}[{i}]")
            if err:
                return err
    return None


def _check_map(spec: TypeSpec, value: Any, path: str) -> str | None:
    if type(value) is not dict:
        return f"{path} must be {spec.describe()}"
    for k, v in value.items():
        if type(v) is not bool:
            return f"{path}.{k} must be a bool"
    return None


def _check_object(spec: TypeSpec, value: Any, path: str) -> str | None:
    if type(value) is not dict:
        return f"{path} must be an object"
    for name, field_spec in spec.fields.items():
        if name not in value:
            if field_spec.required:
                return f"{path}.{name} is required"
            continue
        if field_spec.required and value[name] is None:
            return f"{path}.{name} is required and must not be null"
        err = field_spec.check(value[name], f"{path}.{name}")
        if err:
            return err
    if spec.closed:
        for name in value:
            if name not in spec.fields:
                return f"{path}.{name} is not a field of {path}"
    return None


# Per kind; the integer formats (int32, int64, int, uint32) fall through to _check_int.
_CHECKS = {"string": _check_string, "bool": _check_bool, "null": _check_null, "list": _check_list,
           "map": _check_map, "object": _check_object}


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
    # Reply fields OpenIM applies even when the reply leaves them out (set-group-info: a
    # missing groupID makes the update fail with "record not found"). Every continue reply
    # must carry them, so they default to the request's values.
    echoed: tuple[str, ...] = ()
    empty_unchanged: frozenset[str] = frozenset()  # reply fields where '' / [] means "no change"
    reply_names: dict[str, str] = field(default_factory=dict)  # request name -> reply name, where they differ

    @property
    def needs_request(self) -> bool:
        """Whether checking a reply needs the request's values."""
        return bool(self.traps) or self.invite_narrowing

    @property
    def is_before(self) -> bool:
        return self.kind == "before"

    def with_echo(self, payload: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the ``echoed`` fields it lacks copied from the request (continue replies)."""
        echo = self.echoed
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
                err = spec.check(body[name], name)
                if err:
                    return err
        return None

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
                err = spec.check(value, name)
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


def _schema_fields(name: str, schema: dict[str, Any], described: dict[str, Any], what: str) -> dict[str, TypeSpec]:
    """The top-level properties of ``schema`` compiled; they must name exactly the fields the
    shared part of the entry describes (``request`` / ``response_mutable``), so the two cannot drift."""
    spec = TypeSpec.from_schema(schema)
    if spec.kind != "object" or list(spec.fields) != list(described):
        raise ValueError(f"{name}: {what} does not list the described fields {list(described)}")
    return spec.fields


def load_command(name: str, entry: dict[str, Any]) -> Command:
    kind = entry["kind"]
    if kind not in ("before", "after"):
        raise ValueError(f"{name}: unknown kind {kind!r}")
    own = entry.get("scriptgate") or {}
    lines = tuple(own.get("openim_lines") or OPENIM_LINES)
    if not set(lines) <= set(OPENIM_LINES):
        raise ValueError(f"{name}: unknown OpenIM line in {lines}")
    mutable = _schema_fields(name, own["reply_schema"], entry.get("response_mutable") or {}, "reply_schema")
    traps = tuple(Trap(t["field"], t["when"], t["why"]) for t in own.get("reply_traps") or ())
    for trap in traps:
        if trap.when not in ("request_null", "always") or trap.field not in mutable:
            raise ValueError(f"{name}: bad reply trap {trap}")
    echoed = tuple(own.get("echoed") or ())
    empty_unchanged = frozenset(own.get("empty_unchanged") or ())
    reply_names = dict(own.get("reply_names") or {})
    if not set(echoed) | empty_unchanged | set(reply_names.values()) <= set(mutable):
        raise ValueError(f"{name}: echoed / empty_unchanged / reply_names name a field the reply cannot set")
    return Command(
        name=name,
        kind=kind,
        config_key=entry.get("config_key", ""),
        request=_schema_fields(name, own["request_schema"], entry.get("request") or {}, "request_schema"),
        mutable=mutable,
        notes=list(entry.get("notes") or []),
        openim_lines=lines,
        line_notes=dict(own.get("line_notes") or {}),
        traps=traps,
        content_json_object=bool(own.get("content_json_object")),
        invite_narrowing=bool(own.get("invite_narrowing")),
        echoed=echoed,
        empty_unchanged=empty_unchanged,
        reply_names=reply_names,
    )


def load_catalog(raw: dict[str, Any]) -> Catalog:
    return Catalog({name: load_command(name, entry) for name, entry in raw.items()})


@cache
def catalog() -> Catalog:
    """The catalogue shipped with the package (process-wide, read-only)."""
    text = resources.files("server").joinpath("data/callbacks.json").read_text("utf-8")
    return load_catalog(json.loads(text))
