"""The docs say what the code does: every test they cite exists, the README stays a guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_test_exists(doc):
    """A `test_file.py::test_name` in a doc names a test function that is in that file."""
    missing = []
    for file, name in re.findall(r"(test_\w+\.py)::(test_\w+)", doc.read_text()):
        path = REPO / "tests" / file
        if not path.is_file() or not re.search(rf"^\s*def {name}\(", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc.name} cites tests that do not exist: {missing}"


def test_the_readme_is_a_guide_without_run_history():
    """README.md <= 200 lines, no commit hashes or dated runs (history lives in git)."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a dated run in README.md"
    assert not re.search(r"\b(commit|at) [0-9a-f]{7,40}\b", text), "a commit hash in README.md"


FOLDERS = "config|runtime|data|core|store|train|select|migrate|stages|experiments"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_module_and_name_exists(doc):
    """`folder/module` and `folder/module.name` in a doc name a module of puma_ray/ (and a name defined in it)."""
    missing = []
    for folder, module, name in re.findall(rf"`(?:puma_ray/)?({FOLDERS})/(\w+)(?:\.py)?(?:\.(\w+))?", doc.read_text()):
        path = REPO / "puma_ray" / folder / f"{module}.py"
        if not path.is_file() and not (REPO / "puma_ray" / folder / module).is_dir():
            missing.append(f"{folder}/{module}")
        elif name and path.is_file() and not re.search(rf"^\s*(def|class) {name}\b|^{name}\b", path.read_text(), re.M):
            missing.append(f"{folder}/{module}.{name}")
    assert not missing, f"{doc.name} cites what puma_ray/ does not have: {sorted(set(missing))}"
