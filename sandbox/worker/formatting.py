"""Text formatting a script can ask for, sized before anything is built.

Three entry points, all bounded by ``max_str`` *before* CPython allocates the result:

- ``percent_format``: ``fmt % args``. The format is parsed here with CPython's own
  grammar (``unicode_format_arg_parse`` in Objects/unicodeobject.c: balanced parentheses
  in mapping keys, one ``h``/``l``/``L`` modifier, ``*`` taking the next argument, a
  mapping key replacing the argument source), and the arguments are consumed the way
  CPython consumes them, so the size bound is computed for the conversions CPython will
  actually run. Anything this parser does not accept is refused with CPython's message
  before CPython sees it, so the two can never disagree about what gets built.
- ``format_field``: one f-string field or ``str.format`` field (``!r``/``!a``/``!s``, the
  format spec): widths and precisions checked, ``repr``/``ascii`` lengths computed before
  building them (``ascii`` can be 10x the text: ``\\U0001f600``).
- ``str_format``: ``str.format`` / ``format_map`` with plain field names only: automatic
  (``{}``), positional (``{0}``) or keyword (``{name}``). Attribute and index lookups
  (``{0.x}``, ``{0[k]}``) are refused: CPython would do them in C, past every guard.
"""

from __future__ import annotations

import _string
from typing import Any

from sandbox.worker.budget import RunState
from sandbox.worker.convert import SafeText, TooLong, ascii_length, repr_length, sanitize_format_arg

INTLIKE = (int, bool)
_FLAGS = frozenset("-+ #0")
_DIGITS = frozenset("0123456789")
_CONVERSIONS = frozenset("sradiuoxXeEfFgGc")
MAX_SPEC_NUMBER = 18  # digits: CPython's own limit is PY_SSIZE_T_MAX ("width too big")
FLOAT_DIGITS = 330  # %f of 1.8e308 has 309 digits before the point; sign, point, exponent
_CHUNK = 1 << 16

# A parsed %-format: the literal characters it holds, and per conversion
# (key or None, width: int | "*" | None, precision: int | "*" | None, conversion char).
Spec = tuple[str | None, int | str | None, int | str | None, str]


def parse_percent(fmt: str) -> tuple[int, list[Spec]]:
    """(literal character count, conversions) of a %-format, or ValueError as CPython."""
    specs: list[Spec] = []
    literal = 0
    n = len(fmt)
    i = 0
    while True:
        j = fmt.find("%", i)
        if j < 0:
            return literal + n - i, specs
        literal += j - i
        i = j + 1
        if i >= n:
            raise ValueError("incomplete format")
        c = fmt[i]
        if c == "%":  # only directly after '%'; '%5%' is an unsupported character
            literal += 1
            i += 1
        elif c in _CONVERSIONS:  # '%s', '%d': the common case, nothing more to parse
            specs.append((None, None, None, c))
            i += 1
        else:
            spec, i = _conversion_spec(fmt, i)
            specs.append(spec)


def _conversion_spec(fmt: str, i: int) -> tuple[Spec, int]:
    """The conversion that starts at ``fmt[i]`` (just after its '%'), and where it ends:
    ``(key)``, flags, width, ``.precision``, a length modifier, the conversion character."""
    n = len(fmt)
    key = None
    if fmt[i] == "(":
        key, i = _mapping_key(fmt, i + 1)
    while i < n and fmt[i] in _FLAGS:
        i += 1
    # '*' is checked here, not in a helper: one call less per conversion
    width: int | str | None
    if i < n and fmt[i] == "*":
        width, i = "*", i + 1
    else:
        width, i = _number(fmt, i, "width")
    prec: int | str | None = None
    if i < n and fmt[i] == ".":
        i += 1
        if i < n and fmt[i] == "*":
            prec, i = "*", i + 1
        else:
            prec, i = _number(fmt, i, "precision")
            prec = prec or 0  # '%.f' is precision 0
    if i < n and fmt[i] in "hlL":
        i += 1
    if i >= n:
        raise ValueError("incomplete format")
    conv = fmt[i]
    if conv not in _CONVERSIONS:
        raise ValueError(f"unsupported format character {conv!r} (0x{ord(conv):x}) at index {i}")
    return (key, width, prec, conv), i + 1


def _mapping_key(fmt: str, i: int) -> tuple[str, int]:
    """The key of ``%(key)s`` from ``fmt[i]`` (after the '('), parentheses balanced as in CPython."""
    n = len(fmt)
    start = i
    depth = 1
    while depth and i < n:
        c = fmt[i]
        if c == ")":
            depth -= 1
        elif c == "(":
            depth += 1
        i += 1
    if depth:
        raise ValueError("incomplete format key")
    return fmt[start : i - 1], i


def _number(fmt: str, i: int, what: str) -> tuple[int | None, int]:
    start = i
    n = len(fmt)
    while i < n and fmt[i] in _DIGITS:
        i += 1
    if i == start:
        return None, i
    if i - start > MAX_SPEC_NUMBER:
        raise ValueError(f"{what} too big")
    return int(fmt[start:i]), i


def _int_digits(v: Any, base_bits: float) -> int:
    """Most characters an int (or float truncated to an int) takes in a base."""
    if type(v) is float:
        return int(1025 / base_bits) + 2 if v == v else 4  # |float| < 2**1024; nan/inf
    if type(v) in INTLIKE:
        return int(v.bit_length() / base_bits) + 2
    return 0  # not a number: CPython raises TypeError before writing anything


_LOG2_10 = 3.3219280948873626


def conversion_size(v: Any, conv: str, prec: int | None, limit: int) -> int:
    """Most characters CPython writes for one %-conversion of a sanitized value (no width).

    ``limit`` only lets the repr/ascii length count stop early (a result past it is
    refused anyway)."""
    t = type(v)
    if conv in "sra":
        if t is str:
            size = len(v) if conv == "s" else repr_length(v, limit) if conv == "r" else ascii_length(v, limit, True)
        elif t is SafeText:
            size = len(v.text) if conv != "a" else ascii_length(v.text, limit, False)
        elif t in INTLIKE:
            size = _int_digits(v, _LOG2_10) if t is int else 5
        else:
            size = 32  # float repr (at most 24), None
        return size if prec is None else min(size, prec)
    if conv == "c":
        return 1
    if conv in "diu":
        return max(_int_digits(v, _LOG2_10), prec or 0) + 2
    if conv in "xX":
        return max(_int_digits(v, 4), prec or 0) + 4
    if conv == "o":
        return max(_int_digits(v, 3), prec or 0) + 4
    # e E f F g G: a float (ints are converted), the digits asked for plus the integer part
    return FLOAT_DIGITS + (6 if prec is None else prec)


def percent_bound(st: RunState, literal: int, specs: list[Spec], safe: Any, mapping: Any) -> int:
    """Most characters ``fmt % safe`` builds (``literal``/``specs`` from ``parse_percent``).
    Stops the script as soon as the running bound passes ``max_str``."""
    max_str = st.max_str
    # Consume the arguments as CPython does (unicode_format_getnextarg): a tuple one by
    # one; anything else once; a mapping key makes the looked-up value the only argument.
    if type(safe) is tuple:
        source: Any = safe
        count, index = len(safe), 0
    else:
        source, count, index = safe, -1, -2
    total = literal
    for key, width, prec, conv in specs:
        if key is not None:
            if mapping is None:
                raise TypeError("format requires a mapping")
            if key not in mapping:
                raise KeyError(key)
            source, count, index = mapping[key], -1, -2
        sizes = []
        for val in (width, prec):
            if val == "*":
                if index >= count:
                    raise TypeError("not enough arguments for format string")
                star = source[index] if count >= 0 else source
                index += 1
                if type(star) not in INTLIKE:
                    raise TypeError("* wants int")
                sizes.append(abs(star) if abs(star) <= max_str else max_str + 1)
            else:
                sizes.append(val)
        width_n, prec_n = sizes
        if index >= count:
            raise TypeError("not enough arguments for format string")
        value = source[index] if count >= 0 else source
        index += 1
        if width_n is not None and width_n > max_str:
            st.exceeded("max_str", max_str, f"format width {width_n}")
        if prec_n is not None and prec_n > max_str:
            st.exceeded("max_str", max_str, f"format precision {prec_n}")
        total += max(width_n or 0, conversion_size(value, conv, prec_n, max_str - total))
        if total > max_str:
            st.check_str(total)
    return total


def percent_args(st: RunState, specs: list[Spec], args: Any) -> tuple[Any, Any]:
    """The arguments CPython may stringify without leaking anything (``sanitize_format_arg``),
    and the mapping the keys are looked up in (None if the format has no keys)."""
    max_str = st.max_str
    targs = type(args)
    keyed = False
    unkeyed = False
    for spec in specs:
        if spec[0] is None:
            unkeyed = True
        else:
            keyed = True
    if keyed and unkeyed:
        # CPython would format the whole mapping for the un-keyed one ("%s %(a)s" % d):
        # a case no script needs, refused rather than sized.
        raise TypeError("a %-format cannot mix %(key) conversions with un-keyed ones")
    mapping: Any = None
    if targs is dict and keyed:
        st.charge(len(args))
        mapping = {k: sanitize_format_arg(v, st, max_str) for k, v in args.items()}
        safe: Any = mapping
    elif targs is tuple:
        st.charge(len(args))
        safe = tuple(sanitize_format_arg(a, st, max_str) for a in args)
    else:
        safe = sanitize_format_arg(args, st, max_str)
    return safe, mapping


def percent_format(st: RunState, fmt: str, args: Any) -> str:
    """``fmt % args`` with the result's size bounded by ``max_str`` before it is built."""
    cache = st.fmt_cache
    if cache is None:
        cache = st.fmt_cache = {}  # per call: RunState.end() drops it
    parsed = cache.get(fmt)
    if parsed is None:  # parsed once per format string and call (loops reuse it)
        parsed = parse_percent(fmt)
        st.charge(len(parsed[1]) + len(fmt) // 64)
        if len(cache) < 256:
            cache[fmt] = parsed
    literal, specs = parsed
    safe, mapping = percent_args(st, specs, args)
    percent_bound(st, literal, specs, safe, mapping)  # stops the script past max_str
    r = fmt % safe
    st.check_str(len(r))
    return r


# -- f-string and str.format fields ---------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def check_spec(st: RunState, spec: str) -> None:
    """Widths and precisions in a format spec (``>10``, ``.3f``, ``,``): each at most max_str."""
    max_str = st.max_str
    n = len(spec)
    i = 0
    while i < n:
        if spec[i] in _DIGITS:
            start = i
            while i < n and spec[i] in _DIGITS:
                i += 1
            if i - start > 9 or int(spec[start:i]) > max_str:
                st.exceeded("max_str", max_str, f"format width {spec[start:i][:12]}")
        i += 1


def format_field(st: RunState, value: Any, conversion: str | None, spec: str, text_of: Any) -> str:
    """One replacement field: ``{value!conversion:spec}``. Never calls a script object's
    ``__format__``/``__repr__``: non-scalar values are turned into safe text first."""
    if spec:
        check_spec(st, spec)
    if conversion == "r":
        value = text_of(st, value, as_repr=True)
    elif conversion == "a":
        text = text_of(st, value, as_repr=True)
        if not text.isascii():
            size = ascii_length(text, st.max_str, False)
            if size > st.max_str:
                st.exceeded("max_str", st.max_str, f"a string of at least {size} characters")
            text = text.encode("ascii", "backslashreplace").decode("ascii")
        value = text
    elif conversion == "s" or type(value) not in _SCALARS:
        value = text_of(st, value)
    elif conversion is not None:
        raise ValueError(f"Unknown conversion specifier {conversion}")
    if not spec and type(value) is str:
        return value
    r = format(value, spec)
    st.check_str(len(r))
    return r


def str_format(st: RunState, fmt: str, args: tuple[Any, ...], kwargs: Any, text_of: Any, positional: bool = True) -> str:
    """``fmt.format(*args, **kwargs)`` (or ``format_map`` with ``positional=False``)."""
    st.alive()
    f = _StrFormat(st, args, kwargs, text_of, positional)
    f.render(fmt, 0)
    return "".join(f.parts)


class _StrFormat:
    """One ``str.format`` call in progress: the text written so far (its size checked
    against ``max_str`` as it grows) and the next automatic field number."""

    __slots__ = ("args", "auto", "kwargs", "parts", "positional", "size", "st", "text_of")

    def __init__(self, st: RunState, args: tuple[Any, ...], kwargs: Any, text_of: Any, positional: bool) -> None:
        self.st = st
        self.args = args
        self.kwargs = kwargs
        self.text_of = text_of
        self.positional = positional
        self.parts: list[str] = []
        self.size = 0
        self.auto = 0  # next automatic index; -1 once a manual index was used

    def add(self, piece: str) -> None:
        self.size += len(piece)
        if self.size > self.st.max_str:
            self.st.check_str(self.size)
        self.parts.append(piece)

    def render(self, text: str, depth: int) -> None:
        """Write ``text`` formatted; ``depth`` counts the specs nested in specs (``{:{}}``)."""
        if depth > 2:
            raise ValueError("Max string recursion exceeded")
        pieces = list(_string.formatter_parser(text))
        self.st.charge(len(pieces))
        for literal, name, spec, conversion in pieces:
            if literal:
                self.add(literal)
            if name is None:
                continue
            value = self.lookup(name)
            if spec and "{" in spec:
                spec = self.nested_spec(spec, depth)
            self.add(format_field(self.st, value, conversion, spec, self.text_of))

    def nested_spec(self, spec: str, depth: int) -> str:
        """A spec with fields in it (``{0:>{1}}``), rendered like the text but not kept in it."""
        outer = len(self.parts)
        saved = self.size
        self.render(spec, depth + 1)
        spec = "".join(self.parts[outer:])
        del self.parts[outer:]
        self.size = saved
        return spec

    def lookup(self, name: str) -> Any:
        if "." in name or "[" in name:
            raise ValueError(
                f"format field {name[:40]!r}: attribute and index lookups are not supported in scripts "
                "(pass the value itself)"
            )
        if name == "":
            return self.positional_arg(self.next_auto())
        if name.isdigit() and name.isascii():
            return self.positional_arg(self.manual(name))
        if name not in self.kwargs:
            raise KeyError(name)
        return self.kwargs[name]

    def next_auto(self) -> int:
        """The index of an automatic field ``{}``."""
        if not self.positional:
            raise ValueError("Format string contains positional fields")
        if self.auto < 0:
            raise ValueError("cannot switch from manual field specification to automatic field numbering")
        index = self.auto
        self.auto += 1
        return index

    def manual(self, name: str) -> int:
        """The index of a numbered field ``{0}`` (``name`` is its ASCII digits)."""
        if not self.positional:
            raise ValueError("Format string contains positional fields")
        if self.auto > 0:
            raise ValueError("cannot switch from automatic field numbering to manual field specification")
        self.auto = -1
        return int(name) if len(name) < 10 else len(self.args)

    def positional_arg(self, index: int) -> Any:
        if index >= len(self.args):
            raise IndexError(f"Replacement index {index} out of range for positional args tuple")
        return self.args[index]


__all__ = ["TooLong", "format_field", "parse_percent", "percent_format", "str_format"]
