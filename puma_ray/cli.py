"""The `puma-ray` command: one subcommand per stage, all built the same way.

Each subcommand gets `--config FILE.yaml`, one `--flag` per config field (help =
the field's docstring) and trailing `key=value` overrides. It calls the stage's
plain function (the same one `jobs/<stage>.py` calls), logs progress to stderr
and ends by printing exactly one JSON line on stdout. Exit status: 0 on success,
2 on a configuration error, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
import traceback
import typing
from typing import Any, Callable, Optional

from puma_ray.config import (AdapterStageConfig, BenchConfig, ChainConfig, ColdstartConfig, DataConfig, DemoConfig,
                             EvaluateConfig,
                             MigrateConfig, ModelsConfig, PromptsConfig, RecycleConfig, SelectConfig, SweepConfig,
                             field_docs, load_config)
from puma_ray.errors import ConfigError, PumaError, worker_error_line
from puma_ray.runtime.job_paths import job_paths, split_root
from puma_ray.runtime.runs import setup_logging

# name -> (config class, "module:function", one-line description)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "data": (DataConfig, "puma_ray.stages.data:run_data",
             "raw interactions (synthetic, movielens, amazon, mind, yelp) -> canonical dataset directory"),
    "models": (ModelsConfig, "puma_ray.stages.models:run_models",
               "build a tiny offline Hugging Face model of a real family, with a tokenizer trained on the data"),
    "prompts": (PromptsConfig, "puma_ray.stages.prompts:run_prompts",
                "train every user's soft prompt on a frozen model (source prompts, full retraining, floor)"),
    "select": (SelectConfig, "puma_ray.stages.select:run_select",
               "choose the adapter's training users: PUMA (K-means + variance strata) or a Table 4 baseline"),
    "adapter": (AdapterStageConfig, "puma_ray.stages.adapter:run_adapter",
                "train the migration adapter through the frozen target model on selected users"),
    "migrate": (MigrateConfig, "puma_ray.stages.migrate:run_migrate",
                "apply a trained adapter to every user of the source store(s) -> target prompt store (resumable; "
                "--dtype is the adapter's arithmetic: bfloat16 on AMX CPUs ~3x float32, stores stay float32)"),
    "recycle": (RecycleConfig, "puma_ray.stages.recycle:run_recycle",
                "zero-user migration: map every source prompt through the two models' shared-token embeddings"),
    "coldstart": (ColdstartConfig, "puma_ray.stages.coldstart:run_coldstart",
                  "prompts for users a migrated store lacks, from their nearest users' prompts (item overlap)"),
    "evaluate": (EvaluateConfig, "puma_ray.stages.evaluate:run_evaluate",
                 "score a prompt store with its model over a split: metrics, per-user metrics, report"),
    "chain": (ChainConfig, "puma_ray.stages.chain:run_chain",
              "chained migration A -> B -> C: select, adapter, migrate and evaluate at every hop"),
    "sweep": (SweepConfig, "puma_ray.experiments.sweep:run_sweep",
              "Ray Tune over budgets, group counts and adapter widths/ranks: the cost/accuracy curve and best.yaml"),
    "bench": (BenchConfig, "puma_ray.experiments.bench:run_bench",
              "PUMA vs full retraining vs random selection over seeds and sizes; cost projected to 1M users"),
    "demo": (DemoConfig, "puma_ray.experiments.demo:run_demo",
             "run every available stage end to end on the offline default (dtype auto: bfloat16 at size real)"),
}

# `python jobs/select.py` would put jobs/ first on sys.path and shadow the standard library's `select`.
_JOB_FILES = {"select": "jobs/select_users.py"}


def job_file(name: str) -> str:
    """The `ray job submit` entrypoint of subcommand `name`, relative to the repository root."""
    return _JOB_FILES.get(name, f"jobs/{name}.py")


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*=")


class _Parser(argparse.ArgumentParser):
    """argparse that fails with one line and the JSON summary instead of a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        _fail(self.prog, f"{message} (see {self.prog} --help)", 2)


def _fail(prog: str, message: str, code: int) -> typing.NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    print(json.dumps({"command": prog, "ok": False, "error": message}), flush=True)
    sys.exit(code)


def _add_field_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {f.default!r})".replace("%", "%%")  # argparse formats help
        tp = hints[f.name]
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=argparse.SUPPRESS,
                                help=help_text + "; key=false turns it off")
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, dest=f.name, action="extend", nargs="+", default=argparse.SUPPRESS,
                                metavar="VALUE", help=help_text + "; several: repeat the flag, list them, or use commas")
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar="VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="puma-ray", description="Migrate per-user LLM soft prompts to a new model (PUMA) on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for name, (cls, _, description) in COMMANDS.items():
        p = sub.add_parser(name, help=description, description=description)
        p.add_argument("--config", dest="_config", metavar="FILE.yaml", help="YAML file with this stage's keys")
        _add_field_flags(p, cls)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied last")
    return parser


def resolve(name: str) -> Callable[[Any], dict]:
    """The stage function behind subcommand `name` (imported lazily: --help stays fast)."""
    module, func = COMMANDS[name][1].split(":")
    return getattr(importlib.import_module(module), func)


def parse_command(argv: Optional[list[str]] = None) -> tuple[str, Callable[[], Any]]:
    """(subcommand, a function that builds its validated config) from a command line, as `main` runs it."""
    args = vars(build_parser().parse_args(argv))
    name = args.pop("command")
    config_path, overrides = args.pop("_config", None), list(args.pop("overrides", ()))
    for key, value in args.items():  # a list flag's values swallow the trailing key=value overrides: give them back
        if isinstance(value, list):
            args[key] = [v for v in value if not _OVERRIDE.match(v)]
            overrides = [v for v in value if _OVERRIDE.match(v)] + overrides
    return name, lambda: load_config(COMMANDS[name][0], config_path, args, tuple(overrides))


def main(argv: Optional[list[str]] = None, job: bool = False) -> int:
    """Run one subcommand; job=True for jobs/<stage>.py under `ray job submit` (takes --root DIR; relative paths
    are resolved against it or refused: runtime/job_paths.py)."""
    root = None
    if job:
        root, argv = split_root(list(sys.argv[1:] if argv is None else argv))
    name, config = parse_command(argv)
    prog = f"puma-ray {name}"
    setup_logging()
    try:
        cfg = job_paths(config(), root) if job else config()
        summary = resolve(name)(cfg)
    except KeyboardInterrupt:
        _fail(prog, "interrupted", 130)
    except Exception as exc:
        worker = worker_error_line(exc)  # first: Ray re-raises a worker's PumaError as a subclass of it
        if worker:
            _fail(prog, f"in a Ray worker: {worker} (worker logs: /tmp/ray/session_latest/logs)", 1)
        if isinstance(exc, PumaError):
            _fail(prog, str(exc), 2 if isinstance(exc, ConfigError) else 1)
        traceback.print_exc()  # a bug, not a user error: keep the traceback for the report
        _fail(prog, f"{type(exc).__name__}: {exc}", 1)
    print(json.dumps({"command": prog, "ok": True, **summary}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
