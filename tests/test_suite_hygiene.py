"""The suite's own rules, checked on its source: peer libraries only in ``test_peer_*.py`` files.

A missing peer (captum, pytorch-grad-cam, Quantus, zennit, PAIR saliency, ...) may skip its parity
tests, never faithmap's own: so no other test file may import one, at module level or inside a test.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PEERS = ("captum", "pytorch_grad_cam", "quantus", "zennit", "saliency", "torchray")
HERE = pathlib.Path(__file__).parent


def _imported_modules(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value.split(".")[0])
    return out


OWN = sorted(p for p in HERE.glob("test_*.py") if not p.name.startswith("test_peer_"))


@pytest.mark.parametrize("path", OWN, ids=[p.name for p in OWN])
def test_own_tests_do_not_import_peer_libraries(path):
    used = _imported_modules(ast.parse(path.read_text())) & set(PEERS)
    assert not used, f"{path.name} imports {sorted(used)}: move those tests to a test_peer_<library>.py file"


def test_the_rule_sees_peer_imports():
    src = "import captum\nfrom quantus import x\ndef f():\n    import pytest\n    pytest.importorskip('zennit.rules')\n"
    assert _imported_modules(ast.parse(src)) & set(PEERS) == {"captum", "quantus", "zennit"}
