"""Typed stage configuration, its machinery: dataclasses loaded from YAML, flags and `key=value` overrides.

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
class Accelerators(StageConfig):
    """GPU and dtype settings of every stage that runs a model on Ray workers or actors (declared once here)."""

    use_gpu: bool = False
    """GPUs (gpus_per_worker each) for every Ray Train worker and Ray Data actor that runs a model."""
    gpus_per_worker: PositiveFloat = 1.0
    """GPUs each worker or actor reserves with --use-gpu (0.5: two share a GPU)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype of the frozen LLM and adapter: auto = bfloat16 on GPU, float32 on CPU (stores stay float32)."""
