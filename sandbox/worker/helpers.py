"""The helpers a script gets as globals: facades and functions, never modules.

Each facade is a small class with ``__slots__`` whose state lives in underscore slots
(unreachable: underscore attributes are refused at upload) and whose ``PUBLIC`` set is the
whole attribute allow-list ``sandbox.worker.guards`` grants for it. ``sandbox.worker.runtime`` builds the
helpers once per process, bound to the process's one ``RunState``; anything per call
(the compiled-pattern cache) lives in that state, which is reset for every call. Every helper checks
sizes against the call's budgets and raises plain ``ValueError``/``TypeError`` with plain
messages, never a host exception object.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

import orjson
import re2

from sandbox.worker.budget import RunState
from sandbox.worker.containers import INTLIKE
from sandbox.worker.convert import InvalidNumber, InvalidResult, TooLong, safe_str, scrub, to_plain

MAX_PATTERN = 10_000  # characters in one regular expression
MAX_PATTERNS_PER_CALL = 200  # compiled patterns cached per call
RE2_MAX_MEM = 8 << 20  # RE2's own per-pattern memory budget


class Facade:
    """Base for script-visible helper objects: no public state, a harmless repr."""

    __slots__ = ("_st",)
    PUBLIC: frozenset[str] = frozenset()
    NAME = "helper"

    def __init__(self, st: RunState) -> None:
        self._st = st

    def script_repr(self) -> str:
        return f"<{self.NAME}>"

    __repr__ = script_repr


# -- json --------------------------------------------------------------------------------------


class JsonFacade(Facade):
    __slots__ = ()
    PUBLIC = frozenset({"loads", "dumps"})
    NAME = "json"

    def loads(self, s: Any) -> Any:
        st = self._st
        st.alive()
        if type(s) is not str and type(s) is not bytes:
            raise TypeError("json.loads() needs a str or bytes")
        st.charge(len(s) // 64 + 1)
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"invalid JSON: {scrub(str(e))}") from None

    def dumps(self, obj: Any, *, sort_keys: Any = False, indent: Any = None) -> str:
        st = self._st
        st.alive()
        try:
            plain = to_plain(obj, st, "json.dumps")
        except InvalidNumber as e:
            raise ValueError(str(e)) from None
        except InvalidResult as e:
            raise TypeError(str(e)) from None
        option = orjson.OPT_SORT_KEYS if sort_keys else 0
        if indent is not None:
            if indent != 2:
                raise ValueError("json.dumps() supports indent=2 only")
            option |= orjson.OPT_INDENT_2
        try:
            out = orjson.dumps(plain, option=option)
        except orjson.JSONEncodeError as e:
            raise ValueError(f"cannot encode as JSON: {scrub(str(e))}") from None
        st.check_str(len(out))
        return out.decode("utf-8")


# -- re (google-re2: linear time, no backtracking) -----------------------------------------


class Match(Facade):
    __slots__ = ("_m",)
    PUBLIC = frozenset({"group", "groups", "groupdict", "start", "end", "span", "string"})
    NAME = "re.Match"

    def __init__(self, st: RunState, m: Any) -> None:
        super().__init__(st)
        self._m = m

    def group(self, *ids: Any) -> Any:
        return self._m.group(*ids)

    def __getitem__(self, g: Any) -> Any:
        return self._m.group(g)

    def groups(self, default: Any = None) -> tuple[Any, ...]:
        return self._m.groups(default)

    def groupdict(self, default: Any = None) -> dict[str, Any]:
        return self._m.groupdict(default)

    def start(self, g: Any = 0) -> int:
        return self._m.start(g)

    def end(self, g: Any = 0) -> int:
        return self._m.end(g)

    def span(self, g: Any = 0) -> tuple[int, int]:
        return self._m.span(g)

    @property
    def string(self) -> str:
        return self._m.string


def _make_options() -> Any:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    return options


_RE2_OPTIONS = _make_options()
_RE2_OPTION_VALUES = tuple(getattr(_RE2_OPTIONS, name) for name in re2.Options.NAMES)
_UNANCHORED = re2._Anchor.UNANCHORED
_NULL_SPAN = (-1, -1)


def _compile_re2(pattern: str) -> Any:
    # re2 keeps an LRU of compiled, immutable programs keyed by (pattern, options); calling
    # its factory with precomputed option values skips rebuilding the options every time.
    return re2._Regexp._make(pattern, _RE2_OPTION_VALUES)


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid unicode (lone surrogate)") from None


def _spans(rx: Any, data: bytes, limit: int = 0) -> Any:
    """Byte spans of successive matches, with Python's rules for empty matches (an empty
    match may follow a non-empty one at the same place, never another empty one). Works on
    UTF-8 bytes: ~10x faster than re2's wrapper, which builds a Match object per match."""
    match = rx._regexp.Match
    pos, end, n = 0, len(data), 0
    must_advance = False
    while True:
        spans = match(_UNANCHORED, data, pos, end)
        if spans[0] == _NULL_SPAN:
            return
        start, stop = spans[0]
        if must_advance and start == stop == pos:
            if pos >= end:
                return
            pos += 1  # retry one UTF-8 character further on
            while pos < end and data[pos] & 0xC0 == 0x80:
                pos += 1
            must_advance = False
            continue
        yield spans
        n += 1
        if n == limit:
            return
        must_advance = start == stop
        pos = stop


# Python's \w and \d are Unicode-aware; RE2's are ASCII-only. Chat text is mostly not
# ASCII, so the shorthand classes are translated to their Unicode property equivalents.
_UNICODE_ESCAPES_OUTSIDE = {"w": r"[\p{L}\p{N}_]", "W": r"[^\p{L}\p{N}_]", "d": r"\p{Nd}", "D": r"\P{Nd}"}
_UNICODE_ESCAPES_INSIDE = {"w": r"\p{L}\p{N}_", "d": r"\p{Nd}", "D": r"\P{Nd}"}


def unicode_classes(pattern: str) -> str:
    """Rewrite \\w \\W \\d \\D outside and inside character classes (\\W inside a class stays)."""
    if "\\" not in pattern:
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "Q":  # \Q...\E is literal text
                stop = pattern.find("\\E", i + 2)
                stop = n if stop < 0 else stop + 2
                out.append(pattern[i:stop])
                i = stop
                continue
            table = _UNICODE_ESCAPES_INSIDE if in_class else _UNICODE_ESCAPES_OUTSIDE
            out.append(table.get(nxt, c + nxt))
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):  # [[:alpha:]]
                stop = pattern.find(":]", i + 2)
                stop = n if stop < 0 else stop + 2
                out.append(pattern[i:stop])
                i = stop
                continue
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a leading ] is a literal
                out.append("]")
                i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _warm_up() -> None:
    """Touch every library path a helper can take, so nothing is loaded lazily after a
    worker has confined itself (chroot, seccomp)."""
    hashlib.sha256(b"x").hexdigest()
    hashlib.sha1(b"x", usedforsecurity=False).hexdigest()
    hashlib.md5(b"x", usedforsecurity=False).hexdigest()
    hmac.new(b"k", b"m", "sha256").hexdigest()
    rx = _compile_re2(unicode_classes(r"(\w+)\d"))
    list(_spans(rx, "é a1".encode()))
    _class_run(r"\w+", 0).findall("é a1")  # type: ignore[union-attr]
    for m in rx.finditer("a1"):
        m.expand(r"\1")
    orjson.loads(orjson.dumps({"a": [1.5, None]}, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
    time.time()


# A pattern that is one character class repeated (\w+, \d+, [a-z0-9_]+): findall is a single
# left-to-right scan in Python's own engine too (a run is taken whole, a failed position
# costs one test: nothing to backtrack into), which returns the list in one C call instead
# of one re2 Match call per match (a 300-word message: ~30 us instead of ~600 us). The
# classes are the ones both engines read alike: \w and \d are Unicode in Python's engine and
# translated to \p{L}\p{N}_ and \p{Nd} for re2 (unicode_classes); a bracket holds ASCII
# letters, digits, "_" and ranges only. Any other pattern goes through re2.
_CLASS_RUN = re.compile(r"(?:\\[wd]|\[(?:[A-Za-z0-9]-[A-Za-z0-9]|[A-Za-z0-9_])+\])\+", re.ASCII)


def _class_run(pattern: str, flags: int) -> re.Pattern[str] | None:
    """Python's compiled pattern for a one-class run without flags (see _CLASS_RUN), else None."""
    if flags or not _CLASS_RUN.fullmatch(pattern):
        return None
    return re.compile(pattern)


# RE2 runs in time linear in the text, but the factor is the size of the compiled program
# when its DFA gives up (state cache full) and it falls back to the NFA: measured here,
# (?:a?){1000}a{1000}b over 1 MB of "a" (3004 instructions) took 27 s in one search,
# ~9-28 ns per character x instruction. A search is charged len(text) x program size / this
# (a step of the budget is ~200 ns), so no single call can run far past the budget.
RE_WORK_PER_STEP = 8


def _text(st: RunState, s: Any, *bounds: Any, program: int = 1) -> str:
    if type(s) is not str:
        raise TypeError("regular expressions work on str only")
    for b in bounds:
        if b is not None and type(b) not in INTLIKE:
            raise TypeError("pos and endpos must be ints")
    st.charge(len(s) // 64 + len(s) * program // RE_WORK_PER_STEP + 1)  # before the scan runs
    return s


class Pattern(Facade):
    __slots__ = ("_pattern", "_program", "_run", "_rx")
    PUBLIC = frozenset({"search", "match", "fullmatch", "findall", "sub", "split", "pattern", "groups"})
    NAME = "re.Pattern"

    def __init__(self, st: RunState, rx: Any, pattern: str, run: re.Pattern[str] | None = None) -> None:
        super().__init__(st)
        self._rx = rx
        self._pattern = pattern
        self._program = rx._regexp.ProgramSize()  # see RE_WORK_PER_STEP
        self._run = run  # findall's fast path (_CLASS_RUN)

    def script_repr(self) -> str:
        return f"re.compile({self._pattern[:200]!r})"

    __repr__ = script_repr

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def groups(self) -> int:
        return self._rx.groups

    def _wrap(self, m: Any) -> Match | None:
        return None if m is None else Match(self._st, m)

    def search(self, string: Any, pos: Any = 0, endpos: Any = None) -> Match | None:
        text = _text(self._st, string, pos, endpos, program=self._program)
        return self._wrap(self._rx.search(text, pos, endpos))

    def match(self, string: Any, pos: Any = 0, endpos: Any = None) -> Match | None:
        text = _text(self._st, string, pos, endpos, program=self._program)
        return self._wrap(self._rx.match(text, pos, endpos))

    def fullmatch(self, string: Any, pos: Any = 0, endpos: Any = None) -> Match | None:
        text = _text(self._st, string, pos, endpos, program=self._program)
        return self._wrap(self._rx.fullmatch(text, pos, endpos))

    def findall(self, string: Any) -> list[Any]:
        st = self._st
        run = self._run
        if run is not None:
            text = _text(st, string, program=self._program)
            _encode(text)  # refuses a lone surrogate, as the re2 path does
            found = run.findall(text)
            st.charge(len(found))  # as the loop below: a step per match
            if len(found) > st.budgets.max_items:
                st.check_items(len(found))
            return found
        data = _encode(_text(st, string, program=self._program))
        ngroups = self._rx.groups
        cap = st.budgets.max_items
        out: list[Any] = []
        for spans in _spans(self._rx, data):
            st.step()
            if ngroups == 0:
                a, b = spans[0]
                out.append(data[a:b].decode("utf-8"))
            else:
                groups = tuple("" if a < 0 else data[a:b].decode("utf-8") for a, b in spans[1:])
                out.append(groups[0] if ngroups == 1 else groups)
            if len(out) > cap:
                st.check_items(len(out))
        return out

    def sub(self, repl: Any, string: Any, count: Any = 0) -> str:
        st = self._st
        if type(repl) is not str:
            raise TypeError("re.sub() replacement must be a str (functions are not supported)")
        if type(count) not in INTLIKE:
            raise TypeError("count must be an int")
        text = _text(st, string, program=self._program)
        if count < 0:
            return text
        if "\\" in repl:
            return self._sub_template(repl, text, count)
        limit = st.budgets.max_str
        data = _encode(text)
        rep = _encode(repl)
        parts: list[bytes] = []
        last = 0
        for n, spans in enumerate(_spans(self._rx, data, count), 1):
            st.step()
            if len(text) + n * len(repl) > limit:  # an upper bound on the result, in characters
                st.check_str(len(text) + n * len(repl))
            a, b = spans[0]
            parts.append(data[last:a])
            parts.append(rep)
            last = b
        parts.append(data[last:])
        out = b"".join(parts).decode("utf-8")
        st.check_str(len(out))
        return out

    def _sub_template(self, repl: str, text: str, count: int) -> str:
        # Backreferences: expand through re2's Match objects (slower, rare).
        st = self._st
        limit = st.budgets.max_str
        refs = repl.count("\\")
        parts: list[str] = []
        size = 0
        last = 0
        for n, m in enumerate(self._rx.finditer(text)):
            if count > 0 and n >= count:
                break
            st.step()
            start, end = m.span()
            # Bound the expansion before building it: each backreference copies a match.
            bound = size + (start - last) + len(repl) + refs * (end - start)
            if bound > limit:
                st.check_str(bound)
            try:
                piece = m.expand(repl)
            except Exception as e:  # bad group reference in the template
                raise ValueError(f"invalid replacement: {scrub(str(e))}") from None
            parts.append(text[last:start])
            parts.append(piece)
            size += (start - last) + len(piece)
            last = end
        parts.append(text[last:])
        out = "".join(parts)
        st.check_str(len(out))
        return out

    def split(self, string: Any, maxsplit: Any = 0) -> list[Any]:
        st = self._st
        if type(maxsplit) not in INTLIKE:
            raise TypeError("maxsplit must be an int")
        text = _text(st, string, program=self._program)
        if maxsplit < 0:
            return [text]
        data = _encode(text)
        cap = st.budgets.max_items
        out: list[Any] = []
        last = 0
        for spans in _spans(self._rx, data, maxsplit):
            st.step()
            a, b = spans[0]
            out.append(data[last:a].decode("utf-8"))
            out.extend(None if x < 0 else data[x:y].decode("utf-8") for x, y in spans[1:])
            last = b
            if len(out) > cap:
                st.check_items(len(out))
        out.append(data[last:].decode("utf-8"))
        return out


class ReFacade(Facade):
    __slots__ = ()
    PUBLIC = frozenset(
        {"compile", "search", "match", "fullmatch", "findall", "sub", "split", "escape",
         "I", "IGNORECASE", "M", "MULTILINE", "S", "DOTALL"}
    )  # fmt: skip
    NAME = "re"
    I = IGNORECASE = 2  # noqa: E741 - the same names and values as Python's re module
    M = MULTILINE = 8
    S = DOTALL = 16
    _FLAG_LETTERS = ((2, "i"), (8, "m"), (16, "s"))

    def compile(self, pattern: Any, flags: Any = 0) -> Pattern:
        st = self._st
        st.alive()
        if type(pattern) is Pattern and not flags:
            return pattern
        if type(pattern) is not str:
            raise TypeError("pattern must be a str")
        if type(flags) not in INTLIKE or flags & ~(2 | 8 | 16):
            raise ValueError("flags must be a combination of re.I, re.M and re.S")
        key = (pattern, flags)
        cache = st.re_cache
        if cache is None:
            cache = st.re_cache = {}  # per call: RunState.end() drops it
        cached = cache.get(key)
        if cached is not None:
            return cached
        if len(pattern) > MAX_PATTERN:
            raise ValueError(f"pattern longer than {MAX_PATTERN} characters")
        if len(cache) >= MAX_PATTERNS_PER_CALL:
            st.exceeded("patterns", MAX_PATTERNS_PER_CALL, "distinct regular expressions in one call")
        st.charge(len(pattern) + 100)
        letters = "".join(letter for bit, letter in self._FLAG_LETTERS if flags & bit)
        try:
            translated = unicode_classes(pattern)
            rx = _compile_re2(f"(?{letters}){translated}" if letters else translated)
        except re2.error as e:
            detail = e.args[0].decode("utf-8", "replace") if e.args and type(e.args[0]) is bytes else str(e)
            raise ValueError(f"invalid regular expression: {scrub(detail)}") from None
        compiled = Pattern(st, rx, pattern, _class_run(pattern, flags))
        cache[key] = compiled
        return compiled

    def search(self, pattern: Any, string: Any, flags: Any = 0) -> Match | None:
        return self.compile(pattern, flags).search(string)

    def match(self, pattern: Any, string: Any, flags: Any = 0) -> Match | None:
        return self.compile(pattern, flags).match(string)

    def fullmatch(self, pattern: Any, string: Any, flags: Any = 0) -> Match | None:
        return self.compile(pattern, flags).fullmatch(string)

    def findall(self, pattern: Any, string: Any, flags: Any = 0) -> list[Any]:
        return self.compile(pattern, flags).findall(string)

    def sub(self, pattern: Any, repl: Any, string: Any, count: Any = 0, flags: Any = 0) -> str:
        return self.compile(pattern, flags).sub(repl, string, count)

    def split(self, pattern: Any, string: Any, maxsplit: Any = 0, flags: Any = 0) -> list[Any]:
        return self.compile(pattern, flags).split(string, maxsplit)

    def escape(self, s: Any) -> str:
        if type(s) is not str:
            raise TypeError("re.escape() needs a str")
        self._st.check_str(len(s) * 2)
        return re2.escape(s)


# -- time, hashing -------------------------------------------------------------------------------


class TimeFacade(Facade):
    __slots__ = ()
    PUBLIC = frozenset({"time"})
    NAME = "time"

    def time(self) -> float:
        self._st.alive()
        return time.time()


def _as_bytes(st: RunState, data: Any, what: str) -> bytes:
    if type(data) is str:
        raw = data.encode("utf-8", "surrogatepass")
    elif type(data) is bytes:
        raw = data
    else:
        raise TypeError(f"{what} needs a str or bytes")
    st.charge(len(raw) // 256 + 1)
    return raw


# -- results: allow / deny ------------------------------------------------------------------------


class Verdict:
    """What allow()/deny() return. Opaque to the script; checked when handle() returns."""

    __slots__ = ("fields", "kind")
    PUBLIC: frozenset[str] = frozenset()

    def __init__(self, kind: str, fields: Any) -> None:
        self.kind = kind
        self.fields = fields

    def script_repr(self) -> str:
        return f"<{self.kind}>"

    __repr__ = script_repr


_new_verdict = object.__new__


class PrintCollector:
    """What ``print`` is rewritten to use: one log line per call, no ``file=``."""

    __slots__ = ("_st",)

    def __init__(self, st: RunState) -> None:
        self._st = st

    def _call_print(self, *objects: Any, sep: Any = " ", end: Any = "\n", file: Any = None, flush: Any = False) -> None:
        if file is not None:
            self._st.refuse("print(file=...) is not available; output goes to the script log")
        if sep is not None and type(sep) is not str:
            raise TypeError("sep must be None or a string")
        if end is not None and type(end) is not str:
            raise TypeError("end must be None or a string")
        text = log_line(self._st, objects, " " if sep is None else sep)
        end = "\n" if end is None else end
        self._st.add_log(text + (end[:-1] if end.endswith("\n") else end))

    def script_repr(self) -> str:
        return "<print>"


def log_line(st: RunState, objects: tuple[Any, ...], sep: str) -> str:
    room = st.budgets.log_bytes - st.log_bytes
    parts: list[str] = []
    size = 0
    try:
        for obj in objects:
            text = safe_str(obj, st, room - size + 1)
            size += len(text) + len(sep)
            if size > room + len(sep):
                raise TooLong
            parts.append(text)
    except TooLong:
        st.exceeded("log_bytes", st.budgets.log_bytes)
    return sep.join(parts)


def make_helpers(st: RunState) -> dict[str, Any]:
    """The helper globals, bound to ``st`` (built once per process; ``st`` is reset per call)."""

    def log(*objects: Any, sep: Any = " ") -> None:
        if type(sep) is not str:
            raise TypeError("sep must be a string")
        st.add_log(log_line(st, objects, sep))

    def now() -> int:
        st.alive()
        return int(time.time())

    def sha256(data: Any) -> str:
        return hashlib.sha256(_as_bytes(st, data, "sha256()")).hexdigest()

    def sha1(data: Any) -> str:
        return hashlib.sha1(_as_bytes(st, data, "sha1()"), usedforsecurity=False).hexdigest()

    def md5(data: Any) -> str:
        return hashlib.md5(_as_bytes(st, data, "md5()"), usedforsecurity=False).hexdigest()

    def hmac_sha256(key: Any, msg: Any) -> str:
        return hmac.new(_as_bytes(st, key, "hmac_sha256()"), _as_bytes(st, msg, "hmac_sha256()"), "sha256").hexdigest()

    def allow(*args: Any, **fields: Any) -> Verdict:
        if args:
            if len(args) != 1 or fields or type(args[0]) is not dict:
                raise TypeError("allow() takes field=value keywords, or one dict of fields")
            fields = args[0]
        # Verdict("allow", fields) without a Python __init__ call (this is on every call's path)
        verdict = _new_verdict(Verdict)
        verdict.kind = "allow"
        verdict.fields = fields
        return verdict

    def deny(errCode: Any, errMsg: Any = "", errDlt: Any = "") -> Verdict:
        verdict = _new_verdict(Verdict)
        verdict.kind = "deny"
        verdict.fields = (errCode, errMsg, errDlt)
        return verdict

    return {
        "json": JsonFacade(st),
        "re": ReFacade(st),
        "time": TimeFacade(st),
        "log": log,
        "now": now,
        "sha256": sha256,
        "sha1": sha1,
        "md5": md5,
        "hmac_sha256": hmac_sha256,
        "allow": allow,
        "deny": deny,
    }


FACADE_CLASSES: list[type] = [JsonFacade, ReFacade, TimeFacade, Pattern, Match, Verdict]
SUBSCRIPTABLE_FACADES: list[type] = [Match]

_warm_up()
