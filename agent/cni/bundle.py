"""The ``mcast-cni`` executable as a zipapp, built from the installed packages.

This module owns what goes into the plugin executable that ``mcast-cni-install`` writes into
the node's CNI bin dir, and its bytes: ``#!/usr/bin/env python3`` (or ``--interpreter``), then
a zip holding ``__main__.py`` (a python-version guard, then ``agent.cni.plugin.main``), the
plugin's import closure among our packages (``agent.cni``, ``agent.api.client``/``types``,
``agent.interfacestore``, ``wire`` ...: found by reading their ``import`` statements, so a new
import in the plugin is shipped without a list to keep), every third-party package it imports,
whole (pyroute2), and ``BUILD-INFO`` (package versions). Sources only (the node's python
compiles them; a ``.pyc`` would tie the zip to one interpreter), sorted, with fixed timestamps:
the same installed packages give the same bytes, so a reinstall writes nothing.

Known limitation: the kubelet runs the plugin on the host, so every node needs python3 >= 3.10
(the plugin's modules evaluate ``X | Y`` type unions at import; pyroute2 itself needs 3.9). An
older interpreter gets a CNI error naming the requirement instead of a traceback. A static
forwarder binary that speaks to the agent socket is future work.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import io
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_INTERPRETER = "/usr/bin/env python3"
NODE_PYTHON_MIN = (3, 10)
FIRST_PARTY = ("agent", "wire")  # the packages of ours the plugin may import from
PLUGIN_MODULE = "agent.cni.plugin"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say


class BundleError(Exception):
    """The plugin cannot be built from what is installed."""


def _package_dir(top: str) -> Path:
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"package {top!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _first_party_file(module: str) -> Path | None:
    top, *rest = module.split(".")
    base = _package_dir(top).joinpath(*rest)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None  # a name imported from a module, not a module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` except the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for c in child.orelse:
                yield c
                yield from _walk(c)
            continue
        yield child
        yield from _walk(child)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Dotted names ``module`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    out: set[str] = set()
    for node in _walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return out


def plugin_closure(root_module: str = PLUGIN_MODULE) -> tuple[dict[str, Path], set[str]]:
    """Our modules the plugin loads (name → file) and the third-party top-level packages."""
    files: dict[str, Path] = {}
    third_party: set[str] = set()
    todo = [root_module]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in files:
                continue
            path = _first_party_file(name)
            if path is None:
                if i == len(parts):
                    break  # `from agent.cni.spec import CniError`: not a module
                raise BundleError(f"module {name!r} not found")
            files[name] = path
            names = imported_names(path.read_text(), name, path.name == "__init__.py")
            for imported in names:
                top = imported.split(".")[0]
                if top in FIRST_PARTY:
                    todo.append(imported)
                elif top and top != "__future__" and top not in sys.stdlib_module_names:
                    third_party.add(top)
    return files, third_party


def _third_party_files(top: str) -> Iterator[tuple[str, Path]]:
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise BundleError(f"the plugin imports {top!r}, which is not installed")
    if not spec.submodule_search_locations:
        if spec.origin is None or not spec.origin.endswith(".py"):
            raise BundleError(f"{top!r} is not a pure-Python module ({spec.origin})")
        yield f"{top}.py", Path(spec.origin)
        return
    root = Path(next(iter(spec.submodule_search_locations)))
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        if path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            raise BundleError(f"{top!r} has a compiled module ({path}): cannot run from a zip")
        if path.suffix == ".py":
            yield f"{top}/{path.relative_to(root).as_posix()}", path


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


MAIN_PY = f"""\
# mcast-cni: written by mcast-cni-install; rebuilt on every install.
import sys
if sys.version_info < {NODE_PYTHON_MIN!r}:
    sys.stdout.write('{{"cniVersion": "1.0.0", "code": 100, "msg": "mcast-cni needs python3 '
                     '>= {".".join(map(str, NODE_PYTHON_MIN))} on the node", "details": '
                     '"found python %s"}}\\n' % sys.version.split()[0])
    sys.exit(1)
from {PLUGIN_MODULE} import main
sys.exit(main())
"""


def build_plugin(interpreter: str = DEFAULT_INTERPRETER) -> bytes:
    """The plugin executable: shebang + zip of the closure; the same input gives the same bytes."""
    files, third_party = plugin_closure()
    entries: dict[str, bytes] = {}
    for name, path in files.items():
        arc = name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        entries[arc] = path.read_bytes()
    for top in sorted(third_party):
        for arc, path in _third_party_files(top):
            entries[arc] = path.read_bytes()
    versions = {"kube-mcast": _version("kube-mcast"), **{t: _version(t) for t in third_party}}
    entries["__main__.py"] = MAIN_PY.encode()
    entries["BUILD-INFO"] = "".join(f"{k} {v}\n" for k, v in sorted(versions.items())).encode()
    buf = io.BytesIO()
    buf.write(f"#!{interpreter}\n".encode())
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc in sorted(entries):
            info = zipfile.ZipInfo(arc, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, entries[arc])
    return buf.getvalue()


