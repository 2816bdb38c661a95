"""Ray Train worker loop for the PUMA migration adapter.

Every worker holds the frozen target model, the selected users' frozen source prompts
([n, l, sum of source dims], concatenated per user for aggregated migration) and a
DeepSpeed engine over adapter + task head, the only trainable parameters. Rows reach
workers through Ray Data's split of `train` (equal row counts; every rank takes the same
number of steps). Each epoch is validated with exact metrics and checkpointed (rank 0
writes the gathered adapter and head, so the weights are whole even under ZeRO-3; every rank
writes its own optimizer state, its ZeRO partition, so a resumed run continues with the AdamW
moments it had). Dropout is reseeded from (seed, epoch) each epoch.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from puma_ray.core.hf import load_causal_lm, load_tokenizer, resolve_dtype
from puma_ray.core.llm import FrozenLM
from puma_ray.core.modules import AdapterConfig, MigrationAdapter
from puma_ray.core.tasks import TASKS
from puma_ray.runtime.ray_utils import quiet_ray_data_console
from puma_ray.store.prompt_store import load_prompts
from puma_ray.train.common import read_users
from puma_ray.train.engines import DeepSpeedEngine
from puma_ray.train.loop_config import AdapterLoopConfig
from puma_ray.train.epoch import evaluate, quiet_deprecated_collectives, train_epoch


class AdapterWithHead(nn.Module):
    """The trainable part of migration: adapter (source prompt -> target prompt) + task head,
    and with LoRA co-adaptation the PEFT-wrapped target (only its lora_ weights train)."""

    def __init__(self, adapter_cfg: AdapterConfig, head: nn.Module, lora: nn.Module | None = None) -> None:
        super().__init__()
        self.adapter, self.head = MigrationAdapter(adapter_cfg), head
        self.lora = lora

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """[B, l, d_s] -> [B, l, d_t]."""
        return self.adapter(source)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self.head.predict(logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor):
        return self.head.loss(logits, labels)


def source_prompts(stores: list[str], users: list[str]) -> np.ndarray:
    """[n, l, sum d_s] float32: each user's prompts from every store, concatenated on the last axis."""
    return np.concatenate([load_prompts(s, users) for s in stores], axis=-1)


def adapter_loop(config: dict) -> None:
    """train_loop_per_worker of `puma-ray adapter` (Ray's config dict holds the typed one under "loop")."""
    with quiet_deprecated_collectives():
        adapter_worker(config["loop"])


def adapter_worker(config: AdapterLoopConfig) -> None:
    """Every epoch of one worker's adapter training (adapter_loop)."""
    import ray.train

    quiet_ray_data_console()
    rank = ray.train.get_context().get_world_rank()
    task = TASKS[config.task]
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
    model = load_causal_lm(config.model, dtype=resolve_dtype(config.dtype, device))
    lora = config.lora
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**lora))
    # a co-adapted target changes under training: its prefix key/values cannot be cached
    lm = FrozenLM(model.to(device), load_tokenizer(config.model), config.template_text,
                  task.answers, prompt_len=config.prompt_len, prefix_cache=config.prefix_cache and not lora)
    if lora:
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    users = read_users(config.users_file)  # the stage's order
    index = {u: i for i, u in enumerate(users)}
    source = torch.from_numpy(source_prompts(config.sources, users)).to(device)  # frozen, [n, l, d_s]
    head = task.head(config.lam, config.yes_minus_no, config.label_mean)
    if config.head_file:  # the source's trained head: it already speaks the label scale
        head.load_state_dict(load_file(config.head_file))
    module = AdapterWithHead(config.adapter, head, lora=model if lora else None)
    if config.adapter_init:  # --init recycled: the stage fitted the adapter to the recycled prompts
        module.adapter.load_state_dict(load_file(config.adapter_init))
    engine = DeepSpeedEngine(module.to(device), config.lr, config.ds_config)
    dtype = next(engine.module.parameters()).dtype

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = {**{f"adapter.{k}": v for k, v in load_file(f"{d}/adapter.safetensors").items()},
                     **{f"head.{k}": v for k, v in load_file(f"{d}/head.safetensors").items()}}
            if lora:
                state.update({f"lora.{k}": v for k, v in load_file(f"{d}/lora.safetensors").items()})
            opt = Path(f"{d}/adapter-opt-r{rank:05d}.pt")  # absent in checkpoints of earlier versions: weights only
            engine.load(state, torch.load(opt, weights_only=True) if opt.is_file() else None, strict=not lora)
            saved = json.loads(Path(f"{d}/state.json").read_text())
            start_epoch, history = saved["epoch"] + 1, saved["history"]

    def soft(rows: torch.Tensor) -> torch.Tensor:
        return engine.module(source[rows].to(dtype))

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard(f"valid_r{rank}")
    B = config.batch_size
    ready = time.time()  # model, prompts and engine ready: what came before is start-up
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))  # dropout
        totals = train_epoch(lm, engine, soft, train_shard, index, config, epoch, device)
        metrics = evaluate(lm, soft, engine, valid_shard, index, task, config.valid_steps, B, device)
        metrics.update(totals, ready_unix=ready, lm_dtype=str(lm.model.dtype).removeprefix("torch."))
        history.append(metrics)
        state, optimizer = engine.state(), engine.optimizer_state()
        with tempfile.TemporaryDirectory() as d:  # every rank's files go into the one checkpoint
            torch.save(optimizer, f"{d}/adapter-opt-r{rank:05d}.pt")
            if rank == 0:
                save_file({k[8:]: v for k, v in state.items() if k.startswith("adapter.")}, f"{d}/adapter.safetensors")
                save_file({k[5:]: v for k, v in state.items() if k.startswith("head.")}, f"{d}/head.safetensors")
                if lora:
                    save_file({k[5:]: v for k, v in state.items() if k.startswith("lora.") and "lora_" in k},
                              f"{d}/lora.safetensors")
                world = ray.train.get_context().get_world_size()
                Path(f"{d}/state.json").write_text(json.dumps({"epoch": epoch, "world": world, "history": history,
                                                               **metrics}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
