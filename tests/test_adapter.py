"""`puma-ray adapter`: only adapter + head train, 2-worker ZeRO-2 and ZeRO-3 runs with consolidated
weights, aggregated sources, and clear errors for users missing from a source store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from puma_ray.config import AdapterStageConfig, load_config
from puma_ray.core.llm import FrozenLM
from puma_ray.core.modules import AdapterConfig, MigrationAdapter, RatingHead, adapter_param_count
from puma_ray.core.templates import RATING_ANSWERS, load_template_text
from puma_ray.errors import PumaError
from puma_ray.stages.adapter import Steps, adapter_loop_config, run_adapter
from puma_ray.train.adapter_loop import AdapterWithHead
from puma_ray.train.engines import make_optimizer
from puma_ray.train.loop_config import AdapterLoopConfig

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(workspace):
    """The session's tiny workspace (120 synthetic users, llama source prompts, qwen2 target)."""
    return workspace


def acfg(root, out, **kw):
    base = dict(data=str(root / "data"), source=[str(root / "src")], target_model=str(root / "qwen2"),
                out=str(root / out), workers=2, epochs=2, min_steps=0, width=64, lr=3e-3)
    return AdapterStageConfig(**{**base, **kw})


def test_optimizer_holds_only_adapter_and_head(setup):
    model = AutoModelForCausalLM.from_pretrained(setup / "qwen2")
    lm = FrozenLM(model, AutoTokenizer.from_pretrained(setup / "qwen2"), load_template_text("rating_amazon"),
                  RATING_ANSWERS)
    module = AdapterWithHead(AdapterConfig(64, 48, width=64), RatingHead())
    opt = make_optimizer(module, 1e-3)
    in_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert in_opt == adapter_param_count(AdapterConfig(64, 48, width=64)) + sum(p.numel() for p in module.head.parameters())
    assert not any(p.requires_grad for p in lm.parameters())
    lm_ids = {id(p) for p in lm.parameters()}
    assert not any(id(p) in lm_ids for g in opt.param_groups for p in g["params"])


def test_two_workers_zero2_train_an_adapter(setup):
    res = run_adapter(acfg(setup, "a2"))
    meta = json.loads((setup / "a2" / "adapter.json").read_text())
    assert meta["adapter"]["source_dim"] == 64 and meta["adapter"]["target_dim"] == 48
    assert meta["target"]["family"] == "qwen2" and meta["sources"][0]["model"]["family"] == "llama"
    assert res["init"] == meta["init"] == {"kind": "random"}  # the default start
    adapter = MigrationAdapter(AdapterConfig(**meta["adapter"]))
    adapter.load_state_dict(load_file(setup / "a2" / meta["weights"]))
    assert res["adapter_params"] == sum(p.numel() for p in adapter.parameters())
    assert res["curve"][-1]["train_loss"] < res["curve"][0]["train_loss"]
    df = pd.read_parquet(setup / "data" / "interactions")
    mean = df.loc[df["split"] == "train", "label"].mean()
    valid = df.loc[df["split"] == "valid", "label"]
    assert res["valid_rmse"] < float(np.sqrt(((valid - mean) ** 2).mean()))


def test_users_missing_from_a_source_are_counted(setup, tmp_path):
    sel = tmp_path / "sel"
    sel.mkdir()
    pq.write_table(pa.table({"user_id": ["u00000000", "nobody-1", "nobody-2"]}), sel / "selected.parquet")
    with pytest.raises(PumaError, match="2 of the 3 selected users have no prompt"):
        run_adapter(acfg(setup, "bad", users=str(sel)))


def test_lora_co_adaptation_saves_in_peft_format(setup):
    from peft import PeftModel

    run_adapter(acfg(setup, "lora", workers=1, epochs=1, lora_rank=4))
    meta = json.loads((setup / "lora" / "adapter.json").read_text())
    assert meta["lora"]["r"] == 4
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup / "qwen2"),
                                           setup / "lora" / meta["lora"]["path"])
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means it trained


def test_lora_refuses_zero3():
    from puma_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="lora_rank"):
        AdapterStageConfig(data="d", source=["s"], target_model="m", out="o", lora_rank=4, zero_stage=3)


def test_a_rerun_killed_mid_training_leaves_the_old_adapter_whole(setup, tmp_path):
    """SIGKILL of the `adapter` driver while it re-trains an existing adapter: adapter.json and the files it
    names are unchanged (old or new, never neither); the next run finishes and swaps in a new adapter, leaving
    no file of another generation behind. The re-training runs ZeRO-3 (every parameter partitioned, none kept
    whole): it resumes from its partitioned checkpoint and saves consolidated weights."""
    import shutil
    import subprocess

    from conftest import REPO, cli_in_ray, kill_at_first_checkpoint, warnings_of_ours

    from puma_ray.migrate.migration import load_adapter

    if not (setup / "a2" / "adapter.json").is_file():
        run_adapter(acfg(setup, "a2"))
    out = tmp_path / "adapter"
    shutil.copytree(setup / "a2", out, ignore=shutil.ignore_patterns("_train"))  # an adapter, no run to resume
    old = json.loads((out / "adapter.json").read_text())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(("adapter", "head"))}
    cmd, env = cli_in_ray(["adapter", "--data", str(setup / "data"), "--source", str(setup / "src"), "--target-model",
                           str(setup / "qwen2"), "--out", str(out), "--workers", "2", "--epochs", "2", "min_steps=0",
                           "width=64", "lr=0.003", "zero_stage=3", "zero3_persistence_threshold=0"])
    kill_at_first_checkpoint(cmd, env, out)  # mid-training: an epoch's checkpoint exists, the adapter is not rewritten
    assert len(before) == 3 and all((out / name).read_bytes() == data for name, data in before.items())
    load_adapter(out)  # still complete: its weights match adapter.json's checksum
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not warnings_of_ours(done.stdout + done.stderr)  # no deprecated call of ours, no collective warnings
    new = json.loads((out / "adapter.json").read_text())
    assert new["weights"] != old["weights"] and new["head"] != old["head"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted([new["weights"], new["head"]])
    assert all(t.numel() > 0 for t in load_file(out / new["weights"]).values())  # gathered, not ZeRO-3 placeholders
    load_adapter(out)


def test_a_lora_adapter_is_applied_wherever_its_migrated_prompts_are_scored(setup, tmp_path):
    """An adapter trained with LoRA co-adaptation: migrate carries the LoRA into the store, evaluate merges it into
    the target (its valid RMSE is the adapter's own), the plain model scores the same prompts otherwise (what
    evaluate did before the fix), and a stage that would read them on the plain model refuses."""
    import shutil

    from puma_ray.config import EvaluateConfig, MigrateConfig, PromptsConfig
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.migrate import run_migrate
    from puma_ray.stages.prompts import run_prompts
    from puma_ray.store.prompt_store import read_manifest

    res = run_adapter(acfg(setup, "lora-applied", workers=1, epochs=1, lora_rank=4, lr=1e-2))
    run_migrate(MigrateConfig(adapter=str(setup / "lora-applied"), source=[str(setup / "src")],
                              out=str(tmp_path / "store")))
    manifest = read_manifest(tmp_path / "store")
    assert manifest["lora"]["r"] == 4 and (tmp_path / "store" / "lora" / "adapter_model.safetensors").is_file()
    assert manifest["lineage"][-1]["lora"]["r"] == 4  # the lineage says the prompts need the co-adapted model

    def valid_rmse(store, out):
        return run_evaluate(EvaluateConfig(data=str(setup / "data"), model=str(setup / "qwen2"), prompts=str(store),
                                           split=["valid"], out=str(tmp_path / out), baselines=False))["rmse"]

    applied = valid_rmse(tmp_path / "store", "ev")
    assert applied == pytest.approx(res["valid_rmse"], abs=1e-6)  # measured: equal to 2e-9
    shutil.copytree(tmp_path / "store", tmp_path / "plain")
    (tmp_path / "plain" / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "lora"}))
    plain = valid_rmse(tmp_path / "plain", "ev-plain")
    assert abs(plain - applied) > 1e-4  # measured: 5e-4 (one epoch of LoRA at rank 4)
    with pytest.raises(PumaError, match="migrated with LoRA co-adaptation"):
        run_prompts(PromptsConfig(data=str(setup / "data"), model=str(setup / "qwen2"), out=str(tmp_path / "warm"),
                                  init_from=str(tmp_path / "store"), epochs=1))
    assert not (tmp_path / "warm").exists()


def test_a_killed_re_train_leaves_the_old_adapter_and_its_config_whole(setup, tmp_path):
    """SIGKILL (from outside) of `adapter` re-training over an existing adapter, mid-training: adapter.json, its
    weights and config.yaml are byte-identical (before the fix config.yaml was rewritten at the start); the next
    run replaces them all."""
    import shutil
    import subprocess

    from conftest import REPO, cli_in_ray, kill_at_first_checkpoint

    run_adapter(acfg(setup, "retrain-base", workers=1, epochs=1))
    out = tmp_path / "adapter"
    shutil.copytree(setup / "retrain-base", out, ignore=shutil.ignore_patterns("_train"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "costs.jsonl"}
    assert {"adapter.json", "config.yaml"} <= set(before)
    cmd, env = cli_in_ray(["adapter", "--data", str(setup / "data"), "--source", str(setup / "src"),
                           "--target-model", str(setup / "qwen2"), "--out", str(out), "--workers", "1",
                           "--epochs", "3", "--min-steps", "0", "--width", "64", "--lr", "0.02"])
    kill_at_first_checkpoint(cmd, env, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in before} == before
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    meta = json.loads((out / "adapter.json").read_text())
    assert "lr: 0.02" in (out / "config.yaml").read_text() and (out / meta["weights"]).is_file()
    assert not any((out / name).exists() for name in before if name.startswith(("adapter-", "head-")))


def test_the_loop_config_carries_every_setting_of_a_yaml_file(tmp_path):
    """A shipped adapter YAML with its settings changed -> AdapterStageConfig -> the typed AdapterLoopConfig the
    workers read: every setting they use arrives under one name, and the object is frozen."""
    raw = yaml.safe_load((REPO / "configs" / "adapter-synthetic.yaml").read_text())
    raw.update(lr=0.0123, batch_size=17, shuffle_rows=99, lam=0.3, yes_minus_no=True, prefix_cache=False, seed=5,
               dtype="bfloat16", width=40, rank=3, dropout=0.25, lora_rank=4, lora_alpha=8, zero_stage=1,
               head_init="fresh", init="recycled", recycled=str(tmp_path / "r"))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(AdapterStageConfig, str(tmp_path / "a.yaml"))
    shape = {"source_dim": 64, "target_dim": 48, "width": cfg.width, "rank": cfg.rank, "dropout": cfg.dropout}
    loop = adapter_loop_config(cfg, "rating", "TEXT", 2, tmp_path / "users.parquet", shape, Steps(7, 11, 3), 3.5,
                               tmp_path)
    assert isinstance(loop, AdapterLoopConfig)
    shared = ("seed", "lr", "batch_size", "shuffle_rows", "lam", "yes_minus_no", "prefix_cache", "use_gpu", "dtype")
    assert {k: getattr(loop, k) for k in shared} == {k: raw.get(k, getattr(cfg, k)) for k in shared}
    assert loop.adapter == AdapterConfig(source_dim=64, target_dim=48, width=40, rank=3, dropout=0.25)
    assert loop.lora == {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "lora_dropout": 0.0}
    assert loop.ds_config["zero_optimization"]["stage"] == 1
    assert (loop.task, loop.template_text, loop.prompt_len, loop.users_file) == ("rating", "TEXT", 2,
                                                                                 str(tmp_path / "users.parquet"))
    assert (loop.epochs, loop.train_steps, loop.valid_steps, loop.label_mean) == (7, 11, 3, 3.5)
    assert loop.sources == tuple(str(Path(s).resolve()) for s in raw["source"])
    assert loop.model == str(raw["target_model"])  # not on disk: kept as given (a hub id)
    assert loop.head_file is None and loop.adapter_init == str((tmp_path / "init.safetensors").resolve())
    with pytest.raises(dataclasses.FrozenInstanceError):
        loop.lr = 1.0  # type: ignore[misc]
