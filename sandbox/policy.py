"""Upload-time policy: what source is accepted, and how it is rewritten before compiling.

``check_source`` never raises: every refusal (syntax, size, nesting, forbidden syntax or
names, missing ``handle``) is a ``CompileIssue`` with a line and column. ``transform``
returns the compiled code object for the runtime.

On top of RestrictedPython's ``RestrictingNodeTransformer`` (underscore names, inspect
attributes, exec/eval calls, async, ``except*``...) this policy refuses whole features that
only serve attacks in a webhook handler (imports, ``with``, bare ``except``, star-unpacking
in displays, ``return``/``break``/``continue`` in ``finally``, ``finally`` in generator
functions, special methods in classes other than ``CLASS_DUNDERS``)
and injects the accounting calls the runtime needs (see ``sandbox.worker.guards`` for the names):

- ``_step_()`` at the top of every ``while`` body, and in every lambda;
- ``_enter_()`` / ``try: ... finally: _leave_()`` around every function body;
- ``_tick_()`` at the top of every ``for`` body and as the first ``if`` of every
  comprehension clause (clock check, sticky stop), unless what runs for every item
  already passes a ticking guard or a KV op (``_ticks_unconditionally``), or makes no
  call at all, in which case the iteration guard takes the loop's ticks
  (``_getiter_(x, True)``, ``_ticks_in_iteration``; not for generator expressions), plus
  ``_sized_()`` around list, set and dict comprehensions (item limit);
- ``kv.<op>("constant key", ...)`` for key / key-value ops calls ``_kv_<op>_k_`` when the
  constant is a valid key shape (``KV_CONST_KEY``);
- ``for x in a[k]`` (loops and comprehensions) calls one fused guard, ``_getiter_item_``;
- ``kv.<op>(...)`` on the global ``kv`` (a script that never binds the name ``kv``)
  calls the facade's bound method directly (``KV_DIRECT``), without ``_getattr_``, and a
  write whose answer is dropped, in ``handle``'s own blocks outside any ``try``, one that
  does not wait for the answer (``KV_UNAWAITED``, ``unawaited_writes``);
- ``+ * ** << % //`` become ``_add_ _mul_ _pow_ _lshift_ _mod_ _floordiv_`` so sizes (and
  long-division costs) are checked *before* anything is allocated, and ``- | & ^`` become
  ``_sub_ _or_ _and_ _xor_`` (hash-collision check for set algebra), and f-string fields become ``_fmt_`` calls (widths,
  safe conversions).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from RestrictedPython.transformer import ALLOWED_FUNC_NAMES, RestrictingNodeTransformer, copy_locations

from sandbox.api import CompileIssue
from sandbox.kvops import OPS as KV_OPS

SCRIPT_FILENAME = "<script>"
MAX_SOURCE_BYTES = 64 * 1024
MAX_AST_DEPTH = 80  # RP's transformer and CPython's compiler recurse per level
MAX_AST_NODES = 30_000
MAX_ISSUES = 50
SMALL_INT = 2**31  # `x + 1`, `n += 1` with a small constant cannot grow anything dangerously

# Names refused wherever they appear (load or store): they only exist to reach the
# interpreter, and refusing them at upload gives a clear error instead of a NameError.
FORBIDDEN_NAMES = frozenset(
    {
        "exec", "eval", "compile", "open", "globals", "locals", "vars", "getattr", "setattr",
        "delattr", "hasattr", "breakpoint", "memoryview", "super", "object", "classmethod",
        "staticmethod", "property", "bytearray", "BaseException", "SystemExit", "KeyboardInterrupt",
        "GeneratorExit", "StopAsyncIteration", "builtins", "printed",
    }
)  # fmt: skip
# Names refused when loaded unless the script binds them itself: they are builtins we do
# not provide, but also ordinary variable names (`type = req["type"]`). When the script
# binds one, a load refers to the script's own value (our builtins lack them anyway).
UNPROVIDED_BUILTINS = frozenset(
    {
        "type", "id", "hash", "dir", "help", "input", "exit", "quit", "iter", "next", "format",
        "map", "filter", "pow", "ascii", "bytes", "callable", "issubclass", "slice", "complex",
        "copyright", "credits", "license", "aiter", "anext", "frozenset", "oct", "bin",
    }
)  # fmt: skip
REFUSED_ATTRIBUTES = frozenset({"mro"})

_BINOP_HOOKS: dict[type[ast.operator], str] = {
    ast.Add: "_add_",
    ast.Mult: "_mul_",
    ast.Pow: "_pow_",
    ast.LShift: "_lshift_",
    ast.Mod: "_mod_",
    ast.FloorDiv: "_floordiv_",
    # Set algebra hashes one operand's items into (or looks them up in) the other's table
    # in one C call: the collision check runs first. Ints pass straight through.
    ast.Sub: "_sub_",
    ast.BitOr: "_or_",
    ast.BitAnd: "_and_",
    ast.BitXor: "_xor_",
}


# The builtins name each KV op is called through when the script calls it on the global
# `kv` (see ScriptPolicy.visit_Call; sandbox.worker.runtime binds them to the facade's methods).
KV_DIRECT: dict[str, str] = {name: f"_kv_{name}_" for name in KV_OPS}
# ...and, when the key is a constant that is a valid key shape (non-empty printable ASCII),
# to a method that only checks the key's length (sandbox.worker.kvapi.CONST_KEY_METHODS).
KV_CONST_KEY: dict[str, str] = {
    name: f"_kv_{name}_k_" for name, op in KV_OPS.items() if op.key_shaped
}
_DIRECT_TO_CONST_KEY = {KV_DIRECT[name]: direct for name, direct in KV_CONST_KEY.items()}
# ...and, for a write whose answer is dropped (``unawaited_writes``), to a method that sends
# it without waiting for the answer (sandbox.worker.kvapi.UNAWAITED_METHODS).
KV_UNAWAITED: dict[str, str] = {name: f"_kv_{name}_nr_" for name, op in KV_OPS.items() if op.writes}
_DIRECT_TO_UNAWAITED = {
    **{KV_DIRECT[name]: nr for name, nr in KV_UNAWAITED.items()},
    **{KV_CONST_KEY[name]: nr for name, nr in KV_UNAWAITED.items() if name in KV_CONST_KEY},
}

_INPLACE_HOOKS: dict[type[ast.operator], str] = {
    **_BINOP_HOOKS, ast.Add: "_iadd_", ast.Mult: "_imul_",
    ast.Sub: "_isub_", ast.BitOr: "_ior_", ast.BitAnd: "_iand_", ast.BitXor: "_ixor_",
}  # fmt: skip
_SMALL_OPERAND_NATIVE = (ast.Add, ast.Sub, ast.BitOr, ast.BitAnd, ast.BitXor)


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(name, ast.Load()), args=list(args), keywords=[])


def _small_int(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and type(node.value) is int
        and -SMALL_INT < node.value < SMALL_INT
    )


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the script binds anywhere (assignment, parameter, def, except-as...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


# Special methods a script class may define: construction and comparisons. Each runs as a
# script function (budgets apply) when Python calls it; nothing reaches type internals.
CLASS_DUNDERS = frozenset({"__init__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"})


def _own_nodes(fn: ast.FunctionDef | ast.Lambda) -> Iterator[ast.AST]:
    """The nodes of a function's own scope (not those of nested functions or classes)."""
    stack: list[ast.AST] = list(fn.body) if isinstance(fn, ast.FunctionDef) else [fn.body]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _is_generator(fn: ast.FunctionDef) -> bool:
    return any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in _own_nodes(fn))


def _finally_escapes(stmts: list[ast.stmt]) -> Iterator[ast.stmt]:
    """return/break/continue in a ``finally`` block that would swallow a pending exception."""

    def walk(node: ast.AST, in_loop: bool) -> Iterator[ast.stmt]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return
        if isinstance(node, ast.Return) or (isinstance(node, (ast.Break, ast.Continue)) and not in_loop):
            yield node  # type: ignore[misc]
            return
        if isinstance(node, (ast.For, ast.While, ast.AsyncFor)):
            for child in node.body:
                yield from walk(child, True)
            for child in node.orelse:  # `else:` of a loop belongs to the enclosing one
                yield from walk(child, in_loop)
            return
        for child in ast.iter_child_nodes(node):
            yield from walk(child, in_loop)

    for stmt in stmts:
        yield from walk(stmt, False)


class ScriptPolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer, stricter, with accounting hooks injected."""

    def __init__(self, bound_names: set[str], unawaited: set[int] | None = None) -> None:
        super().__init__()
        self.issues: list[CompileIssue] = []
        self.bound_names = bound_names
        self.unawaited = unawaited or set()  # id() of calls found by unawaited_writes
        self.methods: set[int] = set()  # id() of the defs directly in a class body

    # -- error collection with columns ----------------------------------------------------

    def error(self, node: ast.AST, info: str) -> None:
        line = getattr(node, "lineno", None) or 1
        col = getattr(node, "col_offset", None) or 0
        self.errors.append(f"Line {line}: {info}")
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(CompileIssue(line, col, info))

    # -- whole features refused -------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> ast.AST:
        self.error(node, "imports are not allowed: use the provided globals (kv, json, re, time, log...)")
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        self.error(node, "imports are not allowed: use the provided globals (kv, json, re, time, log...)")
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        # RestrictedPython compiles it as `class C(bases, metaclass=__metaclass__)` (the
        # runtime's class factory checks bases and names) and refuses `metaclass=`.
        if node.decorator_list:
            self.error(node, "class decorators are not allowed")
        if node.keywords:
            self.error(node, "class keywords are not allowed")
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef):
                self.methods.add(id(stmt))
            elif not (
                isinstance(stmt, ast.Pass)
                or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
                or (isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets))
            ):
                self.error(stmt, "a class body may only hold methods (def), NAME = value and a docstring")
        new = super().visit_ClassDef(node)
        copy_locations(new, node)  # RP builds the new node from a parsed template (line 1)
        return new

    def visit_YieldFrom(self, node: ast.YieldFrom) -> ast.AST:
        node = self.node_contents_visit(node)
        # `yield from x` iterates x in C: through the iteration guard like a for loop.
        new = _call("_getiter_", node.value)
        copy_locations(new, node.value)
        node.value = new
        return node

    def visit_With(self, node: ast.With) -> ast.AST:
        self.error(node, "with statements are not allowed (no context managers are available)")
        return node

    def visit_Global(self, node: ast.Global) -> ast.AST:
        for name in node.names:
            self.check_name(node, name)
        return self.node_contents_visit(node)

    # -- exceptions -------------------------------------------------------------------------

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        if node.type is None:
            self.error(node, "bare 'except:' is not allowed: name the exceptions (e.g. 'except Exception:')")
        node = super().visit_ExceptHandler(node)
        # A MemoryError is an Exception: `except Exception:` would let the script go on
        # after hitting the worker's memory limit. _caught_() turns it into a stop.
        caught = ast.Expr(_call("_caught_"))
        copy_locations(caught, node)
        node.body.insert(0, caught)
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        for bad in _finally_escapes(node.finalbody):
            word = type(bad).__name__.lower()
            self.error(bad, f"'{word}' inside 'finally' is not allowed (it would swallow errors)")
        return super().visit_Try(node)

    # -- names, attributes, calls -------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in FORBIDDEN_NAMES:
            self.error(node, f'"{node.id}" is not available in scripts')
            return node
        if isinstance(node.ctx, ast.Load) and node.id in UNPROVIDED_BUILTINS and node.id not in self.bound_names:
            self.error(node, f'"{node.id}" is not available in scripts')
            return node
        return super().visit_Name(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if node.attr in REFUSED_ATTRIBUTES:
            self.error(node, f'".{node.attr}" is not allowed')
        return super().visit_Attribute(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        for kw in node.keywords:
            if kw.arg is not None and kw.arg.startswith("_"):
                self.error(kw if hasattr(kw, "lineno") else node,
                           f'keyword argument "{kw.arg}" is not allowed (starts with "_")')
        node = super().visit_Call(node)
        if "kv" not in self.bound_names:
            # `kv.get(...)` -> `_kv_get_(...)`: the global kv's bound method, without the
            # _getattr_ hook (the op checks the stop and counts a tick itself). Only when the
            # script never binds the name `kv`, so it can only be the global facade.
            if isinstance(node.func, ast.Name) and node.func.id == "_apply_":
                node.args[0] = _direct_kv_method(node.args[0])
            else:
                unawaited = id(node) in self.unawaited
                node.func = _direct_kv_method(node.func)
                _const_key_kv_method(node)
                func = node.func
                if unawaited and isinstance(func, ast.Name) and func.id in _DIRECT_TO_UNAWAITED:
                    func.id = _DIRECT_TO_UNAWAITED[func.id]
        return node

    # -- displays: star-unpacking iterates in C, past every guard ----------------------------

    def _no_starred(self, node: ast.List | ast.Tuple | ast.Set) -> None:
        ctx = getattr(node, "ctx", None)  # ast.Set has no ctx: it is always a load
        if ctx is None or isinstance(ctx, ast.Load):
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    self.error(elt, "star-unpacking in a list/tuple/set display is not allowed: use list(x)")

    def visit_List(self, node: ast.List) -> ast.AST:
        self._no_starred(node)
        return super().visit_List(node)

    def visit_Tuple(self, node: ast.Tuple) -> ast.AST:
        self._no_starred(node)
        node = super().visit_Tuple(node)
        if isinstance(node.ctx, ast.Load) and not all(isinstance(e, ast.Constant) for e in node.elts):
            # A tuple holding script values: _nest_ bounds tuple nesting (see guards.MAX_TUPLE_DEPTH).
            new = _call("_nest_", node)
            copy_locations(new, node)
            return new
        return node

    def visit_Set(self, node: ast.Set) -> ast.AST:
        self._no_starred(node)
        return super().visit_Set(node)

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                self.error(value, "'**' unpacking in a dict display is not allowed: use d.update(x)")
        return super().visit_Dict(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if isinstance(node.ctx, ast.Store):
            slices = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if any(isinstance(s, ast.Slice) for s in slices):
                self.error(node, "slice assignment is not allowed: build a new list instead")
        return super().visit_Subscript(node)

    # -- functions: recursion depth and steps --------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        rp_allows = node.name in ALLOWED_FUNC_NAMES and node.col_offset != 0  # else RP reports it
        if rp_allows and not (id(node) in self.methods and node.name in CLASS_DUNDERS):
            allowed = ", ".join(sorted(CLASS_DUNDERS))
            self.error(node, f'function name "{node.name}" is not allowed (starts with "_"; methods may be {allowed})')
        if node.decorator_list:
            self.error(node, "decorators are not allowed")
        generator = _is_generator(node)
        if generator:
            for bad in _own_nodes(node):
                if isinstance(bad, ast.Try) and bad.finalbody:
                    # It could run after the call, when the host closes or collects the
                    # suspended generator.
                    self.error(bad, "'finally' is not allowed in a generator function")
        node = super().visit_FunctionDef(node)
        if node.args.vararg is not None:  # *args packs a new tuple of script values
            nest = ast.Expr(_call("_nest_", ast.Name(node.args.vararg.arg, ast.Load())))
            copy_locations(nest, node)
            node.body.insert(0, nest)
        if generator:
            # A generator's body runs in pieces between its consumer's steps: one step when
            # it starts, its loops tick like any other; no depth bookkeeping (a suspended
            # generator would hold a level, and no `finally` may run after the call).
            step = ast.Expr(_call("_step_"))
            copy_locations(step, node)
            node.body.insert(0, step)
            return node
        enter = ast.Expr(_call("_enter_"))
        leave = ast.Expr(_call("_leave_"))
        guarded = ast.Try(body=node.body, handlers=[], orelse=[], finalbody=[leave])
        for new in (enter, leave, guarded):
            copy_locations(new, node)
        node.body = [enter, guarded]
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        if node.args.vararg is not None:
            self.error(node, "*args in a lambda is not allowed: use a def")
        if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own_nodes(node)):
            self.error(node, "yield in a lambda is not allowed: use a def")
        node = super().visit_Lambda(node)
        # `_step_()` returns None, so `None or body` is the body: a lambda call costs a step.
        node.body = ast.BoolOp(op=ast.Or(), values=[_call("_step_"), node.body])
        copy_locations(node.body, node)
        return node

    # -- loops -------------------------------------------------------------------------------

    def visit_While(self, node: ast.While) -> ast.AST:
        node = super().visit_While(node)
        step = ast.Expr(_call("_step_"))
        copy_locations(step, node)
        node.body.insert(0, step)
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        node = super().visit_For(node)  # iter becomes _getiter_(...): charged up front
        node.iter = _fuse_getiter_item(node.iter)
        if _ticks_in_iteration(node.iter, [*node.body, *node.orelse]):
            return node
        if node.body and _ticks_unconditionally(node.body[0]):
            return node  # the first statement already passes a ticking guard every iteration
        tick = ast.Expr(_call("_tick_"))
        copy_locations(tick, node)
        node.body.insert(0, tick)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        node = super().visit_comprehension(node)  # iter becomes _getiter_(...): charged up front
        node.iter = _fuse_getiter_item(node.iter)
        return node

    def _tick_generators(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        """A ``_tick_()`` as the first ``if`` of every generator clause, unless what is
        evaluated for every item of that clause already passes a ticking guard: its first
        ``if``, or, for the innermost clause without ``if``, the element (key and value)."""
        # Not for a generator expression: other code runs between its items (and can change
        # the container), so it keeps a tick per item.
        if len(node.generators) == 1 and not isinstance(node, ast.GeneratorExp):
            gen = node.generators[0]
            per_item = [*gen.ifs, *((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,))]
            if _ticks_in_iteration(gen.iter, per_item):
                return
        last = len(node.generators) - 1
        for i, gen in enumerate(node.generators):
            if gen.ifs:
                always: list[ast.expr] = [gen.ifs[0]]
            elif i == last:
                always = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            else:
                always = []
            if any(_ticks_unconditionally(expr) for expr in always):
                continue
            tick = _call("_tick_")
            copy_locations(tick, gen.iter)
            gen.ifs.insert(0, tick)

    def _sized(self, node: ast.expr) -> ast.AST:
        new = _call("_sized_", node)
        copy_locations(new, node)
        return new

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        node = super().visit_ListComp(node)
        self._tick_generators(node)
        return self._sized(node)

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        node = super().visit_SetComp(node)
        self._tick_generators(node)
        return self._sized(node)

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        node = super().visit_DictComp(node)
        self._tick_generators(node)
        return self._sized(node)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        node = super().visit_GeneratorExp(node)
        self._tick_generators(node)
        return node

    # -- growth operators ------------------------------------------------------------------------

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = super().visit_BinOp(node)
        hook = _BINOP_HOOKS.get(type(node.op))
        if hook is None:
            return node  # - / // >> & | ^ @ cannot grow past their operands
        if isinstance(node.op, _SMALL_OPERAND_NATIVE) and (_small_int(node.left) or _small_int(node.right)):
            return node  # `i + 1`, `n - 1`, `x & 0xff` stay native: an int with an int, cheap
        if hook == "_floordiv_" and _small_int(node.right):
            return node  # `n // 2`: linear in the bits of n, nothing to bound
        new = _call(hook, node.left, node.right)
        copy_locations(new, node)
        return new

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        op = type(node.op)
        native = op not in _BINOP_HOOKS or (
            (op in _SMALL_OPERAND_NATIVE or op is ast.FloorDiv) and _small_int(node.value)
        )
        if native and isinstance(node.target, ast.Name):
            # `n += 1`, `x -= y`, `s |= t` on a plain name: no guard needed, no call overhead.
            return self.node_contents_visit(node)
        if isinstance(node.target, ast.Name):
            # n = _iadd_(n, v): one direct hook per operator (lists grow in place, checked).
            node = self.node_contents_visit(node)
            hook = _INPLACE_HOOKS[op]
            value = _call(hook, ast.Name(node.target.id, ast.Load()), node.value)
            new = ast.Assign(targets=[node.target], value=value)
            copy_locations(new, node)
            return new
        return super().visit_AugAssign(node)  # refuses a.b += ... and a[i] += ...

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node = super().visit_FormattedValue(node)
        spec: ast.expr = node.format_spec if node.format_spec is not None else ast.Constant("")
        new_value = _call("_fmt_", node.value, ast.Constant(node.conversion), spec)
        copy_locations(new_value, node)
        node.value = new_value
        node.conversion = -1
        node.format_spec = None
        return node


def unawaited_writes(tree: ast.Module) -> set[int]:
    """The calls ``kv.<write>(...)`` that may be sent without waiting for their answer: id()
    of each, for ``ScriptPolicy``.

    Why: an after-callback counting messages (``kv.incr(key)``) otherwise waits a whole
    host round trip for a number it throws away. Only a statement that is the call alone
    (the answer is dropped) directly in ``handle``'s own body, or in its ``if`` / ``for`` /
    ``while`` blocks, and never inside a ``try`` (which could catch its failure) or a nested
    function (which a ``try`` could call). The host still runs the writes in order before
    any later KV operation of the call and before it takes the call's result, so neither
    a later read nor the reply to OpenIM can get ahead of a write; a write that fails fails
    the call, and no later KV operation of the call takes effect (sandbox.host.pool).
    """
    found: set[int] = set()
    for top in tree.body:
        if not (isinstance(top, ast.FunctionDef) and top.name == "handle"):
            continue
        stack: list[ast.stmt] = list(top.body)
        while stack:
            stmt = stack.pop()
            if isinstance(stmt, (ast.If, ast.For, ast.While)):
                stack.extend(stmt.body)
                stack.extend(stmt.orelse)
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                func = stmt.value.func
                if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                        and func.value.id == "kv" and func.attr in KV_UNAWAITED
                        and not any(isinstance(a, ast.Starred) for a in stmt.value.args)
                        and all(kw.arg is not None for kw in stmt.value.keywords)):
                    found.add(id(stmt.value))
    return found


def _direct_kv_method(func: ast.expr) -> ast.expr:
    """``_getattr_(kv, "<op>")`` (a KV op looked up on the global ``kv``) -> ``_kv_<op>_``."""
    if (
        isinstance(func, ast.Call)
        and isinstance(func.func, ast.Name)
        and func.func.id == "_getattr_"
        and len(func.args) == 2
        and isinstance(func.args[0], ast.Name)
        and func.args[0].id == "kv"
        and isinstance(func.args[1], ast.Constant)
        and func.args[1].value in KV_DIRECT
    ):
        new = ast.Name(KV_DIRECT[func.args[1].value], ast.Load())
        copy_locations(new, func)
        return new
    return func


def _const_key_kv_method(node: ast.Call) -> None:
    """``_kv_<op>_("constant key", ...)`` -> ``_kv_<op>_k_(...)`` when the constant is a valid
    key shape (the checks ``sandbox.worker.kvapi`` would make on every call; the length limit is a
    budget, so it is still checked when the op runs)."""
    func = node.func
    if not (isinstance(func, ast.Name) and func.id in _DIRECT_TO_CONST_KEY and node.args):
        return
    key = node.args[0]
    if (
        isinstance(key, ast.Constant)
        and type(key.value) is str
        and key.value.isascii()
        and key.value
        and key.value.isprintable()
    ):
        func.id = _DIRECT_TO_CONST_KEY[func.id]


def _ticks_in_iteration(it: ast.expr, per_item: list[ast.AST]) -> bool:
    """If the (already transformed) code run for every item makes no call at all (no guard,
    no function, so nothing can change the container or run unbounded code but C-level
    operators), let the iteration guard take the loop's ticks: ``_getiter_(x, True)``
    instead of a ``_tick_()`` per item. Returns whether it did."""
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
            and it.func.id in ("_getiter_", "_getiter_item_") and not it.keywords):
        return False
    if any(isinstance(sub, ast.Call) for node in per_item for sub in ast.walk(node)):
        return False
    it.args.append(ast.Constant(True))
    return True


def _fuse_getiter_item(it: ast.expr) -> ast.expr:
    """``_getiter_(_getitem_(obj, key))`` -> ``_getiter_item_(obj, key)``: the same two
    guards, in order, in one call (``for x in req["items"]``)."""
    if (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "_getiter_"
        and len(it.args) == 1
        and not it.keywords
        and isinstance(it.args[0], ast.Call)
        and isinstance(it.args[0].func, ast.Name)
        and it.args[0].func.id == "_getitem_"
        and len(it.args[0].args) == 2
        and not it.args[0].keywords
    ):
        new = _call("_getiter_item_", *it.args[0].args)
        copy_locations(new, it)
        return new
    return it


# Guards that also count a tick (clock check now and then, sticky stop): a loop body that
# calls one of them on every iteration needs no separate _tick_() call. A KV op checks the
# stop and counts a tick on every call (or raises); kv.smismember with no members answers
# without either, so it does not count.
_TICKING_GUARDS = frozenset(
    {"_getattr_", "_getitem_", "_getiter_item_", "_write_"}
    | {name for op, name in KV_DIRECT.items() if op != "smismember"}
    | set(KV_CONST_KEY.values())
    | set(KV_UNAWAITED.values())
)


def _ticks_unconditionally(node: ast.AST) -> bool:
    """Does (already transformed) ``node``, a statement or an expression, call a ticking
    guard whenever it runs?

    Only parts that are always evaluated count: the first operand of and/or, the test
    of a conditional expression, the first two operands of a comparison chain, the first
    iterable of a comprehension; never a lambda body.
    """
    if isinstance(node, ast.stmt) and not isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign)):
        return False
    stack: list[ast.AST] = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _TICKING_GUARDS:
            return True
        if isinstance(node, ast.BoolOp):
            stack.append(node.values[0])
        elif isinstance(node, ast.IfExp):
            stack.append(node.test)
        elif isinstance(node, ast.Compare):
            stack.extend((node.left, node.comparators[0]))
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            stack.append(node.generators[0].iter)
        elif not isinstance(node, ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _shape_issues(tree: ast.Module) -> list[CompileIssue]:
    """Node count and nesting depth, measured without recursion."""
    count = 0
    stack: list[tuple[ast.AST, int, int, int]] = [(tree, 0, 1, 0)]
    while stack:
        node, depth, line, col = stack.pop()
        count += 1
        if count > MAX_AST_NODES:
            return [CompileIssue(1, 0, f"script is too large ({MAX_AST_NODES} syntax nodes at most)")]
        line = getattr(node, "lineno", None) or line  # ctx nodes have no position: use the parent's
        col = getattr(node, "col_offset", None) if hasattr(node, "lineno") else col
        if depth > MAX_AST_DEPTH:
            return [CompileIssue(line, col or 0, f"code is nested too deeply ({MAX_AST_DEPTH} levels at most)")]
        stack.extend((child, depth + 1, line, col or 0) for child in ast.iter_child_nodes(node))
    return []


def _handle_issues(tree: ast.Module) -> list[CompileIssue]:
    handles = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "handle"]
    if not handles:
        return [CompileIssue(1, 0, "no top-level 'def handle(req):' function")]
    fn = handles[-1]
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    if len(positional) != 1 or a.vararg or a.kwarg or a.kwonlyargs or a.defaults:
        return [CompileIssue(fn.lineno, fn.col_offset, "handle must take exactly one parameter: def handle(req):")]
    return []


def _syntax_issue(e: SyntaxError) -> CompileIssue:
    return CompileIssue(e.lineno or 1, max((e.offset or 1) - 1, 0), f"syntax error: {e.msg}")


def transform(source: object) -> tuple[object | None, list[CompileIssue]]:
    """Check and compile ``source``. Returns (code object or None, issues). Never raises."""
    code, issues, _definitions_only = transform_module(source)
    return code, issues


def transform_module(source: object) -> tuple[object | None, list[CompileIssue], bool]:
    """``transform``, plus whether the module only binds functions and constants
    (``definitions_only``), from the same parse. Never raises."""
    try:
        return _transform(source)
    except SyntaxError as e:
        return None, [_syntax_issue(e)], False
    except RecursionError:
        return None, [CompileIssue(1, 0, "code is nested too deeply")], False
    except MemoryError:
        return None, [CompileIssue(1, 0, "code is too complex to compile (nested too deeply?)")], False
    except Exception as e:  # ValueError (NUL bytes), anything unexpected from RP or compile()
        return None, [CompileIssue(1, 0, f"source cannot be compiled ({type(e).__name__})")], False


def _transform(source: object) -> tuple[object | None, list[CompileIssue], bool]:
    if type(source) is not str:
        return None, [CompileIssue(1, 0, "source must be text")], False
    if len(source) > MAX_SOURCE_BYTES or len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return None, [CompileIssue(1, 0, f"source is larger than {MAX_SOURCE_BYTES} bytes")], False
    if "\x00" in source:
        line = source.count("\n", 0, source.index("\x00")) + 1
        return None, [CompileIssue(line, 0, "source contains a NUL character")], False
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        return None, [CompileIssue(1, 0, "source is not valid unicode (lone surrogate)")], False
    tree = ast.parse(source, SCRIPT_FILENAME, "exec")
    issues = _shape_issues(tree)
    if issues:
        return None, issues, False
    only = _definitions_only(tree)  # before the policy rewrites the tree
    issues = _handle_issues(tree)
    policy = ScriptPolicy(_bound_names(tree), unawaited_writes(tree))
    tree = policy.visit(tree)
    issues = sorted({*issues, *policy.issues}, key=lambda i: (i.line, i.col, i.message))
    if issues:
        return None, issues, False
    ast.fix_missing_locations(tree)
    return compile(tree, SCRIPT_FILENAME, "exec", dont_inherit=True), [], only


def definitions_only(source: str) -> bool:
    """True if running the module only binds names to functions and constants: every
    top-level statement is a ``def`` without decorators or annotations whose defaults are
    constants, a ``NAME = constant`` or a constant expression (a docstring). Such a module
    does the same thing every time it runs, calls no guard and creates nothing a script can
    change (functions refuse attribute writes, constants are immutable), so the runtime may
    run it once and give each call a fresh globals dict with the same bindings.

    ``transform_module`` answers this from its own parse; this parses ``source`` for it."""
    try:
        return _definitions_only(ast.parse(source, SCRIPT_FILENAME, "exec"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def _definitions_only(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
            if all(isinstance(target, ast.Name) for target in stmt.targets):
                continue
            return False
        if not isinstance(stmt, ast.FunctionDef) or stmt.decorator_list or stmt.returns is not None:
            return False
        args = stmt.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
        if any(arg.annotation is not None for arg in every):
            return False
        if not all(isinstance(d, ast.Constant) for d in [*args.defaults, *filter(None, args.kw_defaults)]):
            return False
    return True


def check_source(source: str) -> list[CompileIssue]:
    """Every reason ``source`` would be refused at upload; [] means it is accepted."""
    return transform(source)[1]
