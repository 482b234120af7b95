"""aiot_edge must never import torch: every module imports with torch made unimportable."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import aiot_edge

SCRIPT = """
import sys, importlib, pkgutil
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
import aiot_edge
for mod in pkgutil.walk_packages(aiot_edge.__path__, "aiot_edge."):
    importlib.import_module(mod.name)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", len(list(pkgutil.walk_packages(aiot_edge.__path__))))
"""


def test_edge_imports_without_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_edge_has_its_own_distribution():
    root = Path(aiot_edge.__file__).resolve().parents[1]
    assert (root / "pyproject.toml").exists()
    assert "torch" not in (root / "pyproject.toml").read_text()
    assert list(pkgutil.walk_packages(aiot_edge.__path__))
