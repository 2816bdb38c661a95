"""Configs of the runs made of many stages: `chain`, `demo`, `sweep`, `bench`."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Literal, Optional

from puma_ray.config.apply import SelectConfig
from puma_ray.config.base import Accelerators, _required, check, stage_config


@stage_config
class ChainConfig(Accelerators):
    """`puma-ray chain`: select -> adapter -> migrate -> evaluate along a list of models (A -> B -> C ...).

    Each hop's migrated store is the next hop's source: prompts are never retrained."""

    data: Optional[str] = None
    """Canonical dataset directory."""
    source: Optional[str] = None
    """Prompt store trained on the first model of the chain."""
    models: list[str] = dataclasses.field(default_factory=list)
    """Models to migrate to, in order (each a Hugging Face directory or hub id)."""
    out: Optional[str] = None
    """Output directory: hop-N/{selection,adapter,store,eval}, report.md, chain.png."""
    strategy: Literal["puma", "random", "variance", "loss", "kmeans", "kmeans-pca", "kmeans-fps", "kmeans-loss",
                      "ffn"] = "puma"
    """Selection strategy at every hop."""
    budget: int = 2000
    """Users the adapter of every hop trains on."""
    clusters: int = 10
    """K-means clusters of the selection."""
    min_per_cluster: Optional[int] = None
    """Users every cluster gets first (puma); null = the select stage's default."""
    workers: int = 1
    """Ray Train workers (adapter) and Ray Data actors (migrate, evaluate)."""
    epochs: int = 4
    """Adapter epochs per hop (raised to reach min_steps)."""
    min_steps: int = 200
    """Optimizer steps every hop's adapter takes at least (the adapter stage's default)."""
    lr: float = 1e-3
    """Adapter learning rate (the adapter stage's default)."""
    width: Optional[int] = None
    """Adapter FFN width; null = 2 x the source dimension of each hop."""
    rank: int = 0
    """Adapter rank (0 = full rank)."""
    batch_size: int = 32
    """Adapter batch size per worker."""
    split: Literal["valid", "test"] = "test"
    """Split each hop is scored on (valid chooses each adapter's best epoch)."""
    seed: int = 0
    """Seed of selection and adapter training."""
    overwrite: bool = False
    """Re-run hops of --out made with other settings or inputs (deleting them); without it such a hop is refused."""

    def validate(self) -> None:
        _required(self.data, "data", "--data DIR")
        _required(self.source, "source", "--source STORE")
        check(len(self.models) >= 1, "models", "give at least one --models MODEL (the chain's next models)")
        _required(self.out, "out", "--out DIR")
        check(self.budget >= 1, "budget", "must be >= 1")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.width is None or self.width >= 1, "width", "must be >= 1 or null")


@stage_config
class DemoConfig(Accelerators):
    """`puma-ray demo`: every stage that exists, end to end, on an offline default (dtype auto: bfloat16 at size
    real, where the AMX CPUs run real LLMs ~2x faster)."""

    out: str = "runs/demo"
    """Directory all demo outputs go under (one sub-directory per stage)."""
    size: Literal["tiny", "default", "large", "real"] = "default"
    """Scale of data and models; real = MovieLens users between two real LLMs (needs the real-models extra)."""
    seed: int = 0
    """Seed passed to every stage."""
    source_family: Literal["llama", "qwen2", "gemma3", "phi3", "stablelm"] = "llama"
    """Family of the source (old) model."""
    target_family: Literal["llama", "qwen2", "gemma3", "phi3", "stablelm"] = "qwen2"
    """Family of the target (new) model."""
    target_hidden: Optional[int] = 128
    """Hidden size of the tiny target model (wider than the source's: an upgrade, as in the paper); null = family default."""
    movielens: Optional[str] = "../shared/data/ml-100k"
    """MovieLens 100k directory, also prepared when it exists; null skips it."""
    pretrain_steps: Optional[int] = None
    """Pretraining steps of each tiny model; null = by size (tiny 100; default and large: 3 passes over train rows)."""
    workers: int = 2
    """Ray Train workers of every training stage."""
    prompt_lr: float = 5e-3
    """Learning rate of prompt training (above the paper's 5e-4: tiny models, few epochs)."""
    adapter_lr: Optional[float] = None
    """Learning rate of adapter training; null = the adapter stage's default."""
    adapter_width: Optional[int] = None
    """Adapter FFN width; null = the adapter stage's default (2 x the source dimension)."""

    def validate(self) -> None:
        check(self.out != "", "out", "must not be empty")
        check(self.source_family != self.target_family, "target_family",
              "must differ from source_family (the demo migrates across families)")
        check(self.pretrain_steps is None or self.pretrain_steps >= 0, "pretrain_steps", "must be >= 0 or null")
        check(self.target_hidden is None or 16 <= self.target_hidden <= 8192, "target_hidden",
              "must be between 16 and 8192 or null")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.prompt_lr > 0, "prompt_lr", "must be > 0")
        check(self.adapter_lr is None or self.adapter_lr > 0, "adapter_lr", "must be > 0 or null")
        check(self.adapter_width is None or self.adapter_width >= 1, "adapter_width", "must be >= 1 or null")


@stage_config
class SweepConfig(Accelerators):
    """`puma-ray sweep`: Ray Tune over selection and adapter knobs -> the cost/accuracy curve."""

    data: Optional[str] = None
    """Canonical dataset directory (valid chooses configs, --split is reported)."""
    source: list[str] = dataclasses.field(default_factory=list)
    """Source prompt store(s); several = aggregated migration."""
    target_model: Optional[str] = None
    """Hugging Face model directory or hub id of the new model."""
    space: Optional[str] = None
    """Search space file (tune_spaces/*.yaml): which trial parameters vary and how."""
    out: Optional[str] = None
    """Sweep directory: results.csv/.parquet, pareto.csv, cost_accuracy.png, budget_curve.png, best.yaml, trials/."""
    name: str = "sweep"
    """Tune experiment name; re-running with the same --out and --name resumes it (finished trials are kept)."""
    max_concurrent: int = 1
    """Trials running at once (each runs its own stages; on 2 CPUs keep 1)."""
    scheduler: Optional[Literal["fifo", "asha"]] = None
    """fifo runs every trial to the end; asha stops trials early on the adapter's per-epoch valid metric; null = the space's."""
    reference: Optional[str] = None
    """reference.json (or its directory) with floor and full retraining on the same data and split, for gap closure."""
    split: Literal["test", "valid"] = "test"
    """Split every trial is reported on (configs are always chosen on valid)."""
    workers: int = 1
    """Ray Train workers of each trial's adapter."""
    cpus_per_worker: float = 0.5
    """CPUs each adapter worker reserves."""
    seed: int = 0
    """Seed of the random draws of the space (each trial's own seed is the `seed` parameter)."""

    def validate(self) -> None:
        _required(self.data, "data", "--data DIR")
        check(len(self.source) >= 1, "source", "give at least one --source STORE")
        _required(self.target_model, "target_model", "--target-model MODEL")
        _required(self.space, "space", "--space tune_spaces/NAME.yaml")
        _required(self.out, "out", "--out DIR")
        check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name)), "name", "use letters, digits, '.', '_' or '-'")
        check(self.max_concurrent >= 1, "max_concurrent", "must be >= 1")
        check(self.split != "valid", "split", "valid chooses the configs; report on test (the default)")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")


@stage_config
class BenchConfig(Accelerators):
    """`puma-ray bench`: PUMA vs full retraining vs random selection, several seeds and sizes, cost projected."""

    data: Optional[str] = None
    """Canonical dataset directory; --sizes takes seeded user subsets of it."""
    source_model: Optional[str] = None
    """Model the source prompts are trained on (their cost is reported as already paid)."""
    target_model: Optional[str] = None
    """Model migrated to (floor, full retraining and every adapter run on it)."""
    budget: int = 2000
    """Users each selection strategy trains the adapter on (random also runs at 3 x budget)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; the same seed gives every method the same initialisation and data order (paired)."""
    out: Optional[str] = None
    """Bench directory: report.md, table.csv, runs.csv, metrics.png, cost.png, bench.json, n<size>/."""
    recycle: bool = False
    """Also run prompt recycling per seed (`puma-ray recycle`: no user data, the seed's floor head): its row in the table."""
    recycled_init: bool = False
    """Also run the first strategy at the budget with its adapter started from the recycled prompts (needs --recycle)."""
    warm_epochs: int = 0
    """Also tune the first strategy's migrated prompts this many epochs on the target (`prompts --init-from`); 0 = off."""
    coldstart_fraction: float = 0.0
    """Also a row where this seeded fraction of the users (never selected ones) lack a source prompt and get one from `coldstart`; 0 = off."""
    strategies: list[str] = dataclasses.field(default_factory=lambda: ["puma", "random"])
    """Strategies run at the budget (the first is compared with random); 'all' = every registered one."""
    sizes: list[int] = dataclasses.field(default_factory=list)
    """User counts to measure at (seeded subsets of --data; >= 2 sizes fit the cost lines); empty = all users."""
    split: Literal["test"] = "test"
    """Split every figure is reported on (never used to choose epochs or configs)."""
    workers: int = 2
    """Ray Train workers of every training run."""
    cpus_per_worker: float = 0.5
    """CPUs each training worker reserves."""
    prompt_epochs: int = 15
    """Epochs of source prompts, floor and full retraining (paper: 15)."""
    prompt_lr: float = 5e-4
    """Learning rate of prompt training (paper: 5e-4)."""
    adapter_epochs: Optional[int] = None
    """Adapter epochs; null = the adapter stage's default."""
    adapter_min_steps: Optional[int] = None
    """Optimizer steps every adapter takes at least; null = the adapter stage's default."""
    adapter_lr: Optional[float] = None
    """Adapter learning rate; null = the adapter stage's default."""
    adapter_width: Optional[int] = None
    """Adapter width; null = the adapter stage's default (2 x source dim)."""
    clusters: int = 10
    """K-means clusters of the K-means strategies."""
    min_per_cluster: Optional[int] = None
    """Users every cluster gets first; null = the select stage's default."""
    bins: int = 5
    """Strata per cluster."""
    project_users: list[int] = dataclasses.field(default_factory=lambda: [100_000, 1_000_000])
    """User counts the fitted costs are projected to."""
    project_budget: int = 2000
    """Selection budget assumed in the projection (paper: 2,000)."""

    def validate(self) -> None:
        names = typing.get_args(typing.get_type_hints(SelectConfig)["strategy"])  # the registry's names
        _required(self.data, "data", "--data DIR")
        _required(self.source_model, "source_model", "--source-model MODEL")
        _required(self.target_model, "target_model", "--target-model MODEL")
        _required(self.out, "out", "--out DIR")
        check(self.budget >= 1, "budget", "must be >= 1")
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "give distinct seeds")
        check(self.strategies == ["all"] or (len(self.strategies) >= 1 and set(self.strategies) <= set(names)),
              "strategies", f"'all' or names from: {', '.join(names)}")
        check(all(n >= 2 for n in self.sizes) and len(set(self.sizes)) == len(self.sizes), "sizes",
              "give distinct user counts >= 2")
        check(self.recycle or not self.recycled_init, "recycled_init", "needs --recycle (the store it starts from)")
        check(self.warm_epochs >= 0, "warm_epochs", "must be >= 0 (0 = off)")
        check(0 <= self.coldstart_fraction < 1, "coldstart_fraction", "must be in [0, 1) (0 = off)")
        check(self.workers >= 1, "workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.prompt_epochs >= 1 and self.prompt_lr > 0, "prompt_epochs", "epochs >= 1 and lr > 0")
        check(self.clusters >= 1 and self.bins >= 1, "clusters", "clusters and bins must be >= 1")
        check(all(u >= 1 for u in self.project_users) and self.project_budget >= 1, "project_users", "must be >= 1")
