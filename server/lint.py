"""Offline warnings for scripts: fields the command cannot change, and known OpenIM traps.

Warnings never block an upload (the sandbox policy does that); they point at code that
would be refused at run time (``invalid_result``) or that OpenIM handles surprisingly.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from server.catalog import Command


@dataclass(frozen=True)
class Warning_:
    line: int
    col: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "col": self.col, "message": self.message}


def _returned_fields(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """Field names a script passes to allow(...) or returns in a dict literal."""
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "allow":
            found.extend((kw.arg, kw) for kw in node.keywords if kw.arg)
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
            found.extend(
                (k.value, k) for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
    return found


def warnings(command: Command, source: str) -> list[Warning_]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    out: list[Warning_] = []
    for name, node in _returned_fields(tree):
        line, col = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        if not command.is_before:
            out.append(Warning_(line, col, f"{command.name} is an after callback: returned fields are ignored"))
        elif name not in command.mutable:
            allowed = ", ".join(sorted(command.mutable)) or "none (reject or continue only)"
            out.append(Warning_(line, col, f"{command.name} cannot change {name!r}; mutable fields: {allowed}"))
    return out
