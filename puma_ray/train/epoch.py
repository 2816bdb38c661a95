"""One epoch of training and one pass of validation, shared by both worker loops (prompts, adapter).

An epoch runs exactly `train_steps` steps on every rank (padding steps join the collectives with a zero
loss), drawing rows from a seeded shuffle buffer; validation computes exact metrics all-reduced over ranks.
Rank 0 logs progress through a long epoch.
"""

from __future__ import annotations

import contextlib
import resource
import time
import warnings
from typing import Iterator

import numpy as np
import torch

from puma_ray.runtime.runs import log, setup_logging
from puma_ray.train.common import cycled
from puma_ray.train.loop_config import LoopConfig


def train_totals(epoch: int, loss_sum: float, seen: int, tokens: int) -> dict:
    """Epoch's mean training loss, samples and tokens summed over every rank, and the largest worker peak RSS."""
    import torch.distributed as dist

    totals = torch.tensor([loss_sum, seen, tokens], dtype=torch.float64)
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(totals)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {"epoch": epoch, "train_loss": float(totals[0] / max(totals[1], 1)), "train_samples": int(totals[1]),
            "train_tokens": int(totals[2]), "worker_peak_rss_bytes": int(peak[0])}


class FrozenLogits:
    """The answer logits of a rank's training rows, kept when nothing before the head trains.

    With frozen prompts (the random-init floor) the LM is frozen and in eval mode and so are
    the prompts, so each row's answer logits are the same in every epoch: the first epoch runs
    the LM over the rows once and keeps (logits, labels); later epochs train the head on them,
    batch_size rows a step from a seeded permutation, the same number of steps. Memory: rows x
    answers x 4 B per rank (5 answers: 20 B a row). Not checkpointed: a resumed run refills it.
    """

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.filled = False

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.logits.append(logits.detach().float().cpu())
        self.labels.append(labels.detach().float().cpu())

    def seal(self) -> None:
        """The first epoch is over: the kept batches become one tensor each, once."""
        self.logits = [torch.cat(self.logits)] if self.logits else []
        self.labels = [torch.cat(self.labels)] if self.labels else []
        self.filled = True

    def batches(self, steps: int, batch_size: int, seed: int) -> Iterator[tuple]:
        """`steps` (logits, labels, tokens=0) batches; (None, None, 0) padding steps on a rank without rows."""
        logits, labels = (self.logits[0], self.labels[0]) if self.labels else (None, torch.zeros(0))
        n, gen, order, at = len(labels), torch.Generator().manual_seed(seed), torch.zeros(0, dtype=torch.long), 0
        for _ in range(steps):
            if not n:
                yield None, None, 0
                continue
            if at >= len(order):
                order, at = torch.randperm(n, generator=gen), 0
            take = order[at:at + batch_size]
            at += batch_size
            yield logits[take], labels[take], 0


def epoch_batches(shard, config: LoopConfig, epoch: int):
    """One pass over a worker's rows in numpy batches, drawn from a `shuffle_rows` buffer reshuffled each epoch.

    Rows are stored user by user, so a buffer of R rows mixes the batch over about R / (rows per user) users;
    the buffer is bounded, whatever the number of rows a worker owns."""
    B, rows = config.batch_size, config.shuffle_rows
    shuffle = {"local_shuffle_buffer_size": max(rows, B), "local_shuffle_seed": config.seed + epoch} if rows else {}
    return shard.iter_batches(batch_size=B, batch_format="numpy", **shuffle)


def step_logits(lm, soft_fn, shard, index, config: LoopConfig, epoch: int, device, cache: FrozenLogits | None):
    """(answer logits [B, A], labels [B] or None on a padding step, LM tokens) for each of the epoch's steps."""
    if cache is not None and cache.filled:
        yield from cache.batches(config.train_steps, config.batch_size, config.seed + epoch)
        return
    for batch, first_pass in cycled(lambda: epoch_batches(shard, config, epoch), config.train_steps):
        rows, titles, hist, labels = _to_tensors(batch, index)
        enc = lm.encode(titles, hist)
        logits = lm.answer_logits(soft_fn(rows.to(device)), enc)
        if cache is not None and first_pass and labels is not None:
            cache.add(logits, labels)
        n = len(titles) if labels is not None else 0
        yield logits, labels, int(enc.lengths.sum()) + len(lm.template.prefix_ids) * n
    if cache is not None:
        cache.seal()


def train_epoch(lm, engine, soft_fn, shard, index, config: LoopConfig, epoch: int, device, after_step=None,
                cache: FrozenLogits | None = None) -> dict:
    """One epoch of exactly config.train_steps steps (equal on every rank); returns train_totals.

    soft_fn: [B] int64 rows -> [B, l, d] soft prompts (table lookup, or adapter(source prompts)).
    A padding step of a rank without rows joins the collectives with a zero loss.
    cache: frozen prompts only (FrozenLogits): epochs after the first train the head on kept logits. Frozen
    prompts under a head without weights (clicks) train nothing: the epoch measures its loss (the click floor).
    Rank 0 logs its progress through a long epoch every `PROGRESS_S` seconds.
    """
    engine.train()
    dtype = next(engine.module.parameters(), torch.zeros(())).dtype
    loss_sum, seen, tokens = 0.0, 0, 0
    progress = EpochProgress(epoch, config.train_steps)
    for logits, labels, n_tokens in step_logits(lm, soft_fn, shard, index, config, epoch, device, cache):
        if labels is None:
            logits = logits if logits is not None else torch.zeros(1, len(lm.template.answer_ids))
            loss = engine.module.loss(logits.to(device, dtype), torch.ones(1, device=device, dtype=dtype))[0] * 0.0
            labels = torch.zeros(0)
        else:
            loss, _ = engine.module.loss(logits.to(device, dtype), labels.to(device, dtype))
        if loss.requires_grad:  # frozen prompts under a head without weights (clicks): nothing to train
            engine.backward(loss)
        engine.step()
        if after_step is not None:
            after_step()
        loss_sum += float(loss.detach()) * len(labels)
        seen += len(labels)
        tokens += n_tokens
        progress.step(seen, loss_sum)
    return train_totals(epoch, loss_sum, seen, tokens)


PROGRESS_S = 30.0


class EpochProgress:
    """Rank 0's line every PROGRESS_S seconds of an epoch: step k/N, rows/s, running loss (a short epoch logs none;
    the epoch's metrics are reported when it ends). Ray forwards it to the driver's console."""

    def __init__(self, epoch: int, steps: int) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.on, self.epoch, self.steps, self.done = rank == 0, epoch, steps, 0
        self.t0 = self.last = time.perf_counter()
        if self.on:
            setup_logging()

    def step(self, seen: int, loss_sum: float) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.on and now - self.last >= PROGRESS_S:
            self.last = now
            log.info("epoch %d: step %d/%d, %.0f rows/s on this rank, loss %.4f", self.epoch, self.done,
                     self.steps, seen / (now - self.t0), loss_sum / max(seen, 1))


def _to_tensors(batch, index: dict[str, int]):
    if batch is None:  # padding step of a rank without rows: one row 0 with zero weight in the loss
        return torch.zeros(1, dtype=torch.long), [""], [[]], None
    rows = torch.tensor([index[u] for u in batch["user_id"]])
    labels = torch.tensor(np.asarray(batch["label"], dtype=np.float32))
    return rows, list(batch["item_text"]), [list(h) for h in batch["history_text"]], labels


@contextlib.contextmanager
def quiet_deprecated_collectives() -> Iterator[None]:
    """While a training loop runs: DeepSpeed calls torch.distributed names torch has deprecated, a
    FutureWarning per collective, hidden here (the warnings state is restored after)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        yield


@torch.no_grad()
def evaluate(lm, soft_fn, engine, shard, index, task, steps, batch_size, device) -> dict:
    """Exact validation metrics over this rank's rows, all-reduced / gathered across ranks.

    soft_fn: [B] int64 row indices -> [B, l, d] soft prompts (a table lookup, or adapter(source)).
    """
    engine.eval()
    sums = task.sums()
    batches = cycled(lambda: shard.iter_batches(batch_size=batch_size, batch_format="numpy"), steps) \
        if steps else iter(())
    head_dtype = next(engine.module.parameters(), torch.zeros(())).dtype
    for batch, first_pass in batches:
        rows, titles, hist, labels = _to_tensors(batch, index)
        logits = lm.answer_logits(soft_fn(rows.to(device)), lm.encode(titles, hist)).to(head_dtype)
        pred = engine.module.predict(logits).float()  # same number of head forwards on every rank (ZeRO-3)
        if first_pass and labels is not None:
            if task.name == "rating":
                sums.update(pred, labels)
            else:
                sums.update(batch["user_id"], pred, labels)
    result = sums.all_reduce().compute() if task.name == "rating" else sums.compute()
    return {f"valid_{k}": v for k, v in result.items()}
