"""`puma-ray recycle`: the least-squares map between two models' input-embedding spaces over their shared
tokens recovers a known linear relation, pairs tokens by their text, and carries every prompt of a store
into the target's space (no user data), refusing a store of another model before --out is touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puma_ray.config import EvaluateConfig, RecycleConfig
from puma_ray.core.hf import load_causal_lm, load_tokenizer
from puma_ray.core.recycle import fit_map, fit_recycle_map, shared_tokens
from puma_ray.errors import PumaError
from puma_ray.stages.evaluate import run_evaluate
from puma_ray.stages.recycle import run_recycle
from puma_ray.store.prompt_store import iter_prompts, load_prompts, read_manifest, verify


def test_the_map_recovers_a_known_linear_relation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    a, b = torch.randn(16, 24, generator=g), torch.randn(24, generator=g)
    fitted = fit_map(x, x @ a + b + 1e-4 * torch.randn(400, 24, generator=g), ridge=0.0)
    torch.testing.assert_close(fitted.weight, a.double(), atol=1e-3, rtol=0)
    torch.testing.assert_close(fitted.bias, b.double(), atol=1e-3, rtol=0)
    assert fitted.r2 > 0.999999 and fitted.tokens == 400
    prompts = torch.randn(5, 2, 16, generator=g).numpy()
    np.testing.assert_allclose(fitted.apply(prompts), prompts @ a.numpy() + b.numpy(), atol=1e-3)
    noise = fit_map(x, torch.randn(400, 24, generator=g), ridge=1e-3)  # no relation: nothing explained
    assert noise.r2 < 0.1


def test_fewer_shared_tokens_than_source_dimensions_is_one_clear_error():
    with pytest.raises(PumaError, match="only 10 tokens are shared"):
        fit_map(torch.randn(10, 16), torch.randn(10, 8), ridge=1e-3)


def test_tokens_are_paired_by_their_text(workspace):
    src, tgt = load_tokenizer(str(workspace / "llama")), load_tokenizer(str(workspace / "qwen2"))
    a, b = shared_tokens(src, tgt)
    assert len(a) == len(b) > 100
    assert all(src.decode([i]).strip() == tgt.decode([j]).strip() for i, j in zip(a, b))
    assert not set(a.tolist()) & set(src.all_special_ids)


@pytest.mark.ray
def test_recycle_maps_every_prompt_into_the_target_space(workspace, tmp_path):
    cfg = RecycleConfig(source=str(workspace / "src"), source_model=str(workspace / "llama"),
                        target_model=str(workspace / "qwen2"), out=str(tmp_path / "rec"), batch_rows=50)
    summary = run_recycle(cfg)
    m, src = verify(tmp_path / "rec"), read_manifest(workspace / "src")
    assert summary["users"] + summary["quarantined"] == src["num_users"] + src["quarantined"]
    assert m["model"]["family"] == "qwen2" and m["dim"] != src["dim"]
    assert len(m["shards"]) == sum(-(-s["rows"] // 50) for s in src["shards"])  # batches of --batch-rows
    step = m["lineage"][-1]
    assert step["step"] == "recycled" and step["shared_tokens"] == summary["shared_tokens"] > 100
    assert [s["step"] for s in m["lineage"][:-1]] == [s["step"] for s in src["lineage"]]
    users = [u for us, _ in iter_prompts(tmp_path / "rec") for u in us][:5]
    x, y = load_prompts(workspace / "src", users), load_prompts(tmp_path / "rec", users)
    fitted = fit_recycle_map(*(f(str(workspace / name)) for name in ("llama", "qwen2")
                               for f in (load_causal_lm, load_tokenizer)), cfg.ridge)
    assert fitted.r2 == pytest.approx(summary["fit_r2"], abs=1e-6)
    np.testing.assert_allclose(y, fitted.apply(x), atol=1e-6)  # each prompt through the map
    metrics = run_evaluate(EvaluateConfig(data=str(workspace / "data"), model=str(workspace / "qwen2"),
                                          prompts=str(tmp_path / "rec"), split=["valid"], out=str(tmp_path / "ev")))
    assert np.isfinite(metrics["rmse"]) and metrics["users"] == summary["users"]


def test_a_store_of_another_model_is_refused_before_out_is_touched(workspace, tmp_path):
    with pytest.raises(PumaError, match="belongs to model"):
        run_recycle(RecycleConfig(source=str(workspace / "src"), source_model=str(workspace / "qwen2"),
                                  target_model=str(workspace / "gemma3"), out=str(tmp_path / "rec")))
    assert not (tmp_path / "rec").exists()
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "keep.txt").write_text("mine")
    with pytest.raises(PumaError, match="not a prompt store"):
        run_recycle(RecycleConfig(source=str(workspace / "src"), source_model=str(workspace / "llama"),
                                  target_model=str(workspace / "gemma3"), out=str(tmp_path / "rec")))
    assert [p.name for p in (tmp_path / "rec").iterdir()] == ["keep.txt"]


def test_distil_fits_an_adapter_to_a_known_linear_relation():
    from puma_ray.core.modules import AdapterConfig, MigrationAdapter
    from puma_ray.core.recycle import distil

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, 16, generator=g)
    y = x @ torch.randn(16, 12, generator=g) + torch.randn(12, generator=g)
    torch.manual_seed(0)
    adapter = MigrationAdapter(AdapterConfig(16, 12, width=64, dropout=0.5))
    fit = distil(adapter, x.numpy(), y.numpy(), steps=1000, lr=1e-2, batch=64, generator=torch.Generator().manual_seed(0))
    assert fit.mse < 0.02 * fit.mse_start and fit.r2 > 0.98
    with torch.no_grad():  # what the fit reports is what the adapter now does
        assert float(((adapter.eval()(x) - y) ** 2).mean()) == pytest.approx(fit.mse, rel=1e-5)
    torch.manual_seed(0)
    again = MigrationAdapter(AdapterConfig(16, 12, width=64, dropout=0.5))
    assert distil(again, x.numpy(), y.numpy(), 1000, 1e-2, 64, torch.Generator().manual_seed(0)) == fit  # seeded
    with pytest.raises(PumaError, match="source prompts for"):
        distil(again, x.numpy(), y.numpy()[:10], 1, 1e-3, 8, torch.Generator())


@pytest.mark.ray
def test_adapter_init_recycled_starts_the_workers_from_the_fitted_adapter(workspace, tmp_path):
    import json

    from safetensors.torch import load_file

    from puma_ray.config import AdapterStageConfig
    from puma_ray.stages.adapter import run_adapter

    run_recycle(RecycleConfig(source=str(workspace / "src"), source_model=str(workspace / "llama"),
                              target_model=str(workspace / "qwen2"), out=str(tmp_path / "rec")))
    base = dict(data=str(workspace / "data"), source=[str(workspace / "src")], target_model=str(workspace / "qwen2"),
                workers=1, epochs=1, min_steps=0, width=64, lr=1e-9, seed=4)
    res = run_adapter(AdapterStageConfig(**base, out=str(tmp_path / "a"), init="recycled",
                                         recycled=str(tmp_path / "rec"), init_steps=150))
    meta = json.loads((tmp_path / "a" / "adapter.json").read_text())
    assert meta["init"] == res["init"] and res["init"]["kind"] == "recycled" and res["init"]["steps"] == 150
    assert res["init"]["mse"] < res["init"]["mse_start"]
    init, trained = load_file(tmp_path / "a" / "init.safetensors"), load_file(tmp_path / "a" / meta["weights"])
    for k, v in init.items():  # lr 1e-9: the trained adapter is where the workers started
        torch.testing.assert_close(trained[k], v, atol=1e-6, rtol=0)
    import shutil  # a recycled store of another source model is refused, with nothing written
    shutil.copytree(tmp_path / "rec", tmp_path / "other")
    manifest = json.loads((tmp_path / "other" / "manifest.json").read_text())
    manifest["lineage"][-1]["from"][0]["model"] = "0" * 64
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PumaError, match="is not a `puma-ray recycle` output of the first --source's model"):
        run_adapter(AdapterStageConfig(**base, out=str(tmp_path / "c"), init="recycled", recycled=str(tmp_path / "other")))
    assert not (tmp_path / "c").exists()
    # the default start is random (test_adapter.py's runs say so in their adapter.json): the fitted start
    # above is nearer the recycled prompts than the random one it began from (mse < mse_start)


def test_adapter_init_recycled_refuses_a_store_that_is_not_the_sources_recycled(workspace, tmp_path):
    from puma_ray.config import AdapterStageConfig
    from puma_ray.errors import ConfigError
    from puma_ray.stages.adapter import run_adapter

    base = dict(data=str(workspace / "data"), source=[str(workspace / "src")], target_model=str(workspace / "qwen2"),
                out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="recycled: --init recycled needs --recycled"):
        AdapterStageConfig(**base, init="recycled")
    with pytest.raises(ConfigError, match="recycled: is only read with --init recycled"):
        AdapterStageConfig(**base, recycled=str(workspace / "src"))
    with pytest.raises(PumaError, match="belongs to model"):  # the source store itself: the source model's
        run_adapter(AdapterStageConfig(**base, init="recycled", recycled=str(workspace / "src")))
    assert not (tmp_path / "a").exists()
