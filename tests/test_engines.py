"""The engines that step shared trainable parts: the prompt stage's replicated head on two gloo ranks
equals one process stepping the mean gradient (what DeepSpeed's data parallelism computed)."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from puma_ray.core.modules import RatingHead
from puma_ray.train.engines import ReplicatedHead

STEPS, LR = 3, 0.05


def batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank's own batches (different sizes, as padding steps make them)."""
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(4 + 3 * rank, 5, generator=g), torch.randint(1, 6, (4 + 3 * rank,), generator=g).float())
            for _ in range(STEPS)]


def _rank(rank: int, world: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different starting weights: the engine must start every rank from rank 0's
    engine = ReplicatedHead(RatingHead(0.2), LR)
    for logits, labels in batches(rank):
        engine.backward(engine.module.loss(logits, labels)[0])
        engine.step()
    out[rank] = engine.state()
    dist.destroy_process_group()


def test_replicated_head_on_two_ranks_equals_one_process_on_the_mean_gradient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.start_processes(_rank, args=(2, port, out), nprocs=2, start_method="fork", join=True)
    assert out[0].keys() == out[1].keys()
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=0, atol=0)  # the ranks never drift apart

    torch.manual_seed(0)  # rank 0's start
    head = RatingHead(0.2)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=0.0)
    for (l0, y0), (l1, y1) in zip(batches(0), batches(1)):
        loss = (head.loss(l0, y0)[0] + head.loss(l1, y1)[0]) / 2  # the mean of the two ranks' mean losses
        loss.backward()
        opt.step()
        opt.zero_grad()
    for k, v in head.state_dict().items():
        torch.testing.assert_close(out[0][k], v, rtol=1e-5, atol=1e-6)
