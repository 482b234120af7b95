"""aiot_w2v2.loading: model loading dispatches one way (issue 15: `asr/ctc_model.py`, `checkpoint.py` and
`convert/__init__.py` imported each other), checked on the import statements themselves (those inside
functions included) and by importing each module first in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aiot_w2v2"
LOADERS = ("aiot_w2v2.checkpoint", "aiot_w2v2.convert", "aiot_w2v2.asr.ctc_model", "aiot_w2v2.loading")


def module_file(name: str) -> Path:
    path = PACKAGE.parent / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(name: str, source: str | None = None) -> set[str]:
    """The aiot_w2v2 modules `name` imports anywhere in its file (module level or inside functions);
    `from .. import load_model` counts as importing `aiot_w2v2.loading`, where load_model lives."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aiot_w2v2"))
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("aiot_w2v2"):
                continue
            for alias in node.names:  # `from . import checkpoint` imports a module; `load_model` is loading's
                sub = f"{target}.{alias.name}"
                found.add("aiot_w2v2.loading" if alias.name == "load_model" else
                          sub if module_file(sub).exists() else target)
    return found


def reaches(start: str, goal: str, graph: dict[str, set[str]]) -> bool:
    todo, seen = [start], set()
    while todo:
        for nxt in graph.get(todo.pop(), set()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def package_graph() -> dict[str, set[str]]:
    """Every aiot_w2v2 module -> the aiot_w2v2 modules it imports (a package's import includes its __init__)."""
    names = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name in names:
        deps = set()
        for dep in imports_of(name):
            deps.add(dep)
            parts = dep.split(".")
            # the packages on the way run their __init__ first, unless the importer lives inside them
            deps.update(pkg for pkg in (".".join(parts[:i]) for i in range(2, len(parts)))
                        if not name.startswith(pkg + "."))
        graph[name] = {d for d in deps if d in names and d != name and d != "aiot_w2v2"}
    return graph


def test_loading_modules_import_one_way():
    graph = package_graph()
    # the dispatcher sits above the three; none of them reaches it or each other in a circle
    for low in LOADERS[:-1]:
        assert not reaches(low, "aiot_w2v2.loading", graph), f"{low} imports aiot_w2v2.loading (or load_model)"
        assert not reaches(low, low, graph), f"{low} is on an import circle"
    assert not reaches("aiot_w2v2.checkpoint", "aiot_w2v2.asr.ctc_model", graph)
    assert not reaches("aiot_w2v2.asr.ctc_model", "aiot_w2v2.convert", graph)
    assert {"aiot_w2v2.checkpoint", "aiot_w2v2.convert", "aiot_w2v2.asr.ctc_model"} <= graph["aiot_w2v2.loading"]


def test_the_graph_check_sees_the_old_circle():
    # the circle issue 15 named ran through imports inside functions (as checkpoint.py and
    # asr/ctc_model.py had them); the check must see those
    old_checkpoint = "def load_pretrained():\n    from .asr.ctc_model import ctc_from_checkpoint\n"
    old_ctc_model = "def load_ctc_model():\n    from .. import load_model\n    from ..convert import read_foreign\n"
    assert imports_of("aiot_w2v2.checkpoint", old_checkpoint) == {"aiot_w2v2.asr.ctc_model"}
    assert imports_of("aiot_w2v2.asr.ctc_model", old_ctc_model) == {"aiot_w2v2.loading", "aiot_w2v2.convert"}


@pytest.mark.parametrize("module", LOADERS)
def test_each_loader_module_imports_first_in_a_fresh_interpreter(module):
    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
