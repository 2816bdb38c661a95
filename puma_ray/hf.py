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


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32):
    """AutoModelForCausalLM in eval mode with every parameter frozen.

    Returns a model whose `get_input_embeddings()` maps [B, T] int64 -> [B, T, d] `dtype`.
    """
    from transformers import AutoModelForCausalLM

    model = _friendly_load(lambda n: AutoModelForCausalLM.from_pretrained(n, dtype=dtype), name, "model")
    model.eval()
    model.requires_grad_(False)
    return model


def model_fingerprint(model, tokenizer) -> str:
    """sha256 over config (minus volatile keys), tokenizer vocabulary and input-embedding weights.

    Two models share a fingerprint only if a soft prompt means the same thing to both.
    """
    cfg = model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        cfg.pop(key, None)
    h = hashlib.sha256()
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    weight = model.get_input_embeddings().weight.detach().to(torch.float32).contiguous().cpu()
    h.update(weight.numpy().tobytes())
    return h.hexdigest()


def describe_model(name: str) -> dict:
    """Name, family (config model_type), hidden size and fingerprint of a model directory or hub id."""
    tokenizer = load_tokenizer(name)
    model = load_causal_lm(name)
    return {"name": str(Path(name).resolve()) if Path(name).exists() else name,
            "family": model.config.model_type, "hidden_size": model.config.hidden_size,
            "parameters": sum(p.numel() for p in model.parameters()), "fingerprint": model_fingerprint(model, tokenizer)}
