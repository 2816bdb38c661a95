"""Ray Train wiring shared by the training stages (prompts, adapter): the TorchTrainer with its
scaling, failure and checkpoint settings, its run name, a failed run as one line per worker,
the best checkpoint, the run's history and its measured cost. No model math here."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from puma_ray.errors import PumaError
from puma_ray.train.loop_config import LoopConfig


HEALTH_CHECK_ENV, HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def run_name(stage: str, out: str | Path) -> str:
    """Stable per output directory: the same --out resumes the same Ray Train run."""
    out = str(Path(out).resolve())
    return f"{stage}-{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(out).name)}-{hashlib.sha256(out.encode()).hexdigest()[:8]}"


def check_resume(storage: str, name: str, workers: int) -> None:
    """Refuse to resume a run whose checkpoints were written by another number of workers: users' prompt
    rows are owned by worker (crc32(user) % workers), and each rank's optimizer state is its own ZeRO partition,
    so another world size would give rows and moments to the wrong ranks."""
    run = Path(storage) / name
    states = sorted(run.glob("checkpoint_*/state.json")) if run.is_dir() else []
    if states:
        world = json.loads(states[-1].read_text()).get("world")
        if world is not None and world != workers:
            raise PumaError(f"run {name} in {storage} was trained with {world} worker(s); resume it with "
                            f"--workers {world}, or give a new --out to start over with {workers}")


def build_trainer(loop, loop_config: LoopConfig, cfg, name: str, storage: str, metric: str, mode: str, datasets: dict,
                  split: list[str], callbacks: tuple = ()):
    """TorchTrainer with the shared scaling, failure and best-checkpoint settings of a training stage.

    callbacks: Ray Train user callbacks (a sweep passes Tune's TuneReportCallback)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train's controller polls its workers every 2 s by default, so a run's start and end each wait
    # up to one interval; our runs are short. Ray Train passes this variable on to its controller; one
    # set by the operator wins.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)
    resources = {"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {"CPU": cfg.cpus_per_worker}
    return TorchTrainer(
        loop, train_loop_config={"loop": loop_config},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                                                checkpoint_score_order=mode),
                             callbacks=list(callbacks)),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=split))


def fit_trainer(trainer, what: str, where: str):
    """trainer.fit(), with a failed run turned into one line per failed worker (its own last error line)."""
    from ray.train import TrainingFailedError, WorkerGroupError

    try:
        return trainer.fit()
    except WorkerGroupError as exc:
        lines = [f"rank {r}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
                 for r, e in sorted(exc.worker_failures.items())]
        raise PumaError(f"{what} failed: {'; '.join(lines)} (worker logs: {where} and /tmp/ray/session_latest/logs)") \
            from None
    except TrainingFailedError as exc:
        raise PumaError(f"{what} failed: {(str(exc).strip().splitlines() or [''])[-1]} (see {where})") from None


def record_training(meter, history: list[dict], fit_start: float, parameters: int) -> None:
    """Samples, tokens, FLOPs, worker peak memory and start-up of a Ray Train run into its cost meter.

    Start-up = from fit() until the first epoch's workers were ready (model loaded, engine built);
    a resumed run's history starts before this fit, so its start-up is not counted twice."""
    meter.samples = sum(h["train_samples"] for h in history)
    meter.tokens = sum(h["train_tokens"] for h in history)
    # frozen LLM: forward (2N) + activation gradients (2N) per token
    meter.flops = 4.0 * parameters * meter.tokens
    meter.worker_peak_memory_bytes = max((h.get("worker_peak_rss_bytes", 0) for h in history), default=0)
    ready = [h["ready_unix"] for h in history if h.get("ready_unix", 0) >= fit_start]
    if ready:
        meter.startup_s += min(ready) - fit_start


def best_checkpoint(result, metric: str, mode: str):
    """The reported checkpoint with the best validation metric (ties: the earliest epoch)."""
    scored = [(m, c) for c, m in result.best_checkpoints if m.get(metric) == m.get(metric)]  # drop NaN
    if not scored:
        raise PumaError(f"no checkpoint with a finite {metric}: is the valid split empty?")
    sign = 1 if mode == "min" else -1
    metrics, ckpt = min(scored, key=lambda mc: (sign * mc[0][metric], mc[0]["epoch"]))
    return ckpt, metrics


def run_history(result) -> list[dict]:
    """Every epoch's metrics (the latest checkpoint carries the whole history, across resumes)."""
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "state.json").read_text())["history"]
