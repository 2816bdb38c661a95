"""Configs of the Ray Train stages: `prompts` and `adapter` (and what they share)."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from puma_ray.config.base import Accelerators, _required, check, stage_config


@stage_config
class TrainingConfig(Accelerators):
    """What every Ray Train + DeepSpeed stage (prompts, adapter) shares."""

    data: Optional[str] = None
    """Canonical dataset directory (its train split trains, its valid split picks the best epoch)."""
    out: Optional[str] = None
    """Output directory (prompt store or adapter), with config, costs and Ray Train checkpoints."""
    workers: int = 1
    """Ray Train workers."""
    cpus_per_worker: float = 0.5
    """CPUs reserved per worker; below 1 leaves room for Ray Data's readers on small machines."""
    batch_size: int = 32
    """Interactions per worker per step (paper: 32)."""
    shuffle_rows: int = 4096
    """Fewest rows in each worker's shuffle buffer (it holds whole blocks), reshuffled every epoch; 0 = stored order."""
    template: Optional[str] = None
    """Shipped template name or file; null = what the stage derives (task default or the source's)."""
    lam: float = 0.2
    """Weight of the answer-token cross-entropy in the rating loss."""
    yes_minus_no: bool = False
    """Click task: BCE on the Yes-minus-No logit instead of the Yes logit."""
    prefix_cache: bool = True
    """Reuse the key/values of the template's constant prefix."""
    cache_data: bool = True
    """Read each worker's rows once into Ray's object store (spills to disk) instead of every epoch."""
    seed: int = 0
    """Seed of initialisation and batch order."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from (restarting from the last checkpoint)."""
    run_name: Optional[str] = None
    """Ray Train run name; re-running with the same name resumes it. null = derived from --out."""
    storage_path: Optional[str] = None
    """Where Ray Train keeps checkpoints; null = <out>/_train. Use shared storage on a cluster."""

    def validate(self) -> None:
        _required(self.data, "data", "--data DIR")
        _required(self.out, "out", "--out DIR")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.shuffle_rows >= 0, "shuffle_rows", "must be >= 0 (0 = no shuffle)")
        check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")


@stage_config
class PromptsConfig(TrainingConfig):
    """`puma-ray prompts`: per-user soft prompts (+ head) on a frozen model, with Ray Train + DeepSpeed.

    Each worker owns the prompt rows of its users (crc32(user) % workers)."""

    model: Optional[str] = None
    """Hugging Face model directory or hub id the prompts are trained for (kept frozen)."""
    epochs: int = 15
    """Passes over the training split (best epoch on valid is kept)."""
    lr: float = 5e-4
    """AdamW learning rate for prompts and head."""
    prompt_len: int = 1
    """Soft-prompt vectors per user (l)."""
    freeze_prompts: bool = False
    """Keep the fresh random prompts fixed and train only the head (the paper's random-init floor)."""
    init_from: Optional[str] = None
    """Warm-start from this prompt store (same model fingerprint), e.g. migrated prompts."""

    def validate(self) -> None:
        super().validate()
        _required(self.model, "model", "--model MODEL")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.prompt_len >= 1, "prompt_len", "must be >= 1")


@stage_config
class AdapterStageConfig(TrainingConfig):
    """`puma-ray adapter`: train the migration adapter (+ head) through the frozen target model.

    A DeepSpeed engine over adapter + head: data parallel, ZeRO stage by --zero-stage (3 partitions
    the adapter and its optimizer state over the workers)."""

    source: list[str] = dataclasses.field(default_factory=list)
    """Source prompt store(s); several = aggregated migration (prompts concatenated per user)."""
    target_model: Optional[str] = None
    """Hugging Face model directory or hub id of the new model (kept frozen)."""
    users: str = "all"
    """A selection directory (its selected.parquet lists user_id) or 'all'."""
    epochs: int = 4
    """Passes over the selected users' training rows (paper: 4), raised to reach min_steps; the best epoch is kept."""
    min_steps: int = 200
    """Optimizer steps the adapter takes at least: small selections get more epochs (30 users x 4 epochs is ~50 steps)."""
    lr: float = 1e-3
    """AdamW learning rate; 1e-3 from tune_spaces/defaults.yaml (the paper's 1e-4 barely moves in 4 epochs of ~200 steps)."""
    width: Optional[int] = None
    """Adapter FFN width w; null = 2 x the source prompt dimension (the paper's 4096 for its 2048-d sources)."""
    rank: int = 0
    """0 = full-rank adapter; r > 0 factorises every linear through rank r."""
    dropout: float = 0.1
    """Adapter dropout."""
    lora_rank: int = 0
    """LoRA co-adaptation of the target model (PEFT, all linear layers) with this rank; 0 = off."""
    lora_alpha: int = 16
    """LoRA scaling numerator (alpha / rank scales the update)."""
    head_init: Literal["source", "fresh"] = "source"
    """Task head's start: the first source store's trained head (source) or a new random one (fresh)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3) of adapter + head."""
    zero3_persistence_threshold: int = 100000
    """ZeRO-3 keeps parameters smaller than this unpartitioned (0 partitions everything)."""
    init: Literal["random", "recycled"] = "random"
    """Adapter's start: random (seeded), or first fitted to reproduce --recycled's prompts of the selected users."""
    recycled: Optional[str] = None
    """`puma-ray recycle` output of the first --source on --target-model: what --init recycled fits the adapter to."""
    init_steps: int = 300
    """Steps (minibatches of 256 users, no target model) that fit the adapter to the recycled prompts."""
    init_lr: float = 3e-3
    """AdamW learning rate of those steps."""

    def validate(self) -> None:
        super().validate()
        check(self.init != "recycled" or bool(self.recycled), "recycled",
              "--init recycled needs --recycled STORE (a `puma-ray recycle` output)")
        check(self.init == "recycled" or not self.recycled, "recycled", "is only read with --init recycled")
        check(self.init_steps >= 1, "init_steps", "must be >= 1")
        check(self.init_lr > 0, "init_lr", "must be > 0")
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        check(self.zero3_persistence_threshold >= 0, "zero3_persistence_threshold", "must be >= 0")
        check(len(self.source) >= 1, "source", "give at least one --source STORE")
        _required(self.target_model, "target_model", "--target-model MODEL")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.min_steps >= 0, "min_steps", "must be >= 0 (0 = exactly --epochs)")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.width is None or self.width >= 1, "width", "must be >= 1 or null")
        check(self.rank >= 0, "rank", "must be >= 0 (0 = full rank)")
        check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        check(self.lora_rank >= 0, "lora_rank", "must be >= 0 (0 = off)")
        check(not (self.lora_rank and self.zero_stage == 3), "lora_rank",
              "LoRA co-adaptation runs with zero_stage 0-2 (the answer head reads target weights directly)")
