"""The package imports only downward (docs/design.md, "Layering"): every module has a layer, and a
module may import only modules of a lower layer (or its own, for the contracts and core helpers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "puma_ray"

# lowest first; a module imports only from layers <= its own (stages strictly below their own)
LAYERS = {
    1: ["errors", "config", "runs", "space", "data.schema", "prompt_store"],  # contracts
    2: ["templates", "llm", "modules", "metrics", "training", "selection", "strategies", "stats", "tokenizer",
        "tiny_models", "gguf_models", "hf", "pretrain", "data.prep", "data.sources", "data.synthetic", "data.index",
        "data.subset"],  # core: no Ray
    3: ["ray_utils", "data.pipeline", "train_prompts", "train_adapter", "train_wiring", "scoring", "migration"],
    4: ["stages.data", "stages.models", "stages.prompts", "stages.evaluate", "stages.migrate", "stages.adapter"],
    5: ["stages.select"],  # uses evaluate for the source-loss strategies
    6: ["stages.trial", "stages.chain"],
    7: ["stages.sweep", "stages.bench"],
    8: ["stages.demo"],
    9: ["cli"],  # the face: nothing imports it
}
LAYER_OF = {m: k for k, mods in LAYERS.items() for m in mods}
NO_RAY = LAYERS[1] + LAYERS[2]
SAME_LAYER_OK = {1, 2, 3}  # helpers of one layer may use each other; stages may not


def imports_of(source: str) -> set[str]:
    """puma_ray modules a source imports (`from puma_ray.x import y` gives x, or x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("puma_ray"):
            base = node.module[len("puma_ray"):].lstrip(".")
            names = [f"{base}.{a.name}" if base else a.name for a in node.names] + ([base] if base else [])
        elif isinstance(node, ast.Import):
            names = [a.name[len("puma_ray."):] for a in node.names if a.name.startswith("puma_ray.")]
        found |= {n for n in names if n in LAYER_OF}
    return found


def violations(module: str, source: str) -> list[str]:
    """Upward (or same-layer stage) imports of `module`, and Ray imported by a no-Ray layer."""
    mine, bad = LAYER_OF[module], []
    for dep in sorted(imports_of(source) - {module}):
        theirs = LAYER_OF[dep]
        if theirs > mine or (theirs == mine and mine not in SAME_LAYER_OK):
            bad.append(f"{module} (layer {mine}) imports {dep} (layer {theirs})")
    if module in NO_RAY and any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                                any((getattr(n, "module", None) or a.name).split(".")[0] == "ray" for a in n.names)
                                for n in ast.walk(ast.parse(source))):
        bad.append(f"{module} (layer {mine}) imports ray")
    return bad


def package_modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name != "__init__":
            out[".".join(rel.parts)] = path
    return out


def test_every_module_has_a_layer():
    assert sorted(set(package_modules()) - set(LAYER_OF)) == [], "add new modules to LAYERS (and docs/design.md)"
    assert sorted(set(LAYER_OF) - set(package_modules())) == []


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_module_imports_only_downward(module):
    assert violations(module, package_modules()[module].read_text()) == []


def test_the_check_catches_an_upward_import():
    # a core module reaching up into a stage, a stage importing its sibling, and Ray in the core
    assert violations("stats", "from puma_ray.stages.bench import run_bench\n") == \
        ["stats (layer 2) imports stages.bench (layer 7)"]
    assert violations("stages.adapter", "from puma_ray.stages.prompts import run_name\n") == \
        ["stages.adapter (layer 4) imports stages.prompts (layer 4)"]
    assert violations("modules", "import ray\n") == ["modules (layer 2) imports ray"]
    assert violations("stages.trial", "from puma_ray.stages import adapter\n") == []  # downward: fine
