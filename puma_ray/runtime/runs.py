"""Run directories and cost records, shared by every stage.

A stage calls `open_run(out, stage, cfg)` to create its output directory and
write `config.yaml` (the fully resolved config), then wraps its work in
`CostMeter` from its first read of data to its last write, which appends one JSON
line to `<out>/costs.jsonl` (docs/design.md "Cost record"); `startup_s` says which part
of the wall time was start-up. `bench` and `sweep` read these records (through
experiments/trial.py); nothing estimates cost from guesses.

device_seconds = wall_s x workers x devices-per-worker: the time the stage held
its devices (GPUs, or CPU worker slots on a CPU run), which is what a cluster bill
counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from puma_ray.errors import PumaError

COSTS_FILE = "costs.jsonl"
CONFIG_FILE = "config.yaml"

log = logging.getLogger("puma_ray")


def setup_logging(level: int = logging.INFO) -> None:
    """Progress goes to stderr so that stdout ends with exactly one JSON summary line."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[puma-ray %(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


class Progress:
    """Logs `done/total what` at most every `every_s` seconds, and always at the end."""

    def __init__(self, what: str, total: int, every_s: float = 10.0) -> None:
        self.what, self.total, self.every_s = what, total, every_s
        self.done, self._t0, self._last = 0, time.perf_counter(), 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter() - self._t0
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            eta = now / self.done * (self.total - self.done) if self.done else 0.0
            log.info("%s: %d/%d (%.0f s elapsed, ~%.0f s left)", self.what, self.done, self.total, now, eta)


def config_hash(cfg: Any) -> str:
    """16-hex digest of the resolved config (dataclass or dict), stable across runs."""
    data = cfg if isinstance(cfg, dict) else asdict(cfg)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


KIND_FILE = "kind.json"
STAGE_KINDS = {"data": "dataset", "models": "model", "prompts": "prompt store", "recycle": "prompt store",
               "coldstart": "prompt store", "migrate": "prompt store", "select": "selection", "adapter": "adapter",
               "evaluate": "evaluation", "sweep": "sweep", "bench": "bench", "chain": "chain", "demo": "demo"}
"""The kind of output each stage writes; an --out holding another kind is refused (check_out)."""


def write_kind(path: Path, kind: str) -> None:
    """Record what `path` holds (kind.json), before any other file of the output is written (left as it is when it
    already says so: a re-run that changes nothing changes no file)."""
    from puma_ray import __version__

    if (Path(path) / KIND_FILE).is_file() and read_kind(path) == kind:
        return
    (path / KIND_FILE).write_text(json.dumps({"kind": kind, "created_by": f"puma-ray {__version__}"}) + "\n")


_CONFIG_HEADER = re.compile(r"^# resolved config of `puma-ray (\w+)`")


def read_kind(path: str | Path) -> str | None:
    """The kind recorded in `path`/kind.json; for an output written before kind.json existed, the kind of the
    stage its config.yaml names on its first line (open_run's header); None when neither says."""
    path = Path(path)
    if (path / KIND_FILE).exists():
        try:
            kind = json.loads((path / KIND_FILE).read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None
    try:
        with (path / CONFIG_FILE).open() as f:
            found = _CONFIG_HEADER.match(f.readline())
    except (OSError, UnicodeDecodeError):
        return None
    return STAGE_KINDS.get(found.group(1)) if found else None


def open_run(out: str | Path, stage: str, cfg: Any, final: str | Path | None = None,
             config_name: str = CONFIG_FILE) -> Path:
    """Create `out`, record its kind (kind.json) and write the resolved config next to the outputs; return the path.

    final: where the output will live when it is built beside it (`beside`), for the rerun line.
    config_name: where the config goes (stages that build in place write it aside and move it in at the end,
    so that a failed re-run leaves the config of the output that is still there)."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    write_kind(path, STAGE_KINDS[stage])
    data = cfg if isinstance(cfg, dict) else asdict(cfg)
    shown = Path(final) if final is not None else path
    header = f"# resolved config of `puma-ray {stage}`; rerun with: puma-ray {stage} --config {shown / CONFIG_FILE}\n"
    (path / config_name).write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


PENDING_CONFIG = ".config.yaml.next"
"""Where a stage that builds in place (prompts, adapter, migrate) writes its config until its output is complete."""


def commit_config(out: Path) -> None:
    """The pending config becomes config.yaml, once the output it describes is complete (a failed re-run leaves
    config.yaml describing the output still there)."""
    pending = Path(out) / PENDING_CONFIG
    if pending.is_file():
        pending.replace(Path(out) / CONFIG_FILE)


def _article(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def check_out(out: str | Path, kind: str, flag: str = "--out") -> Path:
    """Refuse an --out that would lose something: a file, or a non-empty directory whose kind.json does not name
    `kind` (another kind of output, or files puma-ray did not write). An output of the same kind, complete or
    interrupted, may be replaced or resumed by the stage. Called before anything is written or deleted."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise PumaError(f"{flag} {path} is a file; give a directory")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    held = read_kind(path)
    if held == kind:
        return path
    what = (f"holds {_article(held)}, not {_article(kind)}" if held
            else f"holds files that are not {_article(kind)} (no {KIND_FILE} of puma-ray there)")
    raise PumaError(f"{flag} {path} {what}; nothing was changed (choose a new directory, or empty it)")


def beside(out: str | Path) -> Path:
    """A fresh, empty directory next to `out` where a new output is built before `swap_in`."""
    import shutil

    final = Path(out).resolve()
    work = final.parent / f".{final.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def swap_in(work: Path, out: str | Path) -> Path:
    """Replace `out` with the complete `work` (two renames; the old output is deleted last)."""
    import shutil

    final = Path(out).resolve()
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def build_beside(out: str | Path, stage: str, cfg: Any, build: Callable[[Path], Any]) -> tuple[Path, Any]:
    """Run build(work) in a fresh directory beside `out` (its resolved config written there first), then swap it
    in as `out`; on any failure the work directory is removed and `out` is left as it was.
    Returns (the final path, what build returned)."""
    import shutil

    work = open_run(beside(out), stage, cfg, final=out)
    try:
        result = build(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return swap_in(work, out), result


def write_markdown(path: Path, lines: list[str]) -> Path:
    """A Markdown report, one list item a line; returns its path."""
    path.write_text("\n".join(lines) + "\n")
    return path


def peak_rss_bytes() -> int:
    """Peak resident memory of this process and its finished children (Linux ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids) * 1024)


def device_kind() -> str:
    """'cuda:<name>' when a GPU is visible to this process, else 'cpu'."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return "cpu"


@dataclass
class CostRecord:
    """One stage run's measured cost (one JSON line in costs.jsonl)."""

    stage: str
    wall_s: float
    workers: int
    device_kind: str
    device_seconds: float
    samples: int
    tokens: int
    flops: float
    peak_memory_bytes: int
    config_hash: str
    startup_s: float = 0.0
    """Part of wall_s that was start-up (joining or starting Ray, Ray Train workers loading the model)."""
    extra: dict = field(default_factory=dict)


class CostMeter:
    """Measures a stage: `with CostMeter(out, stage, cfg) as m: ...; m.samples = n`.

    What the stage sets while it runs: `samples` (training samples seen, rows scored or users moved),
    `tokens` (LLM tokens processed), `flops` (their estimated FLOPs), `worker_peak_memory_bytes`,
    `startup_s` (the part of the wall time that was start-up) and `extra` (stage facts: strategy, budget,
    the evaluate path, ...). `record` holds the CostRecord once the `with` block has ended."""

    def __init__(self, out: str | Path, stage: str, cfg: Any, workers: int = 1,
                 devices_per_worker: float = 1.0) -> None:
        """out: the run directory whose costs.jsonl gets the record; cfg: the stage's config (its hash goes
        into the record); workers: workers (or actors) that held a device for the whole run."""
        self.out, self.stage, self.cfg = Path(out), stage, cfg
        self.workers, self.devices_per_worker = workers, devices_per_worker
        self.samples = self.tokens = self.worker_peak_memory_bytes = 0
        self.flops = self.startup_s = 0.0
        self.extra: dict = {}
        self.record: Optional[CostRecord] = None
        self._t0 = 0.0

    def __enter__(self) -> "CostMeter":
        self._t0 = time.perf_counter()
        return self

    def elapsed(self) -> float:
        """Seconds since the meter started."""
        return time.perf_counter() - self._t0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return  # a failed run has no cost worth comparing; the error propagates
        wall = time.perf_counter() - self._t0
        self.record = CostRecord(
            stage=self.stage, wall_s=round(wall, 3), workers=self.workers, device_kind=device_kind(),
            device_seconds=round(wall * self.workers * self.devices_per_worker, 3), samples=int(self.samples),
            tokens=int(self.tokens), flops=float(self.flops),
            peak_memory_bytes=max(peak_rss_bytes(), self.worker_peak_memory_bytes),
            config_hash=config_hash(self.cfg), startup_s=round(self.startup_s, 3),
            extra={**self.extra, "driver_peak_memory_bytes": peak_rss_bytes(),
                   "worker_peak_memory_bytes": self.worker_peak_memory_bytes})
        append_cost(self.out, self.record)


def append_cost(out: str | Path, record: CostRecord) -> None:
    """Append one record; O_APPEND keeps concurrent writers' lines whole."""
    line = json.dumps(asdict(record), sort_keys=True) + "\n"
    fd = os.open(Path(out) / COSTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_costs(out: str | Path) -> list[dict]:
    """All cost records under `out` (its own costs.jsonl and those of sub-directories).

    Each record gains `run`: its directory relative to `out` ("." for `out` itself).
    """
    records = []
    for path in sorted(Path(out).rglob(COSTS_FILE)):
        run = str(path.parent.relative_to(out))
        records += [{**json.loads(line), "run": run} for line in path.read_text().splitlines() if line.strip()]
    return records
