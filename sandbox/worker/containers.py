"""Container rules shared by the guards, the builtins and the helpers.

How a script's containers may be iterated (``materialize``: charged, bounded), and the
two CPython traps a script could otherwise spring from inside one C call: tuples nested
deep enough to overflow the C stack when hashed, and keys chosen to collide in a hash
table (quadratic insertion).
"""

from __future__ import annotations

import bisect
import itertools
import random
import types
from typing import Any, NoReturn

from sandbox.worker.budget import RunState

INTLIKE = frozenset({int, bool})
# Built-in containers whose length is known: iterating them is charged len() steps at once.
SIZED = frozenset(
    {
        list, tuple, str, bytes, dict, set, frozenset, range,
        type({}.keys()), type({}.values()), type({}.items()),
    }
)  # fmt: skip
# The only unsized iterables a script can hold: its own generator expressions, whose own
# loops are guarded (zip/enumerate/reversed/items return charged lists).
LAZY = frozenset({types.GeneratorType})
PLAIN_DATA = frozenset({type(None), str, bytes, int, float, bool, complex, list, dict, set, frozenset, tuple, range})
COLLISION_CHECK_MIN = 2048  # below this, even all-colliding keys cost little (~2M comparisons)
COLLISION_SAMPLE = 1024
MAX_COLLISION_WORK = 2_000_000  # estimated key comparisons in one C call (~0.1 s at ~50 ns each)
HASH_MODULUS = 2**61 - 1  # sys.hash_info.modulus on 64-bit CPython
_bisect, _accumulate = bisect.bisect_right, itertools.accumulate
_random = random.Random()  # private instance: never shared with, or seeded by, scripts
# Tuples are the one hashable container a script can nest, and CPython hashes nested
# tuples recursively in C with no depth check: hashing a tuple nested ~1M deep segfaults
# the interpreter (measured on 3.11.7). Every place a script can build a tuple holding
# script values checks that no tuple gets deeper than this.
MAX_TUPLE_DEPTH = 100


class ScriptClass(type):
    """The metaclass of every class a script defines (``safe_builtins`` makes them).

    Host code tells script classes and their instances apart by this exact metaclass, and
    never looks anything up on them by name (a script method could be called anything)."""


def script_attr(obj: Any, name: str) -> Any:
    """Attribute ``name`` of a script class or instance: only what the script's own class
    bodies or ``self.x = ...`` put there, never what ``type``/``object``/an exception base
    provides."""
    t = type(obj)
    klass = obj if t is ScriptClass else t
    if t is not ScriptClass and name in getattr(obj, "__dict__", ()):
        return getattr(obj, name)
    for k in klass.__mro__:
        if type(k) is ScriptClass and name in k.__dict__:
            return getattr(obj, name)
    what = f"type object '{obj.__name__}'" if t is ScriptClass else f"'{t.__name__}' object"
    raise AttributeError(f"{what} has no attribute '{name}'")


def describe(obj: Any) -> str:
    """How refusal messages name an object: a facade's own name, else its type's."""
    t = type(obj)
    if t is ScriptClass:
        return f"<class '{obj.__name__}'>"
    if type(t) is ScriptClass:
        return t.__name__
    script_repr = getattr(t, "script_repr", None)
    return script_repr(obj) if script_repr is not None else type(obj).__name__


def materialize(st: RunState, x: Any) -> Any:
    """The items of ``x`` in a sized container, charged as steps, bounded by max_items.

    Sized built-ins are returned as they are (charged ``len``); generators are drained
    into a list with a running item cap. Anything else is refused.
    """
    t = type(x)
    if t in SIZED:
        st.charge(len(x))
        return x
    if t in LAZY:
        st.alive()
        cap = st.budgets.max_items
        out: list[Any] = []
        append = out.append
        for item in x:
            append(item)
            if len(out) > cap:
                st.check_items(len(out))
        st.charge(len(out))
        return out
    not_iterable(st, x)


def not_iterable(st: RunState, x: Any) -> NoReturn:
    t = type(x)
    if t in PLAIN_DATA:  # ordinary Python error for ordinary values (scripts may catch it)
        raise TypeError(f"'{t.__name__}' object is not iterable")
    st.refuse(f"cannot iterate over {describe(x)}")


def check_collisions(st: RunState, *groups: Any) -> None:
    """Refuse many distinct keys sharing hashes before one C call hashes them together.

    ``groups`` are the collections the call puts in, or looks up in, one hash table: the
    items a set/dict is built from, or a set and the arguments of its method (``s.update(t)``,
    ``s.isdisjoint(t)``: every item of ``t`` is compared with the items of ``s`` sharing
    its hash). Int, float and tuple hashes are not randomized (``hash(i * (2**61 - 1)) ==
    0``) and CPython compares each colliding key with every other one: building a set of
    40k such ints is one uninterruptible 13 s C call (measured), and so is looking a list
    of them up in a set that already holds a few thousand. Keys already unique in a set or
    dict collide just as well. The work is estimated from a random sample of the combined
    items (the script cannot predict which are looked at): pairs of distinct, equal-hash
    items in the sample, scaled by (n / sample size)^2. Equal keys are cheap (the first
    comparison matches) and do not count.
    """
    n = 0
    for items in groups:
        n += len(items)
    if n < COLLISION_CHECK_MIN:
        return  # too small to matter
    pools: list[Any] = []
    for items in groups:
        t = type(items)
        if t is str or t is bytes or not items:
            continue  # str/bytes hashes are randomized; their items are one-character strings
        if t is range:
            if len(items) > 1 and items.step % HASH_MODULUS == 0:  # every item has the same hash
                st.exceeded("hash_collisions", MAX_COLLISION_WORK, "range items all share one hash")
            continue
        pools.append(items if t is list or t is tuple else list(items))
    if not pools:
        return
    starts = list(_accumulate((len(p) for p in pools), initial=0))
    total = starts.pop()
    if total < COLLISION_CHECK_MIN:
        return
    picked = []
    for i in _random.sample(range(total), COLLISION_SAMPLE):
        k = _bisect(starts, i) - 1
        picked.append(pools[k][i - starts[k]])
    groups_by_hash: dict[int, list[Any]] = {}
    for item in picked:
        groups_by_hash.setdefault(hash(item), []).append(item)
    pairs = 0
    for group in groups_by_hash.values():
        if len(group) > 1:
            distinct = len(set(group))  # at most COLLISION_SAMPLE items: bounded cost
            pairs += distinct * (distinct - 1) // 2
    if pairs and pairs * (total / COLLISION_SAMPLE) ** 2 > MAX_COLLISION_WORK:
        st.exceeded("hash_collisions", MAX_COLLISION_WORK, "too many distinct keys with the same hash")


_NUMBERS = frozenset({int, float, bool})
CHARS_PER_STEP = 64  # characters compared (memcmp) per step charged


def charge_comparisons(st: RunState, items: Any, sorting: bool, texts_only: bool = False) -> None:
    """Charge, before the C call, the comparisons a sort (n log n) or min/max (n) makes.

    A comparison of two texts costs their common length: sorting a list holding one 1 MB
    string 100k times (or max() over it) is one C call of 100k+ memcmps of 1 MB each, so
    every comparison round is also charged the texts' total length (``texts_only``: only
    that, the count having been charged already)."""
    n = len(items)
    if n < 2:
        return
    rounds = n.bit_length() if sorting else 1
    chars = 0
    if type(next(iter(items))) not in _NUMBERS:
        try:
            chars = sum(map(len, items))
        except TypeError:  # numbers and texts together: the first comparison raises
            chars = 0
    st.charge((0 if texts_only else n * rounds) + chars * rounds // CHARS_PER_STEP)


KEY_CHUNK = 1024  # key calls between two clock checks


def _keys(st: RunState, items: Any, key: Any, sorting: bool) -> list[Any]:
    """``[key(x) for x in items]``, charged first (one call and the comparisons per item),
    with a clock check every KEY_CHUNK calls: a key such as ``str`` is a C-level call that
    counts no tick of its own."""
    n = len(items)
    st.charge(n + n * (n.bit_length() if sorting else 1))
    if type(items) is not list and type(items) is not tuple:
        items = list(items)
    keys: list[Any] = []
    for start in range(0, n, KEY_CHUNK):
        keys.extend(map(key, items[start : start + KEY_CHUNK]))
        st.check_clock()
    charge_comparisons(st, keys, sorting, texts_only=True)
    return keys


def sort_items(st: RunState, items: Any, key: Any, reverse: Any) -> list[Any]:
    """``sorted(items, key=key, reverse=reverse)`` with its comparisons charged first.

    With a key, the keys are computed first, so what gets charged is the comparisons of
    the keys the sort will actually compare."""
    if key is None:
        charge_comparisons(st, items, True)
        return sorted(items, reverse=reverse)
    keys = _keys(st, items, key, True)
    order = sorted(range(len(keys)), key=keys.__getitem__, reverse=reverse)  # stable, like sorted()
    if type(items) is not list and type(items) is not tuple:
        items = list(items)
    return [items[i] for i in order]


def extreme_item(st: RunState, fn: Any, items: Any, key: Any) -> Any:
    """``min``/``max`` (``fn``) of non-empty ``items`` with its comparisons charged first."""
    if key is None:
        charge_comparisons(st, items, False)
        return fn(items)
    keys = _keys(st, items, key, False)
    if type(items) is not list and type(items) is not tuple:
        items = list(items)
    return items[fn(range(len(keys)), key=keys.__getitem__)]  # the first of equal ones, like fn


def charge_int_sum(st: RunState, items: Any) -> None:
    """``sum()`` of big ints: each addition costs the bits of the running total."""
    if len(items) >= 64:
        try:
            bits = sum(map(int.bit_length, items))
        except TypeError:  # floats and the like: cheap additions
            return
        st.charge(bits // 1024)


def check_division(st: RunState, a: int, b: int) -> None:
    """Long division costs (bits of a) x (bits of b): refuse operands past the int limit
    (only ``-`` and ``sum`` can get there, one bit at a time) before CPython starts."""
    if a.bit_length() > st.max_bits or b.bit_length() > st.max_bits:
        st.check_bits(max(a.bit_length(), b.bit_length()))


def check_tuple_depth(st: RunState, t: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse ``t`` if tuples nest more than MAX_TUPLE_DEPTH deep. Charged per tuple visited."""
    for item in t:
        if type(item) is tuple:
            break
    else:
        return t  # flat: the common case, no walk
    depths: dict[int, int] = {}  # id -> depth, for tuples reachable from t (alive during the walk)
    stack: list[tuple[tuple[Any, ...], bool]] = [(t, False)]
    visited = 0
    while stack:
        node, done = stack.pop()
        if done:
            depth = 1 + max((depths[id(c)] for c in node if type(c) is tuple), default=0)
            if depth > MAX_TUPLE_DEPTH:
                st.exceeded("nesting", MAX_TUPLE_DEPTH, "tuples nested too deeply")
            depths[id(node)] = depth
            continue
        if id(node) in depths:
            continue
        visited += 1
        if visited >= 10_000:  # a wide structure: charge as we go, not only at the end
            st.charge(visited)
            visited = 0
        stack.append((node, True))
        stack.extend((c, False) for c in node if type(c) is tuple and id(c) not in depths)
    st.charge(visited)
    return t


def dict_from_pairs(st: RunState, pairs: Any) -> dict[Any, Any]:
    """``dict(pairs)`` with the key-collision check (pairs already materialized)."""
    if type(pairs) is dict:
        return dict(pairs)
    if len(pairs) >= COLLISION_CHECK_MIN:
        keys = []
        for pair in pairs:
            if type(pair) is not tuple and type(pair) is not list:
                break  # dict() reports the malformed element itself
            keys.append(pair[0] if len(pair) else None)
        else:
            check_collisions(st, keys)
    return dict(pairs)


def check_pairs_depth(st: RunState, pairs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    for pair in pairs:
        check_tuple_depth(st, pair)
    return pairs

