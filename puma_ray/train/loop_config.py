"""What a stage hands its Ray Train workers: one frozen, typed config per loop (never a free-form dict).

The stage resolves everything (absolute paths, step counts, the adapter's shape) on the driver; the
workers read these fields and nothing else. The two loops share `LoopConfig`, with one name per
concept (`model`, `users_file`, `head_file`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from puma_ray.core.modules import AdapterConfig


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Settings both training loops read."""

    task: str
    """Task name (rating or click)."""
    model: str
    """The frozen model the prompts are fed to: an absolute directory or a hub id."""
    template_text: str
    """The template's text (the workers do not read template files)."""
    prompt_len: int
    """Soft-prompt vectors per user (l)."""
    users_file: str
    """Parquet file with the users in the stage's order (prompts: every dataset user; adapter: the selection)."""
    seed: int
    """Seed of initialisation, batch order and dropout."""
    lr: float
    """Learning rate of the trainable part (the prompt table; the adapter and head)."""
    batch_size: int
    """Interactions per worker per step."""
    shuffle_rows: int
    """Fewest rows in each worker's shuffle buffer; 0 = stored order."""
    epochs: int
    """Epochs to run (the best on valid is kept by the stage)."""
    lam: float
    """Weight of the answer-token cross-entropy in the rating loss."""
    yes_minus_no: bool
    """Click task: BCE on the Yes-minus-No logit."""
    prefix_cache: bool
    """Reuse the key/values of the template's constant prefix."""
    use_gpu: bool
    """Run on the worker's GPU."""
    dtype: str
    """Frozen LLM's dtype name (auto, float32, bfloat16)."""
    train_steps: int
    """Training steps per epoch, equal on every rank."""
    valid_steps: int
    """Validation steps of the rank with the most valid rows (0: no valid rows)."""
    label_mean: Optional[float] = None
    """Mean train label: a fresh rating head starts there."""
    head_file: Optional[str] = None
    """Safetensors of the head to start from; None = a fresh head."""


@dataclass(frozen=True, kw_only=True)
class PromptsLoopConfig(LoopConfig):
    """`prompts`: per-user prompt rows owned by rank (crc32(user) % world) plus a replicated head."""

    freeze_prompts: bool = False
    """Keep the random prompts fixed and train only the head (the floor)."""
    init_from: Optional[str] = None
    """Prompt store whose rows start the table; None = uniform random rows."""


@dataclass(frozen=True, kw_only=True)
class AdapterLoopConfig(LoopConfig):
    """`adapter`: one adapter (+ head, + LoRA) trained end to end through the frozen target."""

    sources: tuple[str, ...]
    """Source prompt stores, concatenated per user on the last axis (aggregated migration)."""
    adapter: AdapterConfig
    """Shape of the adapter."""
    ds_config: dict
    """DeepSpeed config of the adapter's engine."""
    lora: Optional[dict] = None
    """PEFT LoraConfig arguments of the target's co-adaptation; None = no LoRA."""
    adapter_init: Optional[str] = None
    """Safetensors of the adapter's start (--init recycled); None = the seeded random start."""
