"""Typed stage configuration: one pydantic dataclass per stage, loaded from YAML, flags and `key=value`.

`base` holds the machinery (coercion, one-line errors, loading) and the settings groups declared once
(`Accelerators`); the stage configs live by pipeline part: `build` (models, data), `training` (prompts,
adapter), `apply` (migrate, recycle, coldstart, evaluate, select), `experiments` (chain, demo, sweep, bench).
Everything is importable from `puma_ray.config`.
"""

from puma_ray.config.apply import ColdstartConfig, EvaluateConfig, MigrateConfig, RecycleConfig, SelectConfig
from puma_ray.config.base import (FAMILIES, SOURCES, Accelerators, ConfigError, StageConfig, build_config, check,
                                  coerce, field_docs, load_config, local_path, parse_override, read_yaml,
                                  stage_config)
from puma_ray.config.build import DataConfig, ModelsConfig
from puma_ray.config.experiments import BenchConfig, ChainConfig, DemoConfig, SweepConfig
from puma_ray.config.training import AdapterStageConfig, PromptsConfig, TrainingConfig

__all__ = ["Accelerators", "AdapterStageConfig", "BenchConfig", "ChainConfig", "ColdstartConfig", "ConfigError",
           "DataConfig", "DemoConfig", "EvaluateConfig", "FAMILIES", "MigrateConfig", "ModelsConfig",
           "PromptsConfig", "RecycleConfig", "SOURCES", "SelectConfig", "StageConfig", "SweepConfig",
           "TrainingConfig", "build_config", "check", "coerce", "field_docs", "load_config", "local_path",
           "parse_override", "read_yaml", "stage_config"]
