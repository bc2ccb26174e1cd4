"""The sandbox's import rules, read from the source with ``ast``:

- ``sandbox/`` never imports tornado, redis or ``server`` (it is the confined side's code
  and the host's pool, not the web server);
- ``sandbox/host`` never imports ``sandbox.worker`` (that pulls the runtime and
  RestrictedPython into the host; shared constants live in ``sandbox/protocol.py``);
- ``sandbox/worker`` never imports ``sandbox.host``;
- the shared modules (``sandbox/*.py``: api, protocol, kvops, policy) import neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parent.parent / "sandbox"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    package = ".".join(path.relative_to(SANDBOX.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _files(sub: str) -> list[Path]:
    if sub == "shared":
        return sorted(SANDBOX.glob("*.py"))
    return sorted((SANDBOX / sub).rglob("*.py")) if sub else sorted(SANDBOX.rglob("*.py"))


def _hits(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(SANDBOX.parent)} imports {name}"
            for p in files for name in sorted(_imports(p))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_the_rules_see_imports() -> None:
    # Guard against a checker that finds nothing: known imports are seen.
    assert "sandbox.protocol" in _imports(SANDBOX / "host" / "pool.py")
    assert "sandbox.worker.budget" in _imports(SANDBOX / "worker" / "kvapi.py")


@pytest.mark.parametrize("sub, forbidden", [
    ("", ("tornado", "redis", "server")),
    ("host", ("sandbox.worker",)),
    ("worker", ("sandbox.host",)),
    ("shared", ("sandbox.host", "sandbox.worker")),
])
def test_sandbox_import_rules(sub: str, forbidden: tuple[str, ...]) -> None:
    assert _files(sub)
    assert _hits(_files(sub), forbidden) == []
