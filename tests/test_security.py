"""Security rules checked on the code itself: no pickle loads of user files anywhere in the package, jobs or
benchmarks, and local Ray heads bind their dashboards to 127.0.0.1. (Logs free of prompt values:
test_migration.py::test_migrate_and_evaluate_logs_hold_no_prompt_values.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CODE = [p for d in ("puma_ray", "jobs", "benchmarks", "scripts") for p in sorted((REPO / d).rglob("*.py"))]


def unsafe_loads(source: str) -> list[str]:
    """Calls that unpickle: pickle/cloudpickle/joblib/dill loads, pandas.read_pickle, torch.load without
    weights_only=True, numpy.load with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if re.fullmatch(r"(c?pickle|cloudpickle|joblib|dill)\.(load|loads|Unpickler)|(pd|pandas)\.read_pickle", name):
            found.append(name)
        elif name.endswith("torch.load") and kw.get("weights_only") != "True":
            found.append(f"{name} without weights_only=True")
        elif re.fullmatch(r"(np|numpy)\.load", name) and kw.get("allow_pickle") not in (None, "False"):
            found.append(f"{name}(allow_pickle=...)")
    return found


def test_the_scanner_finds_each_kind_of_unpickling_call():
    bad = ("import pickle, torch, numpy as np, pandas as pd\npickle.load(f)\ntorch.load('x.pt')\n"
           "torch.load('x.pt', weights_only=False)\nnp.load('a.npy', allow_pickle=True)\npd.read_pickle('p')\n")
    assert len(unsafe_loads(bad)) == 5
    assert unsafe_loads("import torch, numpy as np\ntorch.load('x.pt', weights_only=True)\nnp.load('a.npy')\n") == []


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_unpickles_files(path):
    assert not unsafe_loads(path.read_text()), f"{path.relative_to(REPO)}: {unsafe_loads(path.read_text())}"


def test_local_ray_heads_bind_their_dashboard_to_localhost():
    scripts = [p for d in ("cluster", "scripts") for p in sorted((REPO / d).glob("*.sh"))]
    heads = [(p, line) for p in scripts for line in p.read_text().splitlines()
             if re.search(r"ray start\b.*--head", line) and not line.lstrip().startswith("#")]
    assert heads, "no local `ray start --head` found: update this test"
    for p, line in heads:
        assert re.search(r"--dashboard-host[ =]127\.0\.0\.1", line), f"{p.name}: {line.strip()}"
