"""Every stage refuses an --out holding another kind of output (or files puma-ray did not write) and leaves it
byte-identical; the kind is recorded in kind.json, not guessed from which files are there (issue 46).

The inputs below are dummies: the --out check comes first in every stage, before any input is read."""

from __future__ import annotations

import json

import pytest

from puma_ray.config import (AdapterStageConfig, BenchConfig, ChainConfig, ColdstartConfig, DataConfig, DemoConfig,
                             EvaluateConfig, MigrateConfig, ModelsConfig, PromptsConfig, RecycleConfig, SelectConfig,
                             SweepConfig)
from puma_ray.errors import PumaError
from puma_ray.runtime.runs import KIND_FILE, STAGE_KINDS, check_out, read_kind, write_kind

D = "/nonexistent/dummy"


def _stages():
    """stage name -> (its run function, a config of it writing to `out`)."""
    from puma_ray.stages.adapter import run_adapter
    from puma_ray.stages.chain import run_chain
    from puma_ray.stages.coldstart import run_coldstart
    from puma_ray.stages.data import run_data
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.migrate import run_migrate
    from puma_ray.stages.models import run_models
    from puma_ray.stages.prompts import run_prompts
    from puma_ray.stages.recycle import run_recycle
    from puma_ray.stages.select import run_select
    from puma_ray.experiments.bench import run_bench
    from puma_ray.experiments.demo import run_demo
    from puma_ray.experiments.sweep import run_sweep

    return {
        "data": (run_data, lambda out: DataConfig(source="synthetic", users=20, out=out)),
        "models": (run_models, lambda out: ModelsConfig(data=D, out=out, overwrite=True)),
        "prompts": (run_prompts, lambda out: PromptsConfig(data=D, model=D, out=out)),
        "recycle": (run_recycle, lambda out: RecycleConfig(source=D, source_model=D, target_model=D, out=out)),
        "coldstart": (run_coldstart, lambda out: ColdstartConfig(data=D, prompts=D, out=out)),
        "migrate": (run_migrate, lambda out: MigrateConfig(adapter=D, source=[D], out=out)),
        "select": (run_select, lambda out: SelectConfig(data=D, prompts=D, out=out)),
        "adapter": (run_adapter, lambda out: AdapterStageConfig(data=D, source=[D], target_model=D, out=out)),
        "evaluate": (run_evaluate, lambda out: EvaluateConfig(data=D, model=D, prompts=D, out=out)),
        "sweep": (run_sweep, lambda out: SweepConfig(data=D, source=[D], target_model=D, space=D, out=out)),
        "bench": (run_bench, lambda out: BenchConfig(data=D, source_model=D, target_model=D, out=out)),
        "chain": (run_chain, lambda out: ChainConfig(data=D, source=D, models=[D], out=out)),
        "demo": (run_demo, lambda out: DemoConfig(out=out)),
    }


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file())


HELD = sorted(set(STAGE_KINDS.values())) + [None]  # None: someone's own files, no kind.json


@pytest.mark.parametrize("stage", sorted(STAGE_KINDS))
def test_every_stage_refuses_an_out_of_another_kind_and_leaves_it_byte_identical(stage, tmp_path):
    run, make = _stages()[stage]
    own = STAGE_KINDS[stage]
    for held in [k for k in HELD if k != own]:
        out = tmp_path / (held or "photos").replace(" ", "_")
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"prompt_len": 1, "rows": 3}))  # what the old check trusted
        (out / "config.yaml").write_text("mine: true\n")
        if held:
            write_kind(out, held)
        before = _snapshot(out)
        with pytest.raises(PumaError) as err:
            run(make(str(out)))
        message = str(err.value)
        assert f"--out {out}" in message and own in message and "nothing was changed" in message, message
        assert (held in message) if held else "not a" in message, message
        assert _snapshot(out) == before, f"{stage} changed an --out holding {held}"


def test_a_file_is_refused_and_an_empty_or_same_kind_directory_accepted(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(PumaError, match="is a file"):
        check_out(tmp_path / "f", "dataset")
    assert check_out(tmp_path / "new", "dataset") == tmp_path / "new" and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", "dataset")
    (tmp_path / "same").mkdir()
    write_kind(tmp_path / "same", "dataset")
    (tmp_path / "same" / "part.parquet").write_bytes(b"x")
    check_out(tmp_path / "same", "dataset")
    assert read_kind(tmp_path / "same") == "dataset"
    (tmp_path / "same" / KIND_FILE).write_text("{not json")
    assert read_kind(tmp_path / "same") is None
    with pytest.raises(PumaError, match="not a dataset"):
        check_out(tmp_path / "same", "dataset")
    # an output written before kind.json existed: the stage its config.yaml's header names tells its kind
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("# resolved config of `puma-ray prompts`; rerun with: ...\n")
    (tmp_path / "old" / "manifest.json").write_text("{}")
    assert read_kind(tmp_path / "old") == "prompt store"
    check_out(tmp_path / "old", "prompt store")
    with pytest.raises(PumaError, match="holds a prompt store, not a dataset"):
        check_out(tmp_path / "old", "dataset")


def test_models_overwrite_replaces_only_a_model(tmp_path):
    """overwrite=true replaces another model; a folder of anything else stays refused, overwrite or not."""
    from puma_ray.stages.models import run_models

    store = tmp_path / "store"
    store.mkdir()
    write_kind(store, "prompt store")
    (store / "prompts.parquet").write_bytes(b"users' prompts")
    before = _snapshot(store)
    with pytest.raises(PumaError, match="holds a prompt store, not a model"):
        run_models(ModelsConfig(data=D, out=str(store), overwrite=True))
    assert _snapshot(store) == before
