"""GPU checks (`pytest -m gpu`, deselected in CPU CI, skipped where no CUDA device is visible): the fast
answer path in bf16 on the device, and the training, migration and evaluation stages with `use_gpu`.

Run them on a GPU machine with: .venv/bin/python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from puma_ray.config import AdapterStageConfig, EvaluateConfig, MigrateConfig, PromptsConfig
from puma_ray.core.llm import FrozenLM
from puma_ray.core.templates import RATING_ANSWERS, load_template_text
from puma_ray.store.prompt_store import iter_prompts, verify

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TITLES = ["Toy Story (1995)", "X", "The Crimson Harbor of the Long Night"]
HISTORIES = [["Heat (1995)", "Up"], [], ["Old headline"]]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_fast_path_in_bf16_on_the_gpu_matches_the_full_forward(tiny_models, family):
    path = tiny_models[family][1]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
    lm = FrozenLM(model, AutoTokenizer.from_pretrained(path), load_template_text("rating_amazon"), RATING_ANSWERS)
    batch = lm.encode(TITLES, HISTORIES)
    soft = torch.empty(3, 1, model.config.hidden_size).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    soft = soft.to("cuda", torch.bfloat16)
    with torch.no_grad():
        fast, ref = lm.answer_logits(soft, batch), lm.reference_logits(soft, batch)
    assert fast.device.type == "cuda"
    torch.testing.assert_close(fast.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_a_tiny_chain_with_use_gpu_in_bf16(workspace, tmp_path):
    """prompts -> adapter -> migrate -> evaluate on the GPU in bf16: every stage finishes, the store is
    float32 and finite, the lineage says bf16, and the migrated prompts score like the CPU float32 ones."""
    from puma_ray.stages.adapter import run_adapter
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.migrate import run_migrate
    from puma_ray.stages.prompts import run_prompts

    data, gpu = str(workspace / "data"), {"use_gpu": True, "dtype": "bfloat16"}
    run_prompts(PromptsConfig(data=data, model=str(workspace / "qwen2"), out=str(tmp_path / "retrained"), workers=1,
                              epochs=1, lr=0.01, **gpu))
    run_adapter(AdapterStageConfig(data=data, source=[str(workspace / "src")], target_model=str(workspace / "qwen2"),
                                   out=str(tmp_path / "adapter"), workers=1, epochs=1, min_steps=10, **gpu))
    moved = {d: run_migrate(MigrateConfig(adapter=str(tmp_path / "adapter"), source=[str(workspace / "src")],
                                          out=str(tmp_path / f"store-{d}"), use_gpu=d == "bfloat16", dtype=d))
             for d in ("float32", "bfloat16")}
    assert moved["bfloat16"]["users"] == moved["float32"]["users"] == 120
    assert verify(tmp_path / "store-bfloat16")["lineage"][-1]["dtype"] == "bfloat16"
    p16 = np.concatenate([p for _, p in iter_prompts(tmp_path / "store-bfloat16")])
    assert p16.dtype == np.float32 and np.isfinite(p16).all()
    metrics = {d: run_evaluate(EvaluateConfig(data=data, model=str(workspace / "qwen2"), prompts=str(tmp_path / f"store-{d}"),
                                              out=str(tmp_path / f"eval-{d}"), use_gpu=d == "bfloat16", dtype=d))
               for d in ("float32", "bfloat16")}
    rmse = {d: json.loads((tmp_path / f"eval-{d}" / "metrics.json").read_text())["rmse"] for d in metrics}
    assert abs(rmse["bfloat16"] - rmse["float32"]) < 0.05 * rmse["float32"]
