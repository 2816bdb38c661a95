"""Sweep search spaces: a YAML file of trial parameters and how each is drawn (no Ray here).

A space file (tune_spaces/*.yaml) is a mapping:

    num_samples: 1            # draws of the random dimensions per grid point (Tune's num_samples)
    scheduler: fifo           # fifo | asha (the CLI's --scheduler overrides it)
    grace_period: 1           # asha: epochs every trial runs before it may be stopped
    params:                   # every key a trial parameter (TRIAL_KEYS), each value one of:
      strategy: puma                           #   a constant
      budget: {grid: [0.02, 0.1, 0.4]}         #   every value, crossed with the other grids
      clusters: {choice: [5, 10, 20]}          #   one value drawn per sample
      lr: {loguniform: [1.0e-4, 1.0e-2]}       #   log-uniform / uniform draws between two numbers
      rank: {randint: [8, 513]}                #   integer in [low, high)

`budget` below 1 is a fraction of the source store's users (0.02 = 2%), 1 or more a count.
Every value is checked against the field type of the stage that uses it (select or adapter),
so a typo or a wrong type fails before any trial starts, naming the key.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puma_ray.config import AdapterStageConfig, SelectConfig, coerce, read_yaml
from puma_ray.errors import ConfigError

SELECT_KEYS = ("strategy", "budget", "clusters", "bins", "min_per_cluster", "weights", "pca_dim")
ADAPTER_KEYS = ("width", "rank", "lora_rank", "lr", "epochs", "min_steps", "dropout", "batch_size", "head_init")
TRIAL_KEYS = SELECT_KEYS + ADAPTER_KEYS + ("seed",)
KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("params", "num_samples", "scheduler", "grace_period", "description")


@dataclass(frozen=True)
class Dim:
    """One parameter of the space: a constant (kind 'const', args = (value,)) or a distribution."""

    kind: str
    args: tuple


@dataclass
class SearchSpace:
    """A validated search space."""

    params: dict[str, Dim]
    num_samples: int = 1
    scheduler: str = "fifo"
    grace_period: int = 1
    path: str = ""
    raw: dict = field(default_factory=dict)

    def grid_size(self) -> int:
        """Trials the space asks for: product of grid lengths x num_samples."""
        n = self.num_samples
        for d in self.params.values():
            if d.kind == "grid":
                n *= len(d.args)
        return n

    def max_epochs(self, default: int) -> int:
        """Largest adapter epoch count any trial can draw (ASHA's max_t)."""
        d = self.params.get("epochs")
        if d is None:
            return default
        if d.kind in ("const",):
            return int(d.args[0])
        if d.kind in ("grid", "choice"):
            return int(max(d.args))
        return int(max(d.args)) - (1 if d.kind == "randint" else 0)


def _field_type(key: str) -> Any:
    cls = SelectConfig if key in SELECT_KEYS else AdapterStageConfig
    if key == "seed":
        return int
    if key == "width":
        return int  # the adapter's `width` may be null (derived); a sweep gives numbers
    return typing.get_type_hints(cls)[key]


def check_value(key: str, value: Any, where: str) -> Any:
    """A parameter value coerced to its stage's field type (budget: count >= 1 or fraction in (0, 1))."""
    if key == "budget":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}: budget {value!r} must be a user count >= 1 or a fraction in (0, 1)")
        if value >= 1 and float(value) != int(value):
            raise ConfigError(f"{where}: budget {value!r} >= 1 must be a whole number of users")
        return int(value) if value >= 1 else float(value)
    return coerce(value, _field_type(key), where)


def _dim(key: str, spec: Any, where: str) -> Dim:
    if not isinstance(spec, dict):
        return Dim("const", (check_value(key, spec, where),))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: expected a value or one of {{{', '.join(k + ': ...' for k in KINDS)}}}, "
                          f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {args!r}")
    if kind in ("grid", "choice"):
        return Dim(kind, tuple(check_value(key, a, f"{where}.{kind}[{i}]") for i, a in enumerate(args)))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
            or not args[0] < args[1]:
        raise ConfigError(f"{where}: {kind} takes [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {args!r}")
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise ConfigError(f"{where}: randint takes integers [low, high), got {args!r}")
    for a in args:  # both ends must be valid values of the key
        check_value(key, int(a) if kind == "randint" else a, f"{where}.{kind}")
    return Dim(kind, tuple(args))


def parse_space(raw: dict, where: str = "space") -> SearchSpace:
    """Validate a space mapping; every error names the key (and the file)."""
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: 'params' must map trial parameters to values or distributions")
    dims = {}
    for key, spec in params.items():
        if key not in TRIAL_KEYS:
            raise ConfigError(f"{where}: unknown parameter {key!r}; searchable: {', '.join(TRIAL_KEYS)}")
        dims[key] = _dim(key, spec, f"{where}: params.{key}")
    num_samples = coerce(raw.get("num_samples", 1), int, f"{where}: num_samples")
    scheduler = raw.get("scheduler", "fifo")
    if scheduler not in ("fifo", "asha"):
        raise ConfigError(f"{where}: scheduler {scheduler!r} must be fifo or asha")
    grace = coerce(raw.get("grace_period", 1), int, f"{where}: grace_period")
    if num_samples < 1 or grace < 1:
        raise ConfigError(f"{where}: num_samples and grace_period must be >= 1")
    return SearchSpace(dims, num_samples, scheduler, grace, raw=raw)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file (a missing file or bad YAML is a ConfigError naming it)."""
    space = parse_space(read_yaml(path), where=str(path))
    space.path = str(Path(path).resolve())
    return space
