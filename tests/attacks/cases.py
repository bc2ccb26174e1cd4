"""The attack corpus: hostile scripts and the specific defence each one must meet.

Each ``Attack`` is either refused at upload (``refused=(line, fragment)``: an issue on that
line whose message contains the fragment) or stopped at run time (``kind`` and a message
fragment). ``H(body)`` wraps statements in ``def handle(req):`` so body line 1 is source
line 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def H(body: str, prelude: str = "") -> str:
    lines = body.strip("\n").splitlines()
    return prelude + "def handle(req):\n" + "".join(f"    {line}\n" for line in lines)


@dataclass(frozen=True)
class Attack:
    id: str
    source: str
    refused: tuple[int, str] | None = None
    kind: str | None = None
    fragment: str = ""
    budgets: dict[str, int] = field(default_factory=dict)
    kv_data: dict[str, Any] | None = None
    kv_down: bool = False


def refused(id: str, source: str, line: int, fragment: str) -> Attack:
    return Attack(id, source, refused=(line, fragment))


def fails(id: str, source: str, kind: str, fragment: str, **kw: Any) -> Attack:
    return Attack(id, source, kind=kind, fragment=fragment, **kw)


UNDERSCORE = 'starts with "_"'
NOT_AVAILABLE = "is not available in scripts"
STEPS = {"steps": 200_000, "wall_ms": 20_000}  # step limits are checked with a generous clock
ITEMS = {"max_items": 1000}
SLOW_OK = {"wall_ms": 20_000}  # correct either way; a shared CI machine may be slow
BLOCKED = "blocked by sandbox"

ESCAPES = [
    refused("subclasses-chain", H("return ().__class__.__bases__[0].__subclasses__()"), 2, UNDERSCORE),
    refused("req-class", H("x = req.__class__"), 2, UNDERSCORE),
    refused("mro", H("x = [].__class__.__mro__"), 2, UNDERSCORE),
    refused("func-globals", H("g = allow.__globals__"), 2, UNDERSCORE),
    refused("bound-self", H("port = kv.get.__self__"), 2, UNDERSCORE),
    refused("closure-cells", H("c = log.__closure__"), 2, UNDERSCORE),
    refused("kv-private-port", H("p = kv._port"), 2, UNDERSCORE),
    refused("kv-private-state", H("s = kv._st"), 2, UNDERSCORE),
    refused("facade-private", H("c = re._cache"), 2, UNDERSCORE),
    refused("builtins-name", H("b = __builtins__"), 2, UNDERSCORE),
    refused("dunder-import", H('os = __import__("os")'), 2, UNDERSCORE),
    refused("getattr-builtin", H('x = getattr(req, "__class__")'), 2, NOT_AVAILABLE),
    refused("getattr-alias", H("g = getattr"), 2, NOT_AVAILABLE),
    refused("type-builtin", H("t = type(req)"), 2, NOT_AVAILABLE),
    refused("object-builtin", H("o = object"), 2, NOT_AVAILABLE),
    refused("super-builtin", H("s = super()"), 2, NOT_AVAILABLE),
    refused("vars-builtin", H("v = vars(req)"), 2, NOT_AVAILABLE),
    refused("dir-builtin", H("d = dir(kv)"), 2, NOT_AVAILABLE),
    refused("globals-builtin", H('k = globals()["kv"]'), 2, NOT_AVAILABLE),
    refused("locals-builtin", H("l = locals()"), 2, NOT_AVAILABLE),
    refused("id-builtin", H("a = id(req)"), 2, NOT_AVAILABLE),
    refused("hash-builtin", H("h = hash(req)"), 2, NOT_AVAILABLE),
    refused("metaclass", H("class M(type):\n    pass"), 2, NOT_AVAILABLE),
    refused("metaclass-keyword", H("class M(metaclass=log):\n    pass"), 2, 'keyword argument "metaclass"'),
    refused("dunder-def", H("def __eq__(a, b):\n    return True"), 2, 'function name "__eq__"'),
    refused("mro-attr", H("m = str.mro()"), 2, '".mro" is not allowed'),
    refused("fullwidth-dunder", H("c = kv.__\uff43\uff4c\uff41\uff53\uff53__"), 2, UNDERSCORE),
    refused("fullwidth-import-fn", H("m = __\uff49\uff4d\uff50\uff4f\uff52\uff54__('os')"), 2, UNDERSCORE),
    refused("fullwidth-eval", H("x = \uff45\uff56\uff41\uff4c('1')"), 2, NOT_AVAILABLE),
    fails("kv-call-port", H('kv.call("flushall", [])'), "policy", "attribute 'call' of <kv>"),
    fails("kv-execute-command", H('kv.execute_command("FLUSHALL")'), "policy", "attribute 'execute_command'"),
    fails("kv-pipeline", H("p = kv.pipeline()"), "policy", "attribute 'pipeline'"),
    fails("kv-keys", H('k = kv.keys("*")'), "policy", "attribute 'keys' of <kv>"),
    fails("json-codecs", H("c = json.codecs"), "policy", "attribute 'codecs' of <json>"),
    fails("re-enum", H("e = re.enum"), "policy", "attribute 'enum' of <re>"),
    fails("time-sleep", H("time.sleep(100)"), "policy", "attribute 'sleep' of <time>"),
    fails("function-attr", H("g = allow.func_globals"), "policy", "attribute 'func_globals' of function"),
    fails("safetype-attr", H('m = str.maketrans("a", "b")'), "policy", "attribute 'maketrans' of <class 'str'>"),
    fails("str-translate", H('t = "abc".translate({97: "x" * 1000})'), "policy", "attribute 'translate' of str"),
    fails("dict-fromkeys", H("d = {}.fromkeys(range(10))"), "policy", "attribute 'fromkeys' of dict"),
    fails("int-class-attr", H('i = int.from_bytes(b"x", "big")'), "policy", "attribute 'from_bytes' of <class 'int'>"),
    fails("int-to-bytes", H('b = (1).to_bytes(10**9, "big")'), "policy", "attribute 'to_bytes' of int"),
    fails("match-re", H('m = re.search("a", "a")\nr = m.re'), "policy", "attribute 're' of <re.Match>"),
    fails("pattern-internal", H('p = re.compile("a")\nr = p.options'), "policy", "attribute 'options'"),
    fails("verdict-attr", H("v = allow()\nf = v.fields"), "policy", "attribute 'fields' of <allow>"),
    fails("print-object-attr", H("p = print\nx = p.im_self"), "policy", "attribute 'im_self'"),
    fails("none-attribute-is-plain-error", H("x = None\nx.get('a')"), "exception",
          "AttributeError: 'NoneType' object has no attribute 'get'"),
    fails("iterate-facade", H("for x in kv:\n    pass"), "policy", "cannot iterate over <kv>"),
    fails("unpack-facade", H("a, b = json"), "policy", "cannot iterate over <json>"),
    fails("index-facade", H("x = kv['k']"), "policy", "<kv> cannot be indexed"),
    fails("write-facade-attr", H("kv.get = log"), "policy", "<kv> cannot be modified"),
    fails("write-facade-attr-time", H("time.time = log"), "policy", "<time> cannot be modified"),
    fails("write-function-attr", H("log.x = 1"), "policy", "cannot be modified"),
    fails("write-str-item", H("s = 'abc'\ns[0] = 'x'"), "policy", "str cannot be modified"),
    fails("sys-by-name", H("m = sys.modules"), "exception", "NameError: name 'sys' is not defined"),
    fails("handle-replaced", "def handle(req):\n    return None\nhandle = allow\n", "policy",
          "'handle' must be the script's own function"),
]

FORMAT_STRINGS = [
    fails("str-format", H('s = "{0.__class__}".format(req)'), "exception", "attribute and index lookups are not"),
    fails("str-format-unbound", H('s = str.format("{0.__init__.__globals__}", log)'), "policy",
          "attribute 'format' of <class 'str'>"),
    fails("format-map", H('s = "{a.__class__}".format_map({"a": req})'), "exception", "attribute and index lookups"),
    fails("format-index", H('s = "{0[0]}".format([req])'), "exception", "attribute and index lookups"),
    fails("format-nested-attr", H('s = "{:{0.x}}".format(1)'), "exception", "attribute and index lookups"),
    fails("format-map-subclass", H('s = "{a}".format_map(kv)'), "exception", "format_map() needs a dict"),
    fails("format-width", H('s = "{:>999999999}".format(1)'), "budget", "max_str"),
    fails("format-nested-width", H('s = "{:>{}}".format(1, 10**9)'), "budget", "max_str"),
    fails("format-many-fields", H('s = "{0:>600000}{0:>600000}".format(1)'), "budget", "max_str"),
    fails("format-ascii-growth", H("s = '\\U0001f600' * 200000\nt = '{!a}'.format(s)"), "budget", "max_str"),
    fails("format-repr-host", H("s = '{!r}'.format(kv)\nreturn {'s': s + '0x7f'[:0] + 1}"), "exception",
          "TypeError"),
    refused("format-builtin", H('s = format(log, "")'), 2, NOT_AVAILABLE),
    fails("fstring-width", H("s = f'{0:>{10**9}}'"), "budget", "max_str"),
    fails("fstring-precision", H("s = f'{1.5:.999999999f}'"), "budget", "max_str"),
    fails("percent-star-width", H("s = '%*d' % (10**9, 1)"), "budget", "max_str"),
    fails("percent-precision", H("s = '%.1000000000f' % 1.0"), "budget", "max_str"),
    fails("percent-width-literal", H("s = '%999999999d' % 1"), "budget", "max_str"),
    fails("percent-dict-width", H("s = '%(a)999999999s' % {'a': 'x'}"), "budget", "max_str"),
    fails("bytes-percent", H("b = b'%s' % b'x'"), "exception", "bytes %-formatting is not supported"),
    # CPython's key grammar counts nested parentheses: the width hides inside what a naive
    # parser takes for the key.
    fails("percent-nested-key", H("s = '%(()s)999999999s' % {'()s': 1}"), "budget", "format width 999999999"),
    fails("percent-nested-key-repeat", H("x = 'y' * 400000\ns = '%((a))s%((a))s%((a))s' % {'(a)': x}"),
          "budget", "max_str"),
    fails("percent-mixed-dict", H("s = '%s%(a)s' % {'a': 1, 'b': 'x' * 999000}"), "exception",
          "cannot mix %(key) conversions with un-keyed ones"),
    fails("percent-star-precision", H("s = '%.*f' % (10**9, 1.0)"), "budget", "max_str"),
    fails("percent-star-negative", H("s = '%*s' % (-10**9, 'a')"), "budget", "max_str"),
    fails("percent-ascii-growth", H("s = '\\U0001f600' * 200000\nt = '%a' % (s,)"), "budget", "max_str"),
    fails("percent-repr-growth", H("s = '\\x00' * 300000\nt = '%r' % (s,)"), "budget", "max_str"),
    fails("percent-huge-width-digits", H("s = '%99999999999999999999d' % 1"), "exception", "width too big"),
    fails("percent-length-modifier", H("s = '%l999999999d' % 1"), "exception", "unsupported format character"),
    fails("fstring-ascii-growth", H("s = '\\U0001f600' * 200000\nt = f'{s!a}'"), "budget", "max_str"),
    fails("fstring-repr-growth", H("s = '\\x00' * 300000\nt = f'{s!r}'"), "budget", "max_str"),
]

INTEGERS = [
    fails("int-base2-huge", H("x = int('1' * 400000, 2)"), "budget", "max_int_bits"),
    fails("int-base16-huge", H("x = int('f' * 100000, 16)"), "budget", "max_int_bits"),
    fails("int-base0-prefix", H("x = int('0x' + 'f' * 100000, 0)"), "budget", "max_int_bits"),
    fails("int-bytes-base2", H("x = int(b'1' * 400000, 2)"), "budget", "max_int_bits"),
    fails("int-floordiv-grown", H("x = 1 << 99999\nfor i in range(50):\n    x = x - (-x)\ny = x // (x - 12345)"),
          "budget", "max_int_bits"),
    fails("int-mod-grown", H("x = 1 << 99999\nfor i in range(50):\n    x = x - (-x)\ny = x % (x - 12345)"),
          "budget", "max_int_bits"),
    fails("int-divmod-grown", H("x = 1 << 99999\nfor i in range(50):\n    x = x - (-x)\ny = divmod(x, x - 1)"),
          "budget", "max_int_bits"),
    fails("int-augmented-floordiv", H("x = 1 << 99999\nx = x - (-x)\nx //= (x - 7)"), "budget", "max_int_bits"),
    fails("int-class-base", H("class I(int):\n    pass"), "exception", "can only derive"),
    refused("pow-three-args", H("x = pow(7, 10**9, 10**9 + 7)"), 2, NOT_AVAILABLE),
]

CLASSES = [
    refused("class-getattribute", H("class X:\n    def __getattribute__(self, n):\n        return 1"), 3, UNDERSCORE),
    refused("class-init-subclass", H("class X:\n    def __init_subclass__(cls):\n        pass"), 3, UNDERSCORE),
    refused("class-del", H("class X:\n    def __del__(self):\n        pass"), 3, UNDERSCORE),
    refused("class-contains", H("class X:\n    def __contains__(self, x):\n        return True"), 3,
            "methods may be"),
    refused("class-slots", H("class X:\n    __slots__ = ()"), 3, UNDERSCORE),
    refused("class-body-loop", H("class X:\n    for i in range(3):\n        pass"), 3, "class body may only hold"),
    refused("class-decorator", H("@log\nclass X:\n    pass"), 3, "class decorators are not allowed"),
    refused("class-keyword", H("class X(foo=1):\n    pass"), 2, "class keywords are not allowed"),
    refused("class-mro", H("class X:\n    pass\nm = X.mro()"), 4, '".mro" is not allowed'),
    refused("class-dict", H("class X:\n    pass\nd = X().__dict__"), 4, UNDERSCORE),
    refused("class-object-base", H("class X(object):\n    pass"), 2, NOT_AVAILABLE),
    fails("class-str-base", H("class S(str):\n    pass"), "exception", "can only derive"),
    fails("class-dict-base", H("class D(dict):\n    pass"), "exception", "can only derive"),
    fails("class-instance-base", H("class X:\n    pass\nclass Y(X()):\n    pass"), "exception", "can only derive"),
    fails("class-facade-base", H("class X(kv):\n    pass"), "exception", "can only derive"),
    fails("class-shadow-args", H("class E(Exception):\n    def args(self):\n        return 1"), "exception",
          "would replace Exception.args"),
    fails("class-shadow-with-traceback", H("class E(ValueError):\n    with_traceback = 1"), "exception",
          "would replace"),
    fails("class-write-class", H("class X:\n    pass\nX.y = 1"), "policy", "<class 'X'> cannot be modified"),
    fails("class-inherited-object-attr", H("class X(Exception):\n    pass\nw = X().with_traceback"), "exception",
          "no attribute 'with_traceback'"),
    fails("class-type-attr", H("class X:\n    pass\nn = X.mro_entries"), "exception", "no attribute 'mro_entries'"),
    fails("class-recursive-method", H("class X:\n    def f(self):\n        return self.f()\nX().f()"), "budget",
          "recursion"),
    fails("class-eq-loop", H("class X:\n    def __eq__(self, o):\n        while True:\n            pass\nX() == 1"),
          "budget", "wall_ms", budgets={"steps": 10**9}),
    fails("class-result", H("class X:\n    pass\nreturn {'x': X()}"), "invalid_result", "not a JSON type"),
    fails("class-survives", H("class X:\n    pass\nreturn {'x': X}"), "invalid_result", "not a JSON type"),
    # Host code names objects in messages; a script method called script_repr is not asked.
    fails("class-repr-method", H("class X:\n    def script_repr(self):\n        while True:\n            pass\n"
                                  "for x in X():\n    pass"), "policy", "cannot iterate over X"),
]

# Keys sharing one hash (i * (2**61 - 1) all hash to 0): a set built key by key (each add is
# its own step), then one C call that compares every item of a big argument with all of them.
_COLLIDING = "M = 2**61 - 1\nbad = [i * M for i in range(1, 3000)]\ns = set()\nfor x in bad:\n    s.add(x)\n"
C_CALLS = [
    fails("collide-isdisjoint", H(_COLLIDING + "t = s.isdisjoint(bad * 100)"), "budget", "hash_collisions"),
    fails("collide-difference", H(_COLLIDING + "t = s.difference(bad * 100)"), "budget", "hash_collisions"),
    fails("collide-issubset", H(_COLLIDING + "t = s.issubset(bad * 100)"), "budget", "hash_collisions"),
    fails("collide-update-from-set", H(_COLLIDING + "t = {0}\nt.update(s)"), "budget", "hash_collisions"),
    fails("collide-intersection-update", H(_COLLIDING + "s.intersection_update(bad * 100)"), "budget",
          "hash_collisions"),
    fails("collide-set-of-dict", H(_COLLIDING + "d = {}\nfor x in bad:\n    d[x] = 1\nt = set(d)"), "budget",
          "hash_collisions"),
    fails("collide-dict-update", H(_COLLIDING + "d = {}\nfor x in bad:\n    d[x] = 1\ne = {0: 0}\ne.update(d)"),
          "budget", "hash_collisions"),
    fails("collide-union-operator", H(_COLLIDING + "t = s | {0}"), "budget", "hash_collisions"),
    fails("collide-difference-operator", H(_COLLIDING + "t = {0} - s"), "budget", "hash_collisions"),
    fails("collide-inplace-or", H(_COLLIDING + "t = {0}\nt |= s"), "budget", "hash_collisions"),
    fails("collide-keys-view", H(_COLLIDING + "d = {}\nfor x in bad:\n    d[x] = 1\nt = d.keys() & s"), "budget",
          "hash_collisions"),
    fails("sorted-key-str-huge", H("x = sorted(range(1000000), key=str)"), "budget", "steps"),
    fails("sorted-same-long-text", H("s = 'x' * 1000000\nx = sorted([s] * 100000)"), "budget", "steps"),
    fails("sort-same-long-text", H("s = 'x' * 1000000\nx = [s] * 100000\nx.sort()"), "budget", "steps"),
    fails("sorted-key-long-text", H("s = 'x' * 1000000\nx = sorted(range(100000), key=lambda i: s)"), "budget",
          "steps"),
    fails("max-same-long-text", H("s = 'x' * 1000000\nx = max([s] * 100000)"), "budget", "steps"),
    fails("min-key-long-text", H("s = 'x' * 1000000\nx = min(range(100000), key=lambda i: s)"), "budget",
          "steps"),
    fails("sum-big-ints", H("x = sum([1 << 99000] * 100000)"), "budget", "steps"),
    fails("regex-big-program", H("s = 'a' * 1000000\nm = re.search('(?:a?){1000}a{1000}b', s)"), "budget", "steps"),
    fails("regex-alternation-program", H("s = 'a' * 1000000\nm = re.search('|'.join(['a{1,900}x%d' % i for i in "
                                          "range(4)]), s)"), "budget", "steps"),
    fails("join-long-text-loop", H("x = ['y' * 1000] * 1000\nwhile True:\n    t = ''.join(x)"), "budget", "steps",
          budgets=SLOW_OK),
]

GENERATORS = [
    refused("generator-finally", H("def gen():\n    try:\n        yield 1\n    finally:\n        log('x')"), 3,
            "'finally' is not allowed in a generator function"),
    refused("generator-lambda", H("f = lambda: (yield 1)"), 2, "yield in a lambda"),
    refused("generator-gi-frame", H("def gen():\n    yield 1\nf = gen().gi_frame"), 4, "restricted name"),
    refused("generator-gi-code", H("def gen():\n    yield 1\nf = gen().gi_code"), 4, "restricted name"),
    fails("generator-send-fn", H("def gen():\n    yield 1\ngen().send(None)"), "policy", "attribute 'send'"),
    fails("generator-endless", H("def gen():\n    while True:\n        yield 1\nfor x in gen():\n    pass"),
          "budget", "steps", budgets=STEPS),
    fails("generator-endless-list", H("def gen():\n    while True:\n        yield 1\nx = list(gen())"),
          "budget", "max_items", budgets=ITEMS),
    fails("generator-yield-from-facade", H("def gen():\n    yield from kv\nx = list(gen())"), "policy",
          "cannot iterate"),
    fails("generator-yield-from-huge", H("def gen():\n    yield from range(10**9)\nx = list(gen())"), "budget",
          "max_items"),
    fails("generator-handle", "def handle(req):\n    yield 1\n", "invalid_result", "generator"),
    fails("generator-unpack-endless", H("def gen():\n    while True:\n        yield 1\na, b = gen()"),
          "exception", "too many values"),
]


FRAMES = [
    refused("traceback-attr", H("try:\n    1 / 0\nexcept Exception as e:\n    t = e.__traceback__"), 5, UNDERSCORE),
    refused("tb-frame-globals", H("x = req.tb_frame"), 2, "restricted name"),
    refused("frame-back", H("x = req.f_back"), 2, "restricted name"),
    refused("gi-frame", H("g = (x for x in [1])\nf = g.gi_frame"), 3, "restricted name"),
    refused("gi-code", H("g = (x for x in [1])\nc = g.gi_code"), 3, "restricted name"),
    refused("code-object", H("c = (lambda: 0).__code__"), 2, UNDERSCORE),
    refused("exc-context", H("try:\n    1 / 0\nexcept Exception as e:\n    c = e.__context__"), 5, UNDERSCORE),
    refused("async-def", H("async def f():\n    pass"), 2, "AsyncFunctionDef"),
    fails("generator-send", H("g = (x for x in [1, 2])\ng.send(None)"), "policy", "attribute 'send' of generator"),
    fails("generator-throw", H("g = (x for x in [1, 2])\ng.throw(ValueError)"), "policy", "attribute 'throw'"),
    fails("exception-with-traceback", H("try:\n    1 / 0\nexcept Exception as e:\n    e.with_traceback(None)"),
          "policy", "attribute 'with_traceback' of ZeroDivisionError"),
    fails("keyerror-obj", H("try:\n    {}[1]\nexcept KeyError as e:\n    o = e.obj"), "policy", "attribute 'obj'"),
]

IMPORTS = [
    refused("import-os", "import os\n" + H("return None"), 1, "imports are not allowed"),
    refused("from-import", "from os import system\n" + H("return None"), 1, "imports are not allowed"),
    refused("import-in-handler", H("import importlib"), 2, "imports are not allowed"),
    refused("import-alias-shadow", H("import json as _getattr_"), 2, "imports are not allowed"),
    refused("star-import", "from builtins import *\n" + H("return None"), 1, "imports are not allowed"),
    refused("exec-call", H('exec("import os")'), 2, NOT_AVAILABLE),
    refused("exec-alias", H("run = exec"), 2, NOT_AVAILABLE),
    refused("eval-alias", H("e = eval"), 2, NOT_AVAILABLE),
    refused("compile-call", H('c = compile("1", "", "exec")'), 2, NOT_AVAILABLE),
    refused("breakpoint", H("breakpoint()"), 2, NOT_AVAILABLE),
    refused("input", H("x = input()"), 2, NOT_AVAILABLE),
    refused("help", H("help()"), 2, NOT_AVAILABLE),
    refused("exit", H("exit(1)"), 2, NOT_AVAILABLE),
    refused("quit", H("quit()"), 2, NOT_AVAILABLE),
    refused("memoryview", H("m = memoryview(b'x')"), 2, NOT_AVAILABLE),
    refused("bytearray", H("b = bytearray(10**9)"), 2, NOT_AVAILABLE),
]

IO = [
    refused("open-file", H('return {"x": open("/etc/passwd").read()}'), 2, NOT_AVAILABLE),
    refused("socket", "import socket\n" + H("return None"), 1, "imports are not allowed"),
    refused("with-statement", H("with req as r:\n    pass"), 2, "with statements are not allowed"),
    fails("no-open-via-json", H('f = json.codecs.open("/etc/passwd")'), "policy", "attribute 'codecs'"),
]

CPU = [
    fails("while-true", H("while True:\n    pass"), "budget", "steps (limit 200000)", budgets=STEPS),
    fails("while-true-default-budgets", H("while True:\n    pass"), "budget", "budget exceeded: "),
    fails("while-true-swallow", H("while True:\n    try:\n        pass\n    except Exception:\n        pass"),
          "budget", "steps", budgets=STEPS),
    fails("wall-clock", H("while True:\n    x = 1"), "budget", "wall_ms (limit 50)", budgets={"wall_ms": 50}),
    fails("huge-for-range", H("for i in range(10**7):\n    pass"), "budget", "range of 10000000 items"),
    fails("in-huge-range", H("x = 'x' in range(10**18)"), "budget", "max_items"),
    fails("range-index-scan", H("x = range(10**18).index(5)"), "budget", "max_items"),
    fails("cubic-comprehension", H("r = range(1000)\nx = [0 for a in r for b in r for c in r]"), "budget", "steps",
          budgets=STEPS),
    fails("nested-loops", H("for a in range(10000):\n    for b in range(10000):\n        pass"), "budget", "steps",
          budgets=STEPS),
    fails("power-tower", H("x = 10**10**10"), "budget", "max_int_bits"),
    fails("power-2-64", H("x = 2 ** (2 ** 64)"), "budget", "max_int_bits"),
    fails("pow-repeat", H("x = 3\nwhile True:\n    x = x * x"), "budget", "max_int_bits"),
    fails("lshift-huge", H("x = 1 << 10**10"), "budget", "max_int_bits"),
    fails("lshift-aug", H("x = 1\nx <<= 10**9"), "budget", "max_int_bits"),
    fails("pow-aug", H("x = 7\nx **= 10**9"), "budget", "max_int_bits"),
    fails("int-from-huge-str", H("x = int('9' * 5000)"), "exception", "ValueError: Exceeds the limit"),
    refused("pow-builtin", H("x = pow(2, 10**9)"), 2, NOT_AVAILABLE),
    fails("regex-backref", H(r"p = re.compile(r'(a)\1')"), "exception", "ValueError: invalid regular expression"),
    fails("regex-lookahead", H("p = re.compile('(?=a)b')"), "exception", "invalid regular expression"),
    fails("regex-huge-pattern", H("p = re.compile('a' * 20000)"), "exception", "pattern longer than 10000"),
    fails("regex-sub-backref-bomb", H("s = re.sub('(a+)', r'\\1' * 1000, 'a' * 100000)"), "budget", "max_str"),
    fails("regex-many-patterns", H("for i in range(300):\n    re.compile('a' + str(i))"), "budget", "patterns"),
    fails("sort-key-calls", H("x = sorted(range(100000), key=lambda v: -v)"), "budget", "steps (limit 150000)",
          budgets={"steps": 150_000}),
]

MEMORY = [
    fails("str-mul", H("s = 'a' * 10**10"), "budget", "max_str (limit 1000000): a string of 10000000000"),
    fails("str-mul-reversed", H("s = 10**10 * 'a'"), "budget", "max_str"),
    fails("list-mul", H("l = [0] * 10**9"), "budget", "max_items"),
    fails("tuple-mul", H("t = (0,) * 10**9"), "budget", "max_items"),
    fails("bytes-mul", H("b = b'x' * 10**10"), "budget", "max_bytes"),
    fails("str-doubling", H("s = 'ab'\nwhile True:\n    s = s + s"), "budget", "max_str"),
    fails("str-aug-doubling", H("s = 'ab'\nwhile True:\n    s += s"), "budget", "max_str"),
    fails("list-aug-doubling", H("l = [1]\nwhile True:\n    l += l"), "budget", "max_items"),
    fails("list-concat-doubling", H("l = [1]\nwhile True:\n    l = l + l"), "budget", "max_items"),
    fails("list-extend-doubling", H("l = [1]\nwhile True:\n    l.extend(l)"), "budget", "max_items"),
    fails("list-imul", H("l = [1, 2]\nl *= 10**9"), "budget", "max_items"),
    fails("ljust", H("s = 'x'.ljust(10**9)"), "budget", "max_str"),
    fails("rjust", H("s = 'x'.rjust(10**9, '-')"), "budget", "max_str"),
    fails("center", H("s = 'x'.center(10**9)"), "budget", "max_str"),
    fails("zfill", H("s = '1'.zfill(10**9)"), "budget", "max_str"),
    fails("expandtabs", H("s = ('\\t' * 1000).expandtabs(10**6)"), "budget", "max_str"),
    fails("replace-growth", H("s = ('a' * 10**4).replace('a', 'b' * 10**5)"), "budget", "max_str"),
    fails("join-growth", H("s = ','.join(['a' * 1000] * 10000)"), "budget", "max_str"),
    fails("upper-growth", H("s = ('\u00df' * 600000).upper()"), "budget", "max_str"),
    fails("set-union-doubling", H("s = set(range(1000))\nt = s.union(set(range(1000, 2000)))"),
          "budget", "max_items (limit 1000)", budgets=ITEMS),
    fails("unpack-huge-range", H("a, b = range(10**9)"), "budget", "max_items"),
    fails("starred-unpack-huge", H("a, *b = range(10**8)"), "budget", "max_items"),
    fails("list-of-generator", H("x = list(i for r in range(3) for i in range(1000000))"), "budget", "max_items",
          budgets=SLOW_OK),
    fails("comprehension-items", H("r = range(1000)\nx = [0 for a in r for b in range(2)]"), "budget",
          "max_items (limit 1000)", budgets=ITEMS),
    fails("json-deep-nesting", H("x = json.loads('[' * 100000 + ']' * 100000)"), "exception", "invalid JSON"),
    fails("dict-update-growth", H("d = {}\nd.update(zip(range(1000), range(1000)))\nd.update(enumerate(range(600)))"),
          "budget", "max_items (limit 1000)", budgets=ITEMS),
    fails("dict-ctor-growth", H("d = dict(zip(range(2000), range(2000)))"), "budget", "max_items", budgets=ITEMS),
    fails("sum-list-concat", H("x = sum([[1] * 1000] * 1000, [])"), "exception", "sum() start must be a number"),
    fails("deep-tuple-hash", H("t = ()\nfor i in range(1000000):\n    t = (t,)\nx = {t}"), "budget",
          "nesting (limit 100)"),
    fails("deep-tuple-varargs", H("def f(*a):\n    return a\nt = ()\nfor i in range(1000):\n    t = f(t)"),
          "budget", "nesting"),
    fails("deep-tuple-items", H("t = ()\nfor i in range(1000):\n    for item in {0: t}.items():\n        t = item"),
          "budget", "nesting"),
    fails("deep-tuple-zip", H("t = ()\nfor i in range(1000):\n    t = zip([t])[0]"), "budget", "nesting"),
    fails("deep-tuple-ctor", H("t = ()\nfor i in range(1000):\n    t = tuple([t])"), "budget", "nesting"),
    fails("hash-collision-set", H("x = set([i * (2**61 - 1) for i in range(40000)])"), "budget", "hash_collisions"),
    fails("hash-collision-dict", H("d = dict([(i * (2**61 - 1), 0) for i in range(40000)])"), "budget",
          "hash_collisions"),
    fails("hash-collision-update", H("s = set()\ns.update([i * (2**61 - 1) for i in range(40000)])"), "budget",
          "hash_collisions"),
    fails("hash-collision-comprehension", H("x = {i * (2**61 - 1) for i in range(40000)}"), "budget", "wall_ms",
          budgets={"wall_ms": 200}),
    refused("star-list-display", H("x = [*range(10**8)]"), 2, "star-unpacking in a list/tuple/set display"),
    refused("star-tuple-display", H("x = (*req,)"), 2, "star-unpacking"),
    refused("star-set-display", H("x = {*req}"), 2, "star-unpacking"),
    refused("star-dict-display", H("x = {**req}"), 2, "'**' unpacking in a dict display"),
    refused("slice-assign-doubling", H("l = [1]\nl[len(l):] = l"), 3, "slice assignment is not allowed"),
    refused("lambda-varargs", H("f = lambda *a: a"), 2, "*args in a lambda"),
]

RECURSION = [
    fails("plain-recursion", H("def f(n):\n    return f(n + 1)\nreturn f(0)"), "budget", "recursion (limit 100)"),
    fails("mutual-recursion", H("def f(n):\n    return g(n)\ndef g(n):\n    return f(n)\nf(0)"), "budget",
          "recursion"),
    fails("catch-and-recurse", H("def f():\n    try:\n        f()\n    except Exception:\n        f()\nf()"),
          "budget", "recursion (limit 100)"),
    fails("catch-runtimeerror-and-recurse",
          H("def f():\n    try:\n        f()\n    except RuntimeError:\n        f()\n        f()\nf()"),
          "budget", "recursion"),
    fails("lambda-recursion", H("f = lambda: f()\nf()"), "budget", "recursion"),
    fails("lambda-catch-recurse", H("f = lambda: f()\ndef g(n):\n    try:\n        f()\n    except RuntimeError:\n"
                                    "        return g(n + 1)\ng(0)"), "budget", "recursion", budgets=SLOW_OK),
    fails("deep-result", H("x = []\nfor i in range(10000):\n    x = [x]\nreturn {'x': x}"), "invalid_result",
          "nested deeper than 64"),
    fails("recursion-budget-configurable", H("def f(n):\n    return f(n + 1) if n < 20 else 0\nf(0)"), "budget",
          "recursion (limit 10)", budgets={"recursion": 10}),
]

OUTPUT = [
    fails("print-flood", H("while True:\n    print('x')"), "budget", "log_lines (limit 100)"),
    fails("log-flood", H("while True:\n    log('x')"), "budget", "log_lines"),
    fails("log-bytes", H("log('x' * 100000)"), "budget", "log_bytes (limit 16384)"),
    fails("print-many-args", H("print(*(['xx'] * 100000))"), "budget", "log_bytes"),
    fails("print-file", H("print('x', file=kv)"), "policy", "print(file=...) is not available"),
    refused("printed", H("x = printed"), 2, NOT_AVAILABLE),
    fails("huge-exception-message", H("raise ValueError('x' * 1000000)"), "exception", "ValueError: xxxx"),
]

KV = [
    fails("kv-huge-key", H("kv.get('k' * 1000)"), "exception", "KVError: key is longer than 512 bytes (line 2)"),
    fails("kv-huge-value", H("kv.set('k', 'v' * 100000)"), "exception", "KVError: kv.set: value is longer"),
    fails("kv-too-many-ops", H("for i in range(2000):\n    kv.get('k')"), "budget", "kv_ops (limit 1000)"),
    fails("kv-ops-configurable", H("for i in range(10):\n    kv.incr('k')"), "budget", "kv_ops (limit 3)",
          budgets={"kv_ops": 3}),
    fails("kv-key-type", H("kv.get(1)"), "exception", "KVError: key must be a str"),
    fails("kv-key-newline", H("kv.get('a\\nb')"), "exception", "control characters"),
    fails("kv-key-nul", H("kv.set('a\\x00b', 'v')"), "exception", "control characters"),
    fails("kv-key-surrogate", H("kv.get('a\\ud800')"), "exception", "lone surrogate"),
    fails("kv-empty-key", H("kv.get('')"), "exception", "key must not be empty"),
    fails("kv-value-list", H("kv.set('k', [1, 2])"), "exception", "must be a str, int or float"),
    fails("kv-ttl-negative", H("kv.set('k', 'v', ttl=-1)"), "exception", "ttl must be between 1"),
    fails("kv-ttl-bool", H("kv.expire('k', True)"), "exception", "ttl must be an int"),
    fails("kv-too-many-members", H("kv.sadd('s', *range(2000))"), "exception", "at most 1000 values"),
    refused("kv-hidden-kwarg", H("kv.get('k', _ns='other')"), 2, 'keyword argument "_ns"'),
    fails("kv-hidden-kwarg-dynamic", H("kv.get('k', **{'_ns': 'other'})"), "policy", 'keyword argument "_ns"'),
    fails("kv-unknown-kwarg", H("kv.get('k', namespace='other')"), "exception", "unexpected keyword argument"),
    fails("kv-wrongtype-uncaught", H("kv.sadd('s', 'a')\nkv.get('s')"), "exception", "KVError: WRONGTYPE"),
    fails("kv-down", H("kv.get('k')"), "unavailable", "KV backend unavailable (kv.get)", kv_down=True),
    fails("kv-down-swallowed", H("try:\n    kv.get('k')\nexcept Exception:\n    return allow()"), "unavailable",
          "KV backend unavailable", kv_down=True),
    fails("kv-down-finally", H("try:\n    kv.get('k')\nfinally:\n    kv.set('k', 'v')"), "unavailable",
          "kv.get", kv_down=True),
    fails("kv-flushall", H("kv.flushall()"), "policy", "attribute 'flushall' of <kv>"),
    fails("kv-eval", H("kv.eval('return 1', 0)"), "policy", "attribute 'eval' of <kv>"),
]

RESULTS = [
    fails("result-too-big", H("return {'a': 'x' * 700000, 'b': 'y' * 700000}"), "invalid_result",
          "bytes of JSON (limit 1048576)"),
    fails("result-set", H("return {'a': {1, 2}}"), "invalid_result", "set is not a JSON type"),
    fails("result-bytes", H("return {'a': b'x'}"), "invalid_result", "bytes is not a JSON type"),
    fails("result-function", H("return {'a': log}"), "invalid_result", "function is not a JSON type"),
    fails("result-facade", H("return {'a': kv}"), "invalid_result", "KV is not a JSON type"),
    fails("result-verdict-nested", H("return {'a': allow()}"), "invalid_result", "Verdict is not a JSON type"),
    fails("result-generator", H("return {'a': (x for x in [1])}"), "invalid_result", "generator is not a JSON type"),
    fails("result-nan", H("return {'a': float('nan')}"), "invalid_result", "NaN and infinity"),
    fails("result-inf", H("return {'a': float('inf')}"), "invalid_result", "NaN and infinity"),
    fails("result-int-key", H("return {1: 'a'}"), "invalid_result", "keys must be strings"),
    fails("result-huge-int", H("return {'a': 2 ** 70}"), "invalid_result", "64-bit"),
    fails("result-string", H("return 'allow'"), "invalid_result", "not str"),
    fails("result-list", H("return [1]"), "invalid_result", "not list"),
    fails("result-true", H("return True"), "invalid_result", "not bool"),
    # deny() with an unusable errCode or text is still a deny (mapped by the host):
    # tests/test_fidelity.py (M2).
    fails("allow-positional", H("return allow(1, 2)"), "exception", "allow() takes field=value keywords"),
    fails("allow-underscore-field", H("return allow(**{'_x': 1})"), "policy", 'keyword argument "_x"'),
]

SHADOWING = [
    refused("posonly-param", H("def f(o, _getattr_=None, /):\n    return o.x"), 2, UNDERSCORE),
    refused("walrus", H("if (_getattr_ := log):\n    pass"), 2, UNDERSCORE),
    refused("comprehension-target", H("x = [1 for _getiter_ in req]"), 2, UNDERSCORE),
    refused("except-as", H("try:\n    pass\nexcept Exception as _write_:\n    pass"), 4, UNDERSCORE),
    refused("for-target", H("for _getitem_ in req:\n    pass"), 2, UNDERSCORE),
    refused("with-as", H("with req as _print_:\n    pass"), 2, "with statements are not allowed"),
    refused("del-hook", H("del _getattr_"), 2, UNDERSCORE),
    refused("augassign-hook", H("_step_ += 1"), 2, UNDERSCORE),
    refused("lambda-default", H("f = lambda _apply_=log: 0"), 2, UNDERSCORE),
    refused("kwonly-param", H("def f(*, _tick_=1):\n    pass"), 2, UNDERSCORE),
    refused("vararg-name", H("def f(*_getattr_):\n    pass"), 2, UNDERSCORE),
    refused("kwarg-name", H("def f(**_write_):\n    pass"), 2, UNDERSCORE),
    refused("global-hook", H("global _enter_\n_enter_ = log"), 2, UNDERSCORE),
    refused("def-hook-name", H("def _leave_():\n    pass"), 2, UNDERSCORE),
    refused("nonlocal", H("x = 1\ndef g():\n    nonlocal x\n    x = 2"), 4, "Nonlocal"),
    refused("tuple-target", H("_a, b = 1, 2"), 2, UNDERSCORE),
    refused("starred-target", H("a, *_getiter_ = req"), 2, UNDERSCORE),
    refused("keyword-arg", H("log(_getattr_=1)"), 2, 'keyword argument "_getattr_"'),
    refused("match-capture", H("match req:\n    case _getattr_:\n        pass"), 2, "Match statements are not allowed"),
    refused("module-level-hook", "_getattr_ = None\n" + H("return None"), 1, UNDERSCORE),
    refused("annotated-assign", H("_getattr_: int = 1"), 2, "AnnAssign"),
    refused("decorator", H("@log\ndef f():\n    pass"), 3, "decorators are not allowed"),
]

EXCEPTION_TRICKS = [
    refused("bare-except", H("try:\n    pass\nexcept:\n    pass"), 4, "bare 'except:' is not allowed"),
    refused("except-baseexception", H("try:\n    pass\nexcept BaseException:\n    pass"), 4, NOT_AVAILABLE),
    refused("raise-systemexit", H("raise SystemExit(0)"), 2, NOT_AVAILABLE),
    refused("raise-keyboardinterrupt", H("raise KeyboardInterrupt"), 2, NOT_AVAILABLE),
    refused("except-generatorexit", H("try:\n    pass\nexcept GeneratorExit:\n    pass"), 4, NOT_AVAILABLE),
    refused("return-in-finally", H("try:\n    while True:\n        pass\nfinally:\n    return None"), 6,
            "'return' inside 'finally'"),
    refused("continue-in-finally", H("while True:\n    try:\n        pass\n    finally:\n        continue"), 6,
            "'continue' inside 'finally'"),
    refused("break-in-finally", H("for i in range(3):\n    try:\n        pass\n    finally:\n        break"), 6,
            "'break' inside 'finally'"),
    refused("except-star", H("try:\n    pass\nexcept* ValueError:\n    pass"), 2, "TryStar"),
    fails("sticky-budget-finally-loop",
          H("try:\n    while True:\n        pass\nfinally:\n    n = 0\n    while n < 10:\n        n += 1"),
          "budget", "steps", budgets=STEPS),
    fails("finally-replaces-budget-error", H("try:\n    while True:\n        pass\nfinally:\n    raise ValueError('x')"),
          "budget", "steps", budgets=STEPS),
    fails("catch-policy-error", H("try:\n    x = kv.port\nexcept Exception:\n    return allow()"), "policy",
          "attribute 'port'"),
    fails("catch-recursion-budget", H("def f():\n    f()\ntry:\n    f()\nexcept RuntimeError:\n    return allow()"),
          "budget", "recursion"),
    fails("raise-non-exception", H("raise 1"), "exception", "TypeError: exceptions must derive from BaseException"),
    fails("except-non-exception", H("try:\n    1 / 0\nexcept str:\n    pass"), "exception", "TypeError"),
]

ALL: list[Attack] = [
    *ESCAPES, *FORMAT_STRINGS, *FRAMES, *IMPORTS, *IO, *CPU, *MEMORY, *RECURSION, *OUTPUT, *KV, *RESULTS,
    *SHADOWING, *EXCEPTION_TRICKS, *INTEGERS, *CLASSES, *GENERATORS, *C_CALLS,
]
