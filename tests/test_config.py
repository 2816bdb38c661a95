"""Typed configs: coercion, validation messages, YAML/flag/override layering, shipped files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from puma_ray.cli import COMMANDS, job_file
from puma_ray.config import (DataConfig, ModelsConfig, StageConfig, build_config, coerce, field_docs,
                             load_config, parse_override)
from puma_ray.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIG_CLASSES = [cls for cls, _, _ in COMMANDS.values()]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_one_line_docstring(cls):
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
        assert "\n" not in docs[f.name]


@pytest.mark.parametrize("value,tp,expected", [
    ("true", bool, True), ("off", bool, False), (False, bool, False),
    ("12", int, 12), ("1_000_000", int, 1_000_000), (3.0, int, 3),
    ("0.5", float, 0.5), (2, float, 2.0),
    ("null", Optional[int], None), ("None", Optional[int], None), (None, Optional[str], None), ("7", Optional[int], 7),
    ("a,b", list[str], ["a", "b"]), ([1, "2"], list[int], [1, 2]), ("x", list[str], ["x"]),
    ("llama", Literal["llama", "qwen2"], "llama"), (5, str, "5"),
])
def test_coerce_accepts(value, tp, expected):
    assert coerce(value, tp, "k") == expected


@pytest.mark.parametrize("value,tp", [
    ("maybe", bool, ), ("1.5", int), (True, int), ("abc", float), ("mistral", Literal["llama", "qwen2"]),
    (None, int), ([1], str), ("x", list[int]),
])
def test_coerce_rejects_naming_the_key(value, tp):
    with pytest.raises(ConfigError, match=r"^the_key"):
        coerce(value, tp, "the_key")


def test_override_parsing_handles_yaml_scalars_and_lists():
    assert parse_override("users=1000") == ("users", 1000)
    assert parse_override("dedup=false") == ("dedup", False)
    assert parse_override("task=null") == ("task", None)
    assert parse_override("min-user-interactions=5") == ("min_user_interactions", 5)
    assert parse_override("out=a=b") == ("out", "a=b")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("users")


def test_layers_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: synthetic\nout: from_yaml\nusers: 10\nseed: 1\n")
    cfg = load_config(DataConfig, str(path), {"users": "20", "out": "from_flag"}, ("users=30",))
    assert (cfg.out, cfg.users, cfg.seed) == ("from_flag", 30, 1)


def test_unknown_key_names_it_and_lists_allowed():
    with pytest.raises(ConfigError, match=r"unknown key 'userz'.*allowed: .*users"):
        build_config(DataConfig, {"out": "x"}, {"userz": 3})


@pytest.mark.parametrize("overrides,match", [
    ({"valid_fraction": 1.5}, "valid_fraction"),
    ({"users": 0}, "users"),
    ({"source": "movielens"}, "input"),
    ({"source": "mind", "input": "x", "task": "rating"}, "task"),
    ({"out": None}, "out"),
])
def test_data_validation_names_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(DataConfig, {"out": "x"}, overrides)


def test_models_validation():
    with pytest.raises(ConfigError, match="family"):
        ModelsConfig(family="mistral", out="x", text="t")
    with pytest.raises(ConfigError, match="data"):
        ModelsConfig(out="x")
    with pytest.raises(ConfigError, match="kv_heads"):
        ModelsConfig(out="x", text="t", heads=4, kv_heads=3)


def test_bad_yaml_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DataConfig, str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DataConfig, str(tmp_path / "missing.yaml"))


SHIPPED = ("configs", "tune_spaces", "cluster")  # the folders of shipped YAML; run outputs never count


def _shipped_yaml():
    return sorted((REPO / "configs").glob("*.yaml"))


def test_only_shipped_folders_hold_yaml():
    # a new folder of shipped configs must be added to SHIPPED (and so to the loading tests)
    tracked = [p for p in REPO.glob("*/*.yaml") if p.parent.name not in ("runs", "out", ".venv")]
    assert {p.parent.name for p in tracked} <= set(SHIPPED)


@pytest.mark.parametrize("path", _shipped_yaml(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# puma-ray "), f"{path} must start with the command that runs it"
    stage = first.split()[2]
    cfg = load_config(COMMANDS[stage][0], str(path))
    assert isinstance(cfg, StageConfig)
    assert "ray job submit" in path.read_text().splitlines()[1]


@pytest.mark.parametrize("path", sorted((REPO / "cluster").glob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_cluster_definitions_parse(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", sorted((REPO / "tune_spaces").glob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_tune_space_loads_and_starts_with_its_command(path):
    from puma_ray.experiments.space import load_space

    lines = path.read_text().splitlines()
    assert lines[0].startswith("# puma-ray sweep ") and f"--space tune_spaces/{path.name}" in lines[0]
    assert lines[1].startswith("# ray job submit ") and "jobs/sweep.py" in lines[1]
    space = load_space(path)
    assert space.params and space.grid_size() >= 1


def test_every_job_entrypoint_starts_with_its_submit_command():
    for name in COMMANDS:
        job = REPO / job_file(name)
        assert job.is_file(), f"no {job_file(name)}"
        assert job.read_text().startswith("# ray job submit ") and job_file(name) in job.read_text().splitlines()[0]
        assert f'main(["{name}", ' in job.read_text(), f"{job_file(name)} must call the {name} stage"


GPU_CONFIGS = [c for c in CONFIG_CLASSES if "use_gpu" in {f.name for f in dataclasses.fields(c)}]


def test_every_stage_that_can_use_gpus_says_how_many_each_worker_reserves():
    from puma_ray.config import PromptsConfig

    assert len(GPU_CONFIGS) >= 7
    for cls in GPU_CONFIGS:
        field = {f.name: f for f in dataclasses.fields(cls)}.get("gpus_per_worker")
        assert field is not None and field.default == 1.0, cls.__name__
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        PromptsConfig(data="d", model="m", out="o", use_gpu=True, gpus_per_worker=0)


def test_gpus_per_worker_reaches_ray_train_and_every_stage_a_chain_or_trial_runs(monkeypatch, tmp_path):
    """The resources Ray Train is asked for, and the configs chain and sweep trials hand their stages
    (the stages replaced by recorders: nothing runs)."""
    from puma_ray.config import ChainConfig, PromptsConfig
    from puma_ray.stages import adapter, evaluate, migrate, select
    from puma_ray.stages.chain import run_hop
    from puma_ray.train.wiring import build_trainer
    from puma_ray.experiments.trial import TrialSetup, run_steps

    cfg = PromptsConfig(data="d", model="m", out="o", workers=2, use_gpu=True, gpus_per_worker=0.5)
    trainer = build_trainer(lambda c: None, {}, cfg, "n", str(tmp_path), "valid_rmse", "min", {}, [])
    assert trainer.scaling_config.resources_per_worker == {"GPU": 0.5} and trainer.scaling_config.use_gpu
    seen = []
    for module, name in ((select, "run_select"), (adapter, "run_adapter"), (migrate, "run_migrate"),
                         (evaluate, "run_evaluate")):
        monkeypatch.setattr(module, name, lambda c, **kw: seen.append(c))
    run_hop(ChainConfig(data="d", source="s", models=["m"], out="o", use_gpu=True, gpus_per_worker=0.25),
            "s", "m", tmp_path / "hop")
    run_steps(TrialSetup(data="d", sources=["s"], target_model="m", task_metric="rmse", use_gpu=True,
                         gpus_per_worker=0.25), {"strategy": "random", "budget": 10}, tmp_path / "trial")
    gpu = [c for c in seen if "use_gpu" in {f.name for f in dataclasses.fields(c)}]
    assert len(gpu) == 5 and all(c.use_gpu and c.gpus_per_worker == 0.25 for c in gpu), seen


@pytest.mark.parametrize("path", _shipped_yaml(), ids=lambda p: str(p.relative_to(REPO)))
def test_a_file_uri_is_the_path_it_names_and_other_storage_uris_are_kept(path, tmp_path):
    """A shipped config whose paths (every text value naming something under the checkout or runs/) are
    given as file:// URIs is the same config as with the plain absolute paths: a run given URIs is the run
    given paths. An s3:// URI in their place is kept as given (the stage function stages it: test_storage.py),
    never turned into a local folder named "s3:"."""
    cls = COMMANDS[path.read_text().splitlines()[0].split()[2]][0]
    raw = yaml.safe_load(path.read_text())
    where = tmp_path / "a dir"  # a space: URIs quote it
    paths = {k: v for k, v in raw.items() if isinstance(v, str) and "/" in v and not v.startswith("/")}
    paths.update({k: v for k, v in raw.items() if isinstance(v, list) and v and all(isinstance(x, str) and "/" in x
                                                                                    for x in v)})
    assert paths, f"{path}: no path to try"
    absolute = lambda v: [str(where / x) for x in v] if isinstance(v, list) else str(where / v)  # noqa: E731
    uri = lambda v: [(where / x).as_uri() for x in v] if isinstance(v, list) else (where / v).as_uri()  # noqa: E731
    plain = build_config(cls, raw, {k: absolute(v) for k, v in paths.items()})
    as_uris = build_config(cls, raw, {k: uri(v) for k, v in paths.items()})
    assert plain == as_uris and str(where) in str(plain.to_dict())
    key = sorted(paths)[0]
    remote = build_config(cls, raw, {key: "s3://bucket/x"}).to_dict()[key]
    assert remote == (["s3://bucket/x"] if isinstance(paths[key], list) else "s3://bucket/x")
    with pytest.raises(ConfigError, match="file:///absolute/path"):
        build_config(cls, raw, {key: "file://otherhost/x"})


def test_a_config_file_may_be_given_as_a_file_uri(tmp_path):
    path = tmp_path / "a dir" / "data.yaml"
    path.parent.mkdir()
    path.write_text("source: synthetic\nout: runs/x\nusers: 50\n")
    assert load_config(DataConfig, path.as_uri()) == load_config(DataConfig, str(path))
    with pytest.raises(ConfigError, match="--config s3://bucket/data.yaml: give the config file as a local path"):
        load_config(DataConfig, "s3://bucket/data.yaml")
