"""Loading any Hugging Face causal LM (tiny local directory or hub id) and fingerprinting it.

Nothing here looks at a model's name: facts come from its config and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from puma_ray.errors import PumaError

# Config keys that change with the library version or the save location, not the model.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures")


def _friendly_load(fn, name: str, what: str):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return fn(name)
    except (OSError, ValueError, KeyError) as exc:
        raise PumaError(f"cannot load the {what} of {name!r}: {str(exc).splitlines()[0]} "
                        "(give a Hugging Face model directory, e.g. one made by `puma-ray models`, or a hub id)") from None


def model_ref(name: str) -> str:
    """A local model directory as an absolute path (Ray workers run elsewhere), a hub id unchanged."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def load_tokenizer(name: str):
    """AutoTokenizer for a model directory or hub id; a clear PumaError when it is not one."""
    from transformers import AutoTokenizer

    return _friendly_load(AutoTokenizer.from_pretrained, name, "tokenizer")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The frozen LLM's dtype for a config's `dtype` (auto = bfloat16 on GPU, float32 elsewhere)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def dtype_name(name: str, use_gpu: bool) -> str:
    """What `resolve_dtype` gives on a GPU worker (use_gpu) or a CPU one, as a name ("bfloat16")."""
    return str(resolve_dtype(name, torch.device("cuda" if use_gpu else "cpu"))).removeprefix("torch.")


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32):
    """AutoModelForCausalLM in eval mode with every parameter frozen.

    Returns a model whose `get_input_embeddings()` maps [B, T] int64 -> [B, T, d] `dtype`.
    """
    from transformers import AutoModelForCausalLM

    model = _friendly_load(lambda n: AutoModelForCausalLM.from_pretrained(n, dtype=dtype), name, "model")
    model.eval()
    model.requires_grad_(False)
    return model


def load_scoring_model(name: str, lora: str | None = None, dtype: torch.dtype = torch.float32):
    """load_causal_lm, with the LoRA co-adaptation at `lora` (a PEFT directory an adapter trained with the
    prompts of a store) merged into its weights when given: the model a migrated store's prompts were made for."""
    model = load_causal_lm(name, dtype=dtype)
    if lora is None:
        return model
    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, lora).merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    return merged


def _fingerprint(config, tokenizer, embedding: torch.Tensor) -> str:
    cfg = config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        cfg.pop(key, None)
    h = hashlib.sha256()
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(embedding.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model, tokenizer) -> str:
    """sha256 over config (minus volatile keys), tokenizer vocabulary and input-embedding weights.

    Two models share a fingerprint only if a soft prompt means the same thing to both.
    """
    return _fingerprint(model.config, tokenizer, model.get_input_embeddings().weight)


def _embedding_from_files(name: str, skeleton) -> torch.Tensor | None:
    """The input-embedding tensor read alone from a local directory's safetensors files (None when the
    weights are not there in that form: a hub id, .bin or GGUF files)."""
    from safetensors import safe_open

    emb = skeleton.get_input_embeddings().weight
    keys = [k for k, p in skeleton.named_parameters(remove_duplicate=False) if p is emb]
    for path in sorted(Path(name).glob("*.safetensors")) if Path(name).is_dir() else []:
        with safe_open(str(path), framework="pt") as f:
            found = [k for k in keys if k in f.keys()]
            if found:
                return f.get_tensor(found[0])
    return None


def describe_model(name: str) -> dict:
    """Name, family (config model_type), hidden size, parameter count and fingerprint of a model
    directory or hub id, without materializing its weights: the model is built on the meta device
    and only the input embedding is read from its safetensors (a full load is the fallback)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(name)
    config = _friendly_load(AutoConfig.from_pretrained, name, "config")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    embedding = _embedding_from_files(name, skeleton)
    if embedding is None:
        model = load_causal_lm(name)
        config, embedding = model.config, model.get_input_embeddings().weight
    return {"name": str(Path(name).resolve()) if Path(name).exists() else name,
            "family": config.model_type, "hidden_size": config.hidden_size,
            "parameters": sum(p.numel() for p in skeleton.parameters()),
            "fingerprint": _fingerprint(config, tokenizer, embedding)}
