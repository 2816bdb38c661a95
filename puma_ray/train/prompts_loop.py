"""Ray Train worker loop for per-user soft prompts (source prompts and full retraining).

Each worker owns the prompt rows of its users (train.common.owner) and reads only their
interactions from its own Ray Data dataset (`train_r{rank}`, `valid_r{rank}`), so
prompt gradients stay local (SparseAdam over the batch's rows); the task head is
replicated on every rank, its gradients averaged by one all-reduce a step
(engines.ReplicatedHead: no DeepSpeed engine around a few hundred parameters). Every
epoch: train a fixed number of steps (equal on every rank), validate with exact all-reduced metrics, and report a checkpoint from every
rank (its table rows + user list; rank 0 adds the head). Resume comes from
ray.train.get_checkpoint().
"""

from __future__ import annotations

import contextlib
import json
import resource
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from puma_ray.core.hf import load_causal_lm, load_tokenizer, resolve_dtype
from puma_ray.core.llm import FrozenLM
from puma_ray.core.modules import SoftPromptTable, sparse_adam
from puma_ray.core.tasks import TASKS
from puma_ray.runtime.ray_utils import quiet_ray_data_console
from puma_ray.runtime.runs import log, setup_logging
from puma_ray.store.prompt_store import load_prompts
from puma_ray.train.common import cycled, owner
from puma_ray.train.engines import ReplicatedHead
from puma_ray.train.loop_config import LoopConfig, PromptsLoopConfig


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


def owned_users(users_path: str, rank: int, world: int) -> list[str]:
    """This rank's users in user_idx order: its local table rows."""
    ids = pq.read_table(users_path, columns=["user_id"]).column(0).to_pylist()
    return [u for u in ids if owner(u, world) == rank]


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


def set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    """Every parameter group of `optimizer` (None: nothing to set) at learning rate `lr`."""
    for group in optimizer.param_groups if optimizer is not None else ():
        group["lr"] = lr


def prompts_loop(config: dict) -> None:
    """train_loop_per_worker of `puma-ray prompts` (Ray's config dict holds the typed one under "loop")."""
    with quiet_deprecated_collectives():
        prompts_worker(config["loop"])


def prompts_worker(config: PromptsLoopConfig) -> None:
    """Every epoch of one worker's prompt training (prompts_loop)."""
    import ray.train

    quiet_ray_data_console()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    task = TASKS[config.task]
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
    model = load_causal_lm(config.model, dtype=resolve_dtype(config.dtype, device))
    lm = FrozenLM(model.to(device), load_tokenizer(config.model), config.template_text,
                  task.answers, prompt_len=config.prompt_len, prefix_cache=config.prefix_cache)
    users = owned_users(config.users_file, rank, world)
    index = {u: i for i, u in enumerate(users)}
    table = SoftPromptTable(len(users), config.prompt_len, lm.hidden,
                            generator=torch.Generator().manual_seed(config.seed * 1000 + rank)).to(device)
    if config.init_from:
        table.weight.data.copy_(torch.from_numpy(load_prompts(config.init_from, users)).reshape(len(users), -1))
    table.weight.requires_grad_(not config.freeze_prompts)
    head = task.head(config.lam, config.yes_minus_no, config.label_mean)
    if config.head_file:  # --init-from: the head those prompts were trained (or migrated) with
        head.load_state_dict(load_file(config.head_file))
    head = head.to(device)
    engine = ReplicatedHead(head, config.head_lr)
    table_opt = sparse_adam(table, config.lr) if table.weight.requires_grad else None

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            table.weight.data.copy_(load_file(f"{d}/table-r{rank:05d}.safetensors")["weight"])
            head_opt = Path(f"{d}/head-opt.pt")
            engine.load(load_file(f"{d}/head.safetensors"),
                        torch.load(head_opt, weights_only=True) if head_opt.is_file() else None)
            if table_opt is not None:
                table_opt.load_state_dict(torch.load(f"{d}/table-opt-r{rank:05d}.pt", weights_only=True))
            # an optimizer's state carries the rate it ran at: the run goes on at this config's (the one recorded)
            set_lr(engine.optimizer, config.head_lr)
            set_lr(table_opt, config.lr)
            saved = json.loads(Path(f"{d}/state.json").read_text())
            start_epoch, history = saved["epoch"] + 1, saved["history"]

    train_shard = ray.train.get_dataset_shard(f"train_r{rank}")
    valid_shard = ray.train.get_dataset_shard(f"valid_r{rank}")
    B = config.batch_size

    def table_step() -> None:
        if table_opt is not None:
            table_opt.step()
            table_opt.zero_grad(set_to_none=True)

    def report(epoch: int, metrics: dict) -> None:  # every rank's files go into the epoch's one checkpoint
        history.append(metrics)
        head_state = engine.state()
        with tempfile.TemporaryDirectory() as d:
            save_file({"weight": table.weight.detach().cpu().contiguous()}, f"{d}/table-r{rank:05d}.safetensors")
            pq.write_table(pa.table({"user_id": pa.array(users, pa.string())}), f"{d}/users-r{rank:05d}.parquet")
            if table_opt is not None:
                torch.save(table_opt.state_dict(), f"{d}/table-opt-r{rank:05d}.pt")
            if rank == 0:
                save_file(head_state, f"{d}/head.safetensors")
                if engine.optimizer is not None:
                    torch.save(engine.optimizer_state(), f"{d}/head-opt.pt")
                Path(f"{d}/state.json").write_text(json.dumps({"epoch": epoch, "world": world, "history": history,
                                                               **metrics}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    cache = FrozenLogits() if config.freeze_prompts else None
    ready = time.time()  # model loaded, engine built: what came before is start-up
    empty = torch.zeros(1, config.prompt_len, lm.hidden, device=device)
    soft = table if len(users) else (lambda rows: empty)  # a rank without users still joins collectives
    if config.init_from and not history:  # the start is a candidate (epoch -1): tuning that only hurts is not kept
        metrics = evaluate(lm, soft, engine, valid_shard, index, task, config.valid_steps, B, device)
        report(-1, {**metrics, "epoch": -1, "train_loss": None, "train_samples": 0, "train_tokens": 0,
                    "ready_unix": ready, "lm_dtype": str(lm.model.dtype).removeprefix("torch.")})
    for epoch in range(start_epoch, config.epochs):
        totals = train_epoch(lm, engine, soft, train_shard, index, config, epoch, device, after_step=table_step,
                             cache=cache)
        metrics = evaluate(lm, soft, engine, valid_shard, index, task, config.valid_steps, B, device)
        metrics.update(totals, ready_unix=ready, lm_dtype=str(lm.model.dtype).removeprefix("torch."))
        report(epoch, metrics)


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
