"""Configs of the stages that apply a model or adapter to users: `migrate`, `recycle`, `coldstart`, `evaluate`, `select`."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from puma_ray.config.base import Accelerators, StageConfig, _required, check, stage_config


@stage_config
class MigrateConfig(Accelerators):
    """`puma-ray migrate`: apply a trained adapter to every user of the source store(s) (dtype: the adapter's
    arithmetic; bfloat16 on AMX CPUs is ~3x float32)."""

    adapter: Optional[str] = None
    """Adapter directory written by `puma-ray adapter` (adapter.safetensors + adapter.json)."""
    source: list[str] = dataclasses.field(default_factory=list)
    """Source prompt store(s), in the adapter's order (several = aggregated migration)."""
    out: Optional[str] = None
    """Target prompt store; re-running with the same out finishes an interrupted migration."""
    workers: int = 1
    """Ray Data actors holding the adapter (each migrates one source shard at a time)."""
    cpus_per_worker: float = 1.0
    """CPUs per actor (also its torch threads)."""
    batch_size: int = 1024
    """Prompts per adapter forward (bounds memory with the shard's row-group size)."""

    def validate(self) -> None:
        _required(self.adapter, "adapter", "--adapter DIR")
        check(len(self.source) >= 1, "source", "give at least one --source STORE")
        _required(self.out, "out", "--out STORE")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


@stage_config
class RecycleConfig(StageConfig):
    """`puma-ray recycle`: every prompt of a source store mapped into a target model's space with no user data."""

    source: Optional[str] = None
    """Source prompt store."""
    source_model: Optional[str] = None
    """The model the source store belongs to (fingerprints must match): its token embeddings fit the map."""
    target_model: Optional[str] = None
    """The new model: its token embeddings fit the map, and the recycled store belongs to it."""
    out: Optional[str] = None
    """Recycled prompt store (built beside and swapped in whole)."""
    head_from: Optional[str] = None
    """Store whose task head the recycled store takes (e.g. the target's floor); null = the source store's head."""
    ridge: float = 1e-3
    """Ridge strength of the least-squares map, relative to the mean eigenvalue of the source tokens' Gram matrix."""
    batch_rows: int = 65536
    """Prompts mapped per batch (bounds memory)."""

    def validate(self) -> None:
        _required(self.source, "source", "--source STORE")
        _required(self.source_model, "source_model", "--source-model MODEL")
        _required(self.target_model, "target_model", "--target-model MODEL")
        _required(self.out, "out", "--out STORE")
        check(self.ridge >= 0, "ridge", "must be >= 0")
        check(self.batch_rows >= 1, "batch_rows", "must be >= 1")


@stage_config
class ColdstartConfig(StageConfig):
    """`puma-ray coldstart`: prompts for users of a dataset whom a (migrated) store lacks, from their nearest users."""

    data: Optional[str] = None
    """Canonical dataset directory: its users that the store lacks are the cold-start users."""
    prompts: Optional[str] = None
    """Prompt store on the target model (e.g. `migrate`'s output) whose users are the neighbours."""
    out: Optional[str] = None
    """Output store: every prompt of --prompts plus one per cold-start user (built beside and swapped in whole)."""
    neighbours: int = 20
    """Nearest users (cosine of their train-item sets) whose prompts are averaged, weighted by similarity."""
    chunk_users: int = 1024
    """Cold-start users whose similarities are computed at a time (bounds memory)."""

    def validate(self) -> None:
        _required(self.data, "data", "--data DIR")
        _required(self.prompts, "prompts", "--prompts STORE")
        _required(self.out, "out", "--out STORE")
        check(self.neighbours >= 1, "neighbours", "must be >= 1")
        check(self.chunk_users >= 1, "chunk_users", "must be >= 1")


@stage_config
class EvaluateConfig(Accelerators):
    """`puma-ray evaluate`: score a prompt store with its model over one split of a dataset."""

    data: Optional[str] = None
    """Canonical dataset directory."""
    model: Optional[str] = None
    """Hugging Face model directory or hub id the store belongs to (fingerprints must match)."""
    prompts: Optional[str] = None
    """Prompt store to score (its head.safetensors/head.json give the task head)."""
    split: list[Literal["train", "valid", "test"]] = dataclasses.field(default_factory=lambda: ["valid"])
    """Split(s) scored, in one pass; several write one sub-directory per split (OUT/<split>/metrics.json)."""
    out: Optional[str] = None
    """Output directory: metrics.json, per_user.parquet, report.md (per split), rows.parquet."""
    workers: int = 1
    """Ray Data actors holding the model."""
    cpus_per_worker: float = 1.0
    """CPUs each actor reserves (fewer when that would leave Ray Data no CPU to read with)."""
    batch_size: int = 64
    """Rows per model forward."""
    prefix_cache: bool = True
    """Reuse the key/values of the template's constant prefix."""
    broadcast_mb: int = 256
    """Stores up to this many MB of prompts are sent whole to each scorer (no shuffle); larger ones are hash-joined."""
    one_task_rows: int = 200_000
    """With one worker, at most this many rows are scored in one Ray task, without a Ray Data pipeline (0: never)."""
    baselines: bool = True
    """Fit the trivial baselines on train and score them on the same rows (the driver reads 4 columns of the dataset)."""

    def validate(self) -> None:
        _required(self.data, "data", "--data DIR")
        _required(self.model, "model", "--model MODEL")
        _required(self.prompts, "prompts", "--prompts STORE")
        _required(self.out, "out", "--out DIR")
        check(len(self.split) >= 1 and len(set(self.split)) == len(self.split), "split", "give distinct splits")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.one_task_rows >= 0, "one_task_rows", "must be >= 0")


@stage_config
class SelectConfig(StageConfig):
    """`puma-ray select`: choose the users the adapter trains on (PUMA or a Table 4 baseline)."""

    data: Optional[str] = None
    """Canonical dataset directory (training labels give each user's variance)."""
    prompts: Optional[str] = None
    """Source prompt store (K-means runs on these prompts)."""
    out: Optional[str] = None
    """Selection directory: selected.parquet, assignments.parquet, report.md/json, selection.png."""
    strategy: Literal["puma", "random", "variance", "loss", "kmeans", "kmeans-pca", "kmeans-fps", "kmeans-loss",
                      "ffn"] = "puma"
    """Selection strategy (puma = K-means on prompts + variance strata with Gaussian weights)."""
    budget: int = 2000
    """Users to select (paper: 2,000 for Amazon/Yelp, 1,500 for MIND)."""
    seed: int = 0
    """Seed of K-means initialisation and of every draw."""
    clusters: int = 10
    """K-means clusters k."""
    bins: int = 5
    """Strata per cluster (or over all users for variance/loss)."""
    weights: Literal["normal", "linear", "uniform"] = "normal"
    """Stratum weights of variance/loss/kmeans-loss/ffn (puma always uses normal: exp(-x^2/2)+0.1)."""
    min_per_cluster: Optional[int] = None
    """puma/ffn: users every cluster gets first (all of a smaller one); null = 0.375 x budget / clusters, the reference code's 50 x 15 / 2,000."""
    pca_dim: int = 32
    """kmeans-pca: dimension after incremental PCA; kmeans-fps: space farthest points are measured in."""
    kmeans_passes: int = 2
    """Mini-batch K-means passes over the prompts (each streams the store once)."""
    batch_rows: int = 8192
    """Prompts per streamed batch (bounds memory: batch_rows x l x d floats)."""
    ffn_layers: Optional[int] = None
    """ffn: last decoder layers whose FFN outputs (mean over the prompt's positions) are clustered; null = min(3, model layers)."""
    ffn_strata: Literal["variance", "loss"] = "variance"
    """ffn: what users are stratified by inside each cluster."""
    losses: Optional[str] = None
    """loss strategies: an `evaluate --split train` output (per_user.parquet); null = computed here."""
    workers: int = 1
    """Ray Data actors that run the source model (loss, ffn)."""
    batch_size: int = 64
    """Rows per model forward (loss, ffn)."""

    def validate(self) -> None:
        _required(self.data, "data", "--data DIR")
        _required(self.prompts, "prompts", "--prompts STORE")
        _required(self.out, "out", "--out DIR")
        check(self.budget >= 1, "budget", "must be >= 1")
        check(self.clusters >= 1, "clusters", "must be >= 1")
        check(self.bins >= 1, "bins", "must be >= 1")
        check(self.min_per_cluster is None or self.min_per_cluster >= 0, "min_per_cluster", "must be >= 0 or null")
        check(self.pca_dim >= 2, "pca_dim", "must be >= 2")
        check(self.kmeans_passes >= 1, "kmeans_passes", "must be >= 1")
        check(self.batch_rows >= 1, "batch_rows", "must be >= 1")
        check(self.ffn_layers is None or self.ffn_layers >= 1, "ffn_layers", "must be >= 1 or null")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")

    @property
    def resolved_min_per_cluster(self) -> int:
        """min_per_cluster after its default (the reference code's 50 x 15 / 2,000 = 0.375 of the budget)."""
        if self.min_per_cluster is not None:
            return self.min_per_cluster
        return max(1, int(0.375 * self.budget / self.clusters))
