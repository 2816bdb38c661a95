"""Paths of a stage run as a `ray job submit` job (jobs/<stage>.py), checked before anything runs.

A job runs in Ray's per-job copy of the uploaded working directory on the head node. A relative
`--out` there is written inside that copy and vanishes with it; a relative input resolves inside it
too, so `../shared/data` or a `runs/...` output of an earlier job (not uploaded) is not there.
So, in a job:

- with a root (`--root DIR` before the stage's flags, or PUMA_RAY_ROOT), every relative path is taken
  relative to it: `--root "$PWD"` on the submitting shell makes a job read and write what the same
  command would on the submitting machine, for a cluster that sees that directory (a local cluster,
  or a shared mount at the same path);
- without one, a relative `--out` is refused, and so is a relative input that is not in the uploaded
  copy (files of the checkout, such as `--space tune_spaces/ci.yaml`, are there and are kept).

Absolute paths and storage URIs (s3://, gs://, ...) are kept as given, and so are: a file of the
uploaded checkout that the root does not hold (`--space tune_spaces/ci.yaml` on a remote cluster), a
model field that is no path here and looks like a hub id (`org/name`), `users: all`, and an optional
input that is used only when it exists (the demo's `movielens`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from puma_ray.errors import ConfigError

OUTPUT_FIELDS = frozenset({"out", "storage_path"})
INPUT_FIELDS = frozenset({"adapter", "calibrate_from", "data", "gguf", "head_from", "init_from", "input", "losses",
                          "model", "models", "movielens", "prompts", "recycled", "reference", "source",
                          "source_model", "space", "target_model", "text", "users"})
MODEL_FIELDS = frozenset({"model", "models", "source_model", "target_model"})
ROOT_ENV = "PUMA_RAY_ROOT"
NOT_PATHS = {"users": {"all"}}
"""Values of path fields that name no path."""
OPTIONAL_INPUTS = frozenset({"movielens"})
"""Inputs a stage uses only when they exist: kept as given, never refused."""


def _is_local_relative(value: Any) -> bool:
    return isinstance(value, str) and value != "" and "://" not in value and not os.path.isabs(value)


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith(".")


def _path_fields(cfg: Any) -> list[str]:
    """The config's fields that hold paths (a string or list of strings named as one; Literal fields are not)."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg) if f.name in OUTPUT_FIELDS | INPUT_FIELDS
             and "Literal" not in str(hints[f.name]) and "str" in str(hints[f.name])]
    return sorted(names, key=lambda n: n not in OUTPUT_FIELDS)  # outputs first: the error that loses work


def _resolve(key: str, value: str, root: str | None, cwd: Path) -> str:
    flag = "--" + key.replace("_", "-")
    if value in NOT_PATHS.get(key, ()):
        return value
    in_checkout = (cwd / value).exists()
    hub_id = key in MODEL_FIELDS and _looks_like_hub_id(value) and not in_checkout
    if root is not None:
        rooted = Path(root) / value
        if key not in OUTPUT_FIELDS and not rooted.exists() and (in_checkout or hub_id):
            return value
        return str(rooted.resolve())
    if key in OUTPUT_FIELDS:
        raise ConfigError(f"{flag} {value}: a relative output path in a Ray job is written inside the job's copy of "
                          "the working directory and lost with it; give an absolute path on storage the cluster "
                          f"sees, a URI (s3://, gs://), or --root DIR (or {ROOT_ENV}) to resolve relative paths")
    if in_checkout or hub_id or key in OPTIONAL_INPUTS:
        return value
    raise ConfigError(f"{flag} {value}: a relative path that is not in the job's copy of the working directory "
                      "(only the checkout is uploaded); give an absolute path on storage the cluster sees, a URI, "
                      f"or --root DIR (or {ROOT_ENV}) to resolve relative paths")


def job_paths(cfg: Any, root: str | None, cwd: Path | None = None) -> Any:
    """`cfg` with the relative paths of a job resolved (or a ConfigError naming the flag); see the module doc."""
    cwd = cwd or Path.cwd()
    changes = {}
    for key in _path_fields(cfg):
        value = getattr(cfg, key)
        if isinstance(value, list):
            new = [_resolve(key, v, root, cwd) if _is_local_relative(v) else v for v in value]
        else:
            new = _resolve(key, value, root, cwd) if _is_local_relative(value) else value
        if new != value:
            changes[key] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


def split_root(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the job's root: --root DIR or PUMA_RAY_ROOT, else None; argv without --root DIR)."""
    root, rest, i = os.environ.get(ROOT_ENV) or None, [], 0
    while i < len(argv):
        if argv[i] == "--root" and i + 1 < len(argv):
            root, i = argv[i + 1], i + 2
        elif argv[i].startswith("--root="):
            root, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return root, rest
