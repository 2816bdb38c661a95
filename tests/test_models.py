"""Tiny models of five real families: build, reload with Auto*, forward from inputs_embeds."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from puma_ray.config import ModelsConfig
from puma_ray.core.tiny_models import FAMILIES
from puma_ray.core.tokenizer import ANSWERS
from puma_ray.errors import PumaError
from puma_ray.stages.models import run_models

PACKAGE = Path(__file__).resolve().parent.parent / "puma_ray"


@pytest.fixture(scope="module")
def built(tiny_models):
    return tiny_models


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_with_auto_classes_and_runs_from_inputs_embeds(built, family):
    summary, path = built[family]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.hidden_size == FAMILIES[family].hidden == summary["hidden_size"]
    ids = tok(["#Answer: 4", "The Crimson Harbor 3 Yes"], return_tensors="pt", padding=True)
    embeds = model.get_input_embeddings()(ids.input_ids)  # [2, T, d] float32
    with torch.no_grad():
        from_embeds = model(inputs_embeds=embeds, attention_mask=ids.attention_mask).logits
        from_ids = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
    assert from_embeds.shape == (2, ids.input_ids.shape[1], len(tok))
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=1e-5)
    for answer in ANSWERS:
        assert len(tok.encode(answer, add_special_tokens=False)) == 1
    assert tok.pad_token and tok.bos_token and tok.eos_token and tok.unk_token


def test_families_have_distinct_hidden_sizes(built):
    sizes = [s["hidden_size"] for s, _ in built.values()]
    assert len(set(sizes)) == len(sizes)


def test_tokenizer_conventions_differ_like_real_families(built):
    """bos prepended or not, and bos == eos, come from the tokenizer, as downstream code must read them."""
    adds_bos = {}
    for family, (_, path) in built.items():
        tok = AutoTokenizer.from_pretrained(path)
        adds_bos[family] = tok("x").input_ids[0] == tok.bos_token_id
        assert (tok.bos_token == tok.eos_token) == FAMILIES[family].bos_is_eos
    assert adds_bos == {f: s.add_bos for f, s in FAMILIES.items()}


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_deterministic_from_seed_and_cached_by_content(built, text_file, tmp_path):
    summary, path = built["llama"]
    again = run_models(ModelsConfig(family="llama", text=str(text_file), out=str(tmp_path / "again")))
    assert again["fingerprint"] == summary["fingerprint"]
    assert _digest(tmp_path / "again") == _digest(path)
    reused = run_models(ModelsConfig(family="llama", text=str(text_file), out=str(tmp_path / "again")))
    assert reused["cached"] is True
    other = run_models(ModelsConfig(family="llama", text=str(text_file), out=str(tmp_path / "seed1"), seed=1))
    assert other["fingerprint"] != summary["fingerprint"]


def test_other_inputs_in_same_dir_need_overwrite(built, text_file, tmp_path):
    out = str(tmp_path / "m")
    run_models(ModelsConfig(family="qwen2", text=str(text_file), out=out))
    with pytest.raises(PumaError, match="overwrite=true"):
        run_models(ModelsConfig(family="qwen2", text=str(text_file), out=out, layers=1))
    assert run_models(ModelsConfig(family="qwen2", text=str(text_file), out=out, layers=1, overwrite=True))["layers"] == 1


def test_an_overwrite_killed_mid_build_leaves_the_old_model_whole(synthetic_dataset, text_file, tmp_path):
    """SIGKILL of `models ... overwrite=true` while it pretrains a new model: the old model is byte-identical
    (the new one is built beside it and swapped in when complete); the next run replaces it whole."""
    import subprocess

    from conftest import REPO, cli_in_ray, kill_cli_when

    out = tmp_path / "m"
    run_models(ModelsConfig(family="llama", text=str(text_file), out=str(out)))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cmd, env = cli_in_ray(["models", "--family", "qwen2", "--data", str(synthetic_dataset), "--out", str(out),
                           "pretrain_steps=400", "overwrite=true"])
    status = kill_cli_when(cmd, env, lambda: (tmp_path / ".m.partial" / "model.safetensors").is_file() or
                           (tmp_path / ".m.partial" / "tokenizer.json").is_file())
    assert status == -9, "models ended before the kill"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    done = subprocess.run(cmd[:-2] + ["pretrain_steps=2", "overwrite=true"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    assert not list(tmp_path.glob(".m.*"))


def test_bad_shapes_fail_clearly(text_file, tmp_path):
    with pytest.raises(PumaError, match="not divisible"):
        run_models(ModelsConfig(family="llama", text=str(text_file), out=str(tmp_path / "a"), hidden=50, heads=4))
    with pytest.raises(PumaError, match="rotary"):
        run_models(ModelsConfig(family="stablelm", text=str(text_file), out=str(tmp_path / "b"), hidden=48, heads=4))


def test_tokenizer_trained_on_a_dataset(synthetic_dataset, tmp_path):
    from puma_ray.data.schema import iter_item_texts

    summary = run_models(ModelsConfig(family="gemma3", data=str(synthetic_dataset), out=str(tmp_path / "g"),
                                      pretrain_steps=0))
    tok = AutoTokenizer.from_pretrained(tmp_path / "g")
    title = next(iter_item_texts(synthetic_dataset))
    assert tok.unk_token_id not in tok.encode(title)
    assert summary["vocab_size"] == len(tok)


def _string_constants_in_comparisons(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for sub in ast.walk(side):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        yield sub.value.lower()


def test_no_model_name_checks_in_code():
    """Facts come from tokenizer and config; no code path compares against a family or model name."""
    names = {*FAMILIES, *(s.model_type for s in FAMILIES.values()), "mistral", "gemma", "phi", "qwen"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for value in _string_constants_in_comparisons(ast.parse(path.read_text())):
            if any(n in value for n in names):
                offenders.append(f"{path.name}: {value!r}")
    assert not offenders, offenders


def test_pretraining_learns_from_train_rows_only(synthetic_dataset, tmp_path):
    """Loss falls; every train row and user is read and no valid or test row; the sentences were built with the
    tokenizer class that loads the model back."""
    summary = run_models(ModelsConfig(family="qwen2", data=str(synthetic_dataset), out=str(tmp_path / "q"),
                                      pretrain_steps=80))
    assert summary["pretrain_steps"] == 80
    assert summary["pretrain"]["loss_last"] < summary["pretrain"]["loss_first"]
    splits = json.loads((synthetic_dataset / "manifest.json").read_text())["splits"]
    assert summary["pretrain"]["rows"] == splits["train"]["rows"] < sum(s["rows"] for s in splits.values())
    assert summary["pretrain"]["users"] == splits["train"]["users"]
    assert summary["tokenizer_class"] == type(AutoTokenizer.from_pretrained(tmp_path / "q")).__name__


def test_pretraining_default_steps_follow_the_train_split(synthetic_dataset, tmp_path):
    """pretrain_steps null: pretrain_epochs passes over the train rows at pretrain_batch rows a step."""
    cfg = ModelsConfig(family="llama", data=str(synthetic_dataset), out=str(tmp_path / "x"), pretrain_epochs=2,
                       pretrain_batch=50)
    assert cfg.resolved_pretrain_steps(1000) == 40
    assert ModelsConfig(family="llama", data=str(synthetic_dataset), out=str(tmp_path / "x"),
                        pretrain_steps=7).resolved_pretrain_steps(1000) == 7


def test_pretraining_needs_a_dataset(text_file, tmp_path):
    from puma_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrain_steps"):
        ModelsConfig(family="llama", text=str(text_file), out=str(tmp_path / "x"), pretrain_steps=10)
    assert ModelsConfig(family="llama", text=str(text_file), out=str(tmp_path / "x")).resolved_pretrain_steps(1000) == 0


def test_describe_model_reads_only_the_embedding_and_matches_the_loaded_fingerprint(tiny_models, monkeypatch):
    from puma_ray.core import hf

    loaded = {f: (hf.model_fingerprint(hf.load_causal_lm(str(d)), hf.load_tokenizer(str(d))),
                  sum(p.numel() for p in hf.load_causal_lm(str(d)).parameters())) for f, (_, d) in tiny_models.items()}

    def no_full_load(*args, **kwargs):
        raise AssertionError("describe_model materialized the whole model")

    monkeypatch.setattr(hf, "load_causal_lm", no_full_load)
    for family, (summary, path) in tiny_models.items():
        d = hf.describe_model(str(path))
        assert (d["fingerprint"], d["parameters"]) == loaded[family] and d["fingerprint"] == summary["fingerprint"]
        assert d["family"] == summary["model_type"] and d["hidden_size"] == summary["hidden_size"]
