"""pipeline/ stays pure: no os-ken (statically and at import), no module-level mutable state.

Only agent/ talks to os-ken. Module-level lists, dicts and sets would be shared, mutable state
between tests and callers; constants are tuples, frozensets or MappingProxyType instead.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
FILES = sorted(PIPELINE.glob("*.py"))
FORBIDDEN_IMPORTS = ("os_ken", "ryu", "eventlet")
MUTABLE_CALLS = {"list", "dict", "set", "defaultdict", "OrderedDict", "Counter", "deque",
                 "bytearray"}


def _ids(path: Path) -> str:
    return path.name


def test_pipeline_has_modules() -> None:
    assert {"model.py", "render.py", "diff.py", "groupsplit.py"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_no_os_ken_import(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names = [getattr(a, "value", "") for a in node.args[:1]]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN_IMPORTS, f"{path.name} imports {name}"


def _is_mutable(value: ast.expr) -> bool:
    if isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp |
                  ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in MUTABLE_CALLS
    return False


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_no_module_level_mutable_state(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    problems = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) and node.value:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names == ["__all__"]:
                continue  # read by tools, never written
            if isinstance(node, ast.AugAssign) or _is_mutable(node.value):
                problems.append(f"line {node.lineno}: {', '.join(names) or '?'}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            problems.append(f"line {node.lineno}: global {', '.join(node.names)}")
    assert not problems, f"{path.name} has module-level mutable state: {problems}"


def test_importing_pipeline_loads_no_os_ken() -> None:
    modules = [f"pipeline.{f.stem}" for f in FILES if f.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN_IMPORTS!r})\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PIPELINE.parent, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"importing pipeline loaded {res.stdout.strip()}"
