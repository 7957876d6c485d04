"""The scheduling core imports no Ray, psutil, gRPC or SQLite, and reads no clock."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_ANYWHERE = {"ray", "psutil", "grpc", "sqlite3"}
# Modules written by us that the core reaches may not even import these directly.
FORBIDDEN_DIRECT = FORBIDDEN_ANYWHERE | {"time", "datetime", "asyncio", "random", "os"}
PROJECT = ("mesh", "agent", "scheduler")


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run at import: not function bodies, not `if TYPE_CHECKING:` blocks."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            out.extend(_top_level(node.body + node.orelse))
        elif isinstance(node, ast.Try):
            out.extend(_top_level(node.body + node.orelse + node.finalbody))
        elif isinstance(node, ast.ClassDef):
            out.extend(_top_level(node.body))
        else:
            out.append(node)
    return out


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in _top_level(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _reachable_from_core() -> dict[str, set[str]]:
    core = [f"scheduler.core.{p.stem}" for p in (ROOT / "scheduler" / "core").glob("*.py")]
    seen: dict[str, set[str]] = {}
    todo = list(core)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = _imports(path)
        # A package's __init__ runs on import too.
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
        todo.extend(i for i in seen[name] if i.split(".")[0] in PROJECT)
    return seen


def test_core_modules_import_nothing_forbidden() -> None:
    bad = {
        module: sorted(i for i in imports if i.split(".")[0] in FORBIDDEN_DIRECT)
        for module, imports in _reachable_from_core().items()
    }
    assert {m: b for m, b in bad.items() if b} == {}


def test_importing_the_core_loads_no_heavy_runtime() -> None:
    code = ("import sys, scheduler.core.state, scheduler.core.placement; "
            "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert FORBIDDEN_ANYWHERE.isdisjoint(out), FORBIDDEN_ANYWHERE.intersection(out)
