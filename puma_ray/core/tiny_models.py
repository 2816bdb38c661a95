"""Tiny random-weight causal LMs of real families, for offline CPU work and tests.

Each family is a row of data: the `model_type` transformers registers, a default
hidden size (different per family, so prompts are truly incompatible across
models) and the tokenizer conventions real checkpoints of that family follow.
The model is built from the family's own config class by `AutoConfig.for_model`,
so the code path after saving is identical to a downloaded checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from puma_ray.errors import PumaError


@dataclass(frozen=True)
class FamilySpec:
    """How to build one family's tiny model and tokenizer."""

    model_type: str
    """transformers' model_type (the key of its config class)."""
    hidden: int
    """Default hidden size."""
    tie_embeddings: bool
    """Whether input and output embeddings share weights, as in the family's small checkpoints."""
    add_bos: bool
    """Whether the tokenizer prepends bos to every encoding."""
    bos_is_eos: bool
    """Whether bos and eos are the same token."""
    padding_side: str
    """Tokenizer padding side."""
    extra: dict = field(default_factory=dict)
    """Further config kwargs the family needs at tiny sizes."""


FAMILIES: dict[str, FamilySpec] = {
    "llama": FamilySpec("llama", 64, tie_embeddings=False, add_bos=True, bos_is_eos=False, padding_side="right"),
    "qwen2": FamilySpec("qwen2", 48, tie_embeddings=True, add_bos=False, bos_is_eos=False, padding_side="left"),
    "gemma3": FamilySpec("gemma3_text", 96, tie_embeddings=True, add_bos=True, bos_is_eos=False,
                         padding_side="left", extra={"sliding_window": 64}),
    "phi3": FamilySpec("phi3", 80, tie_embeddings=False, add_bos=True, bos_is_eos=False, padding_side="left"),
    "stablelm": FamilySpec("stablelm", 128, tie_embeddings=False, add_bos=False, bos_is_eos=True,
                           padding_side="right"),
}


def build_config(family: str, *, hidden: int | None, layers: int, heads: int, kv_heads: int | None,
                 intermediate: int | None, vocab_size: int, max_positions: int, tokenizer) -> PretrainedConfig:
    """The family's config at tiny size, with special token ids taken from `tokenizer`."""
    spec = FAMILIES[family]
    hidden = hidden or spec.hidden
    if hidden % heads:
        raise PumaError(f"hidden={hidden} is not divisible by heads={heads}")
    cfg = AutoConfig.for_model(
        spec.model_type, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        head_dim=hidden // heads, vocab_size=vocab_size, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=spec.tie_embeddings, **spec.extra)
    rope = getattr(cfg, "rope_parameters", None) or {}
    rotary = (hidden // heads) * rope.get("partial_rotary_factor", 1.0)
    if rotary != int(rotary) or int(rotary) % 2:
        raise PumaError(f"{family}: rotary dimension head_dim x partial_rotary_factor = {rotary} must be an even "
                        f"integer; pick hidden/heads so it is (hidden={hidden}, heads={heads})")
    return cfg


def build_model(cfg: PretrainedConfig, seed: int) -> torch.nn.Module:
    """Random-weight causal LM from `cfg`, deterministic for `seed`, float32."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()
