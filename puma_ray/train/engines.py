"""What steps the shared trainable parts of a training run (the per-user prompt rows step on their own rank).

ZeRO is for parameters worth partitioning. The adapter stage trains adapter + task head (88M parameters at
paper size, more with LoRA): a DeepSpeed engine (`DeepSpeedEngine`), ZeRO stage 0-3 by flag, so ZeRO-3
partitions the adapter, its gradients and AdamW's moments over the workers. The prompts stage's only shared
part is the task head (the rating MLP's ~600 parameters; none for the click head): there ZeRO would partition
nothing worth it, so every rank keeps the whole head and one all-reduce per step averages its gradients
(`ReplicatedHead`: what DeepSpeed's data parallelism did, without its engine). The frozen LLM is never
partitioned: each worker holds all of it (docs/design.md, "Distribution", says why and what would).
Both engines answer `module`, `backward(loss)`, `step()`, `train()`, `eval()`, `state()`, `optimizer_state()`
and `load(weights, optimizer)`: a resumed run continues with the weights and AdamW moments it had.
"""

from __future__ import annotations

import importlib

import torch
import torch.distributed as dist


def make_optimizer(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (frozen model weights never reach it)."""
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


GRADIENT_CLIP = 1.0
"""Largest gradient norm of the shared parts: DeepSpeed's default `gradient_clipping`, which its engine
applied to the prompt stage's head all along, now written down (deepspeed_config passes it too)."""


class ReplicatedHead:
    """A small module replicated on every rank: gradients averaged over the ranks with one all-reduce of
    all of them per step, clipped to `max_norm`, then AdamW (the step DeepSpeed's ZeRO engine took, tested
    equal). Ranks start from rank 0's weights, so they stay equal."""

    def __init__(self, module: torch.nn.Module, lr: float, max_norm: float = GRADIENT_CLIP) -> None:
        self.module, self.max_norm = module, max_norm
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(module, lr) if self.params else None
        if _world() > 1:
            for p in module.parameters():
                dist.broadcast(p.data, src=0)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.optimizer is None:
            return
        world = _world()
        if world > 1:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
            dist.all_reduce(flat)
            flat /= world
            at = 0
            for p in self.params:
                p.grad = flat[at:at + p.numel()].view_as(p).clone()
                at += p.numel()
        if self.max_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def state(self) -> dict[str, torch.Tensor]:
        """The head's weights (the same on every rank)."""
        return {k: v.detach().clone().cpu() for k, v in self.module.state_dict().items()}

    def optimizer_state(self) -> dict | None:
        """AdamW's state (the same on every rank; torch.save-able, loads with weights_only); None: nothing trains."""
        return self.optimizer.state_dict() if self.optimizer is not None else None

    def load(self, weights: dict[str, torch.Tensor], optimizer: dict | None = None) -> None:
        """Weights (and AdamW's state, when saved) from a checkpoint."""
        self.module.load_state_dict(weights)
        if optimizer is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer)


def deepspeed_config(batch_size: int, zero_stage: int, use_gpu: bool, persistence: int) -> dict:
    """DeepSpeed config dict: ZeRO stage by flag, bf16 on GPU, fp32 on CPU, a torch optimizer."""
    cfg = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
           "bf16": {"enabled": bool(use_gpu)}, "gradient_clipping": GRADIENT_CLIP, "steps_per_print": 10**9,
           "wall_clock_breakdown": False}
    if zero_stage == 3:
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = persistence
    return cfg


_DEEPSPEED_OBJECTS = ("loss_scaler", "param_slice_mappings", "universal_checkpoint_info")
"""Entries of a DeepSpeed optimizer's state_dict that are library objects, not tensors or numbers."""


class DeepSpeedEngine:
    """deepspeed.initialize's engine on the process group Ray Train set up (gloo on CPU, NCCL on GPU)."""

    def __init__(self, module: torch.nn.Module, lr: float, ds_cfg: dict) -> None:
        if next(module.parameters()).device.type == "cpu":
            # On the CPU accelerator the first initialize JIT-builds a shared-memory collective op (~50 s) that
            # gloo never uses; on GPUs DeepSpeed builds none, so nothing is changed there.
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(model=module, optimizer=make_optimizer(module, lr), config=ds_cfg)
        self.module = self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def state(self) -> dict[str, torch.Tensor]:
        """Full weights on every rank (a collective under ZeRO-3: all ranks must call it)."""
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in self.module.state_dict().items()}

    def optimizer_state(self) -> dict:
        """This rank's optimizer state: its ZeRO partition (AdamW's moments and fp32 master weights) under ZeRO
        1-3, AdamW's whole state at stage 0. Tensors, numbers and strings only (DeepSpeed's loss scaler object,
        static 1.0 without fp16, and its universal-checkpoint slice map are left out): torch.save-able, loads
        with weights_only. Checkpoint it per rank; it resumes on as many ranks (check_resume enforces that)."""
        state = self.engine.optimizer.state_dict()
        if isinstance(self.engine.optimizer, torch.optim.Optimizer):  # stage 0 in fp32: the torch AdamW itself
            return state
        return {k: int(v) if k == "zero_stage" else v for k, v in state.items() if k not in _DEEPSPEED_OBJECTS}

    def load(self, weights: dict[str, torch.Tensor], optimizer: dict | None = None, strict: bool = True) -> None:
        """Weights (and this rank's optimizer state, when saved) from a checkpoint.

        Under ZeRO 1-3 AdamW steps fp32 master copies of the weights, not the module's: loading the module's
        alone would be undone by the next step, so the masters come back too (from the saved partition, or
        refreshed from the loaded weights as DeepSpeed's own module-only load does)."""
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=0):
            self.module.load_state_dict(weights, strict=strict)
        zero = self.engine.optimizer
        if isinstance(zero, torch.optim.Optimizer):  # stage 0 in fp32: no master copies
            if optimizer is not None:
                zero.load_state_dict(optimizer)
        elif optimizer is not None:  # the rigid (same world size) load reads only this rank's entry of the list
            state = {**optimizer, **({"loss_scaler": zero.loss_scaler} if hasattr(zero, "loss_scaler") else {})}
            zero.load_state_dict([state] * _world(), load_optimizer_states=True, load_from_fp32_weights=True)
        else:
            zero.refresh_fp32_params()
