"""docs/reliability.md's table lists exactly the badinput tests, each described as the table needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.reliability_table import KINDS

ROOT = Path(__file__).resolve().parents[1]


def badinput_tests() -> dict[str, str]:
    """Test function name -> first docstring paragraph, of every module marked ``pytestmark = pytest.mark.badinput``."""
    out = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        marked = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                     and "badinput" in ast.unparse(n.value) for n in tree.body)
        if marked:
            for n in tree.body:
                if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"):
                    out[n.name] = " ".join((ast.get_docstring(n) or "").split("\n\n")[0].split())
    return out


def test_docs_table_lists_every_badinput_test():
    tests = badinput_tests()
    assert len(tests) >= 30
    for name, doc in tests.items():
        parts = doc.split(" | ")
        assert len(parts) == 3 and parts[0] in KINDS, f"{name}: docstring must start with '<kind> | <input> | <check>'"
    text = (ROOT / "docs" / "reliability.md").read_text()
    documented = set(re.findall(r"\| `(test_\w+)` \|$", text, re.M))
    assert documented == set(tests), (f"regenerate the table (docs/reliability.md): missing "
                                      f"{sorted(set(tests) - documented)}, stale {sorted(documented - set(tests))}")
    for name, doc in tests.items():
        kind, tried, check = doc.split(" | ")
        assert f"| {kind} | {tried} | {check} |" in text, f"{name}: the table's text differs from the test's docstring"
