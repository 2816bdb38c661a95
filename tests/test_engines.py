"""The engines that step shared trainable parts: the prompt stage's replicated head on two gloo ranks
takes the step DeepSpeed's ZeRO-2 engine took (mean gradient over the ranks, norm clipped, AdamW)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from puma_ray.core.modules import RatingHead
from puma_ray.train.engines import GRADIENT_CLIP, DeepSpeedEngine, ReplicatedHead, deepspeed_config

STEPS, LR = 3, 0.05


def batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank's own batches (different sizes, as padding steps make them)."""
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(4 + 3 * rank, 5, generator=g), torch.randint(1, 6, (4 + 3 * rank,), generator=g).float())
            for _ in range(STEPS)]


def _rank(rank: int, world: int, port: int, kind: str, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0 if kind == "deepspeed" else rank)  # replicated: every rank must start from rank 0's
    head = RatingHead(0.2)
    engine = ReplicatedHead(head, LR) if kind == "replicated" else DeepSpeedEngine(head, LR, deepspeed_config(
        4, 2, False, 0))
    for logits, labels in batches(rank):
        engine.backward(engine.module.loss(logits, labels)[0])
        engine.step()
    save_file(engine.state(), out / f"r{rank}.safetensors")
    dist.destroy_process_group()


def on_two_ranks(kind: str, out: Path) -> dict:
    """Each rank's final weights, from two fresh processes: spawned, never forked, and results through files,
    so nothing forks the test process with its Ray connection (other tests' session). A forked
    multiprocessing Manager here is the likely cause of a hang of the next test's Ray Data pipeline seen once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(2, port, kind, out), nprocs=2, start_method="spawn", join=True)
    r0, r1 = (load_file(out / f"r{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)  # the ranks never drift apart
    return r0


@pytest.fixture(scope="module")
def replicated(tmp_path_factory) -> dict:
    return on_two_ranks("replicated", tmp_path_factory.mktemp("replicated"))


def test_replicated_head_on_two_ranks_steps_the_clipped_mean_gradient(replicated):
    got = replicated
    torch.manual_seed(0)  # rank 0's start
    head = RatingHead(0.2)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=0.0)
    for (l0, y0), (l1, y1) in zip(batches(0), batches(1)):
        ((head.loss(l0, y0)[0] + head.loss(l1, y1)[0]) / 2).backward()  # the mean of the ranks' mean losses
        torch.nn.utils.clip_grad_norm_(head.parameters(), GRADIENT_CLIP)
        opt.step()
        opt.zero_grad()
    for k, v in head.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_replicated_head_takes_the_step_deepspeed_zero2_took(replicated, tmp_path):
    """What the prompt stage's head was before (a DeepSpeed ZeRO-2 engine) and is now give the same weights."""
    got, ds = replicated, on_two_ranks("deepspeed", tmp_path)
    for k in ds:
        torch.testing.assert_close(got[k], ds[k], rtol=1e-5, atol=1e-6)
