"""Upload-time policy: which source is accepted (FIRST CUT, hardened version follows)."""

from __future__ import annotations

import ast

from RestrictedPython import compile_restricted_exec

from sandbox.api import CompileIssue

MAX_SOURCE_BYTES = 64 * 1024
SCRIPT_FILENAME = "<script>"


def check_source(source: str) -> list[CompileIssue]:
    try:
        if type(source) is not str:
            return [CompileIssue(1, 0, "source must be text")]
        if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
            return [CompileIssue(1, 0, f"source is larger than {MAX_SOURCE_BYTES} bytes")]
        tree = ast.parse(source, SCRIPT_FILENAME)
        result = compile_restricted_exec(source, SCRIPT_FILENAME)
        issues = [CompileIssue(1, 0, e) for e in result.errors]
        if not any(isinstance(n, ast.FunctionDef) and n.name == "handle" for n in tree.body):
            issues.append(CompileIssue(1, 0, "no top-level 'def handle(req)'"))
        return issues
    except SyntaxError as e:
        return [CompileIssue(e.lineno or 1, max((e.offset or 1) - 1, 0), f"syntax error: {e.msg}")]
    except BaseException as e:  # RecursionError, MemoryError, ValueError (NUL bytes)
        return [CompileIssue(1, 0, f"source cannot be compiled ({type(e).__name__})")]
