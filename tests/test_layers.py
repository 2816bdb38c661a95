"""The package imports only downward (docs/design.md, "Layout"): each folder is one part of the pipeline
and may import only the folders below it (and itself); the core never imports Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "puma_ray"

# lowest first; a unit (a folder, or a module at the package root) imports only from lower ranks and itself
RANKS = {
    "errors": 0,
    "config": 1, "runtime": 1,  # stage schemas; run directories, cost records, logging, Ray start
    "data": 2,  # the dataset contract, sources, the data pipeline
    "core": 3,  # models, templates, heads, prompt table, adapter, metrics, tasks, scoring: no Ray
    "store": 4,  # the prompt store contract
    "train": 5,  # Ray Train + DeepSpeed wiring and the worker loops
    "select": 6,  # selection math, inputs and strategies
    "migrate": 7,  # bulk migration actors
    "stages": 8,  # one function per stage: config -> build -> run -> report
    "experiments": 9,  # trials, sweep, bench, demo, claims, statistics: many stage runs
    "cli": 10,  # the face: nothing imports it
}
# inside a folder, modules may use each other, except where an order is given: then only lower ones
WITHIN = {
    "stages": {"select": 1, "chain": 2},  # select runs evaluate for the loss strategies; chain runs them all
    "experiments": {"trial": 1, "selection_stats": 1, "bench_methods": 1, "claims": 2, "sweep": 2, "bench_cost": 2,
             "bench_report": 3, "bench": 4, "demo": 5},
}
NO_RAY = ("errors", "config", "core", "store")


def unit_of(module: str) -> str:
    return module.split(".")[0]


def imports_of(source: str) -> set[str]:
    """puma_ray modules a source imports (`from puma_ray.x import y` gives x and x.y)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "puma_ray":
            base = node.module[len("puma_ray"):].lstrip(".")
            found |= {f"{base}.{a.name}" if base else a.name for a in node.names} | ({base} if base else set())
        elif isinstance(node, ast.Import):
            found |= {a.name[len("puma_ray."):] for a in node.names if a.name.startswith("puma_ray.")}
    modules = set(package_modules())
    return {m for m in found if m in modules or m in RANKS}


def imports_ray(source: str) -> bool:
    return any((getattr(n, "module", None) or a.name).split(".")[0] == "ray"
               for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names)


def violations(module: str, source: str) -> list[str]:
    """Upward imports of `module` (folder rank, then order inside its folder), and Ray in a no-Ray unit."""
    unit, bad = unit_of(module), []
    for dep in sorted(imports_of(source)):
        theirs = unit_of(dep)
        if RANKS[theirs] > RANKS[unit] or (theirs != unit and RANKS[theirs] == RANKS[unit]):
            bad.append(f"{module} ({unit}, rank {RANKS[unit]}) imports {dep} ({theirs}, rank {RANKS[theirs]})")
        elif theirs == unit and unit in WITHIN and dep.count(".") == 1 and dep != module:
            order = WITHIN[unit]
            mine, other = order.get(module.split(".")[1], 0), order.get(dep.split(".")[1], 0)
            if other >= mine:
                bad.append(f"{module} imports {dep}: inside {unit}/ only modules of a lower order ({other} >= {mine})")
    if unit in NO_RAY and imports_ray(source):
        bad.append(f"{module} ({unit}) imports ray")
    return bad


def package_modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name != "__init__":
            out[".".join(rel.parts)] = path
    return out


def test_every_module_is_in_a_ranked_folder():
    assert sorted({unit_of(m) for m in package_modules()} - set(RANKS)) == [], \
        "a new folder needs its rank here and in docs/design.md"


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_module_imports_only_downward(module):
    assert violations(module, package_modules()[module].read_text()) == []


def test_the_check_catches_an_upward_import():
    # the core reaching up into a stage, training wiring taken from a stage, a stage importing its sibling,
    # the data contract importing the model core, and Ray in the core
    assert violations("core.metrics", "from puma_ray.experiments.bench import run_bench\n") == \
        ["core.metrics (core, rank 3) imports experiments.bench (experiments, rank 9)"]
    assert violations("stages.adapter", "from puma_ray.stages.prompts import run_name\n") == \
        ["stages.adapter imports stages.prompts: inside stages/ only modules of a lower order (0 >= 0)"]
    assert violations("data.schema", "from puma_ray.core.llm import FrozenLM\n") == \
        ["data.schema (data, rank 2) imports core.llm (core, rank 3)"]
    assert violations("config", "from puma_ray.runtime.runs import log\n") == \
        ["config (config, rank 1) imports runtime.runs (runtime, rank 1)"]
    assert violations("core.modules", "import ray\n") == ["core.modules (core) imports ray"]
    assert violations("experiments.trial", "from puma_ray.stages import adapter\n") == []  # downward: fine
    assert violations("stages.chain", "from puma_ray.stages.select import run_select\n") == []


def test_the_core_runs_without_ray():
    """Importing every module of the no-Ray units (and what they import) never loads Ray."""
    mods = [f"puma_ray.{m}" for m in package_modules() if unit_of(m) in NO_RAY]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """module -> the package modules (and packages) it imports, anywhere in it (function-level imports included)."""
    return {m: {d for d in imports_of(src) if d in modules and d != m} for m, src in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles found by a depth-first search (a back edge closes one), each as the modules on it; a graph
    has a cycle exactly when this finds at least one."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                cycle = path[path.index(dep):] + [dep]
                if {frozenset(c) for c in found} & {frozenset(cycle)} == set():
                    found.append(cycle)
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def package_sources() -> dict[str, str]:
    """Every module's source, packages' `__init__` included under the package's name (`config`, `core`, ...):
    `from puma_ray.config import X` is an edge to the package, which imports its modules."""
    inits = {".".join(p.relative_to(PACKAGE).parent.parts): p for p in PACKAGE.rglob("__init__.py")
             if p.parent != PACKAGE}
    return {m: p.read_text() for m, p in {**package_modules(), **inits}.items()}


def test_no_import_cycle():
    """No module imports (even inside a function) a module that imports it back, directly or not."""
    assert cycles(import_graph(package_sources())) == []


def test_the_cycle_check_sees_imports_through_a_package():
    """An edge to `puma_ray.config` (the package) reaches the modules its __init__ imports."""
    graph = import_graph({**package_sources(), "config.base": "from puma_ray.config import DataConfig\n"})
    assert any("config" in c and "config.base" in c for c in cycles(graph))


def test_the_cycle_check_catches_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_over_450_lines():
    """A module that long holds more than one idea: split it by what it does."""
    long = {m: n for m, p in package_modules().items() if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
