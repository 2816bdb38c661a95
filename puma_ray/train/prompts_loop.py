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

import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from puma_ray.core.hf import load_causal_lm, load_tokenizer, resolve_dtype
from puma_ray.core.llm import FrozenLM
from puma_ray.core.modules import SoftPromptTable, sparse_adam
from puma_ray.core.tasks import TASKS
from puma_ray.runtime.ray_utils import quiet_ray_data_console
from puma_ray.store.prompt_store import load_prompts
from puma_ray.train.common import owner
from puma_ray.train.engines import ReplicatedHead
from puma_ray.train.epoch import (FrozenLogits, evaluate, quiet_deprecated_collectives, train_epoch)
from puma_ray.train.loop_config import PromptsLoopConfig


def owned_users(users_path: str, rank: int, world: int) -> list[str]:
    """This rank's users in user_idx order: its local table rows."""
    ids = pq.read_table(users_path, columns=["user_id"]).column(0).to_pylist()
    return [u for u in ids if owner(u, world) == rank]


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
    engine = ReplicatedHead(head, config.lr)
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
            set_lr(engine.optimizer, config.lr)
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

