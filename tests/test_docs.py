"""The docs cite tests as their evidence: those tests exist, and the known gaps are the
tests marked as expected to fail."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+))?")


def defined_tests(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def is_xfail(test: ast.FunctionDef) -> bool:
    return any("xfail" in ast.unparse(d) for d in test.decorator_list)


def test_every_test_the_docs_cite_exists() -> None:
    cited = {(doc.name, m.group(1), m.group(2))
             for doc in DOCS for m in CITED.finditer(doc.read_text())}
    assert cited, "the docs cite no tests"
    missing = []
    for doc, file, name in sorted(cited, key=str):
        path = ROOT / file
        if not path.is_file() or (name and name not in defined_tests(path)):
            missing.append(f"{doc}: {file}{'::' + name if name else ''}")
    assert missing == []


def test_the_known_gaps_are_exactly_the_tests_marked_xfail() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    section = text.split("\n## Known gaps\n", 1)[1].split("\n## ", 1)[0]
    listed = {f"{m.group(1)}::{m.group(2)}" for m in CITED.finditer(section) if m.group(2)}
    marked = {f"{path.relative_to(ROOT)}::{name}"
              for path in sorted((ROOT / "tests").rglob("test_*.py"))
              for name, test in defined_tests(path).items() if is_xfail(test)}
    assert listed == marked
