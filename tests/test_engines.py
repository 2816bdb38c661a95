"""The engines that step shared trainable parts: the prompt stage's replicated head on two gloo ranks
takes the step DeepSpeed's ZeRO-2 engine took (mean gradient over the ranks, norm clipped, AdamW); an
engine rebuilt from a checkpoint (weights + AdamW state) continues exactly as the uninterrupted one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from puma_ray.core.modules import RatingHead
from puma_ray.train.engines import GRADIENT_CLIP, DeepSpeedEngine, ReplicatedHead, deepspeed_config

STEPS, LR = 3, 0.05


def batches(rank: int, steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank's own batches (different sizes, as padding steps make them)."""
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(4 + 3 * rank, 5, generator=g), torch.randint(1, 6, (4 + 3 * rank,), generator=g).float())
            for _ in range(steps)]


def _resumed(rank: int, kind: str, out: Path) -> None:
    """`kind` = resume-<engine>: 5 steps straight (r{rank}) and 3 steps, a checkpoint through files (weights as
    safetensors, AdamW's state torch.save'd and read back weights_only), a new engine, 2 steps (c{rank})."""
    def build():
        torch.manual_seed(0)
        head = RatingHead(0.2)
        if kind == "resume-replicated":
            return ReplicatedHead(head, LR)
        return DeepSpeedEngine(head, LR, deepspeed_config(4, int(kind[-1]), False, 0))

    def run(engine, steps):
        for logits, labels in steps:
            engine.backward(engine.module.loss(logits, labels)[0])
            engine.step()

    steps = batches(rank, 5)
    straight, first = build(), build()
    run(straight, steps)
    run(first, steps[:3])
    torch.save(first.optimizer_state(), out / f"opt{rank}.pt")
    save_file(first.state(), out / f"w{rank}.safetensors")
    second = build()
    second.load(load_file(out / f"w{rank}.safetensors"), torch.load(out / f"opt{rank}.pt", weights_only=True))
    run(second, steps[3:])
    save_file(straight.state(), out / f"r{rank}.safetensors")
    save_file(second.state(), out / f"c{rank}.safetensors")


def _reloaded(rank: int, kind: str, out: Path) -> None:
    """`kind` = reload-zero<S>: weights only (all 0.5, no optimizer state) into a new engine, then one step."""
    torch.manual_seed(0)
    engine = DeepSpeedEngine(RatingHead(0.2), LR, deepspeed_config(4, int(kind[-1]), False, 0))
    engine.load({k: torch.full_like(v, 0.5) for k, v in engine.state().items()})
    logits, labels = batches(rank)[0]
    engine.backward(engine.module.loss(logits, labels)[0])
    engine.step()
    save_file(engine.state(), out / f"r{rank}.safetensors")


def _rank(rank: int, world: int, kinds: tuple[str, ...], out: Path) -> None:
    """Every kind in turn, in one process pair (DeepSpeed's import is paid once); files under out/<kind>/.
    The ranks meet through a file store: a port picked free and released could be taken by another process
    on this host (Ray starts many) before rank 0 binds it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world)
    for kind in kinds:
        (out / kind).mkdir(parents=True, exist_ok=True)
        if kind.startswith("reload-"):
            _reloaded(rank, kind, out / kind)
        elif kind.startswith("resume-"):
            _resumed(rank, kind, out / kind)
        else:
            _straight(rank, kind, out / kind)
    dist.destroy_process_group()


def _straight(rank: int, kind: str, out: Path) -> None:
    torch.manual_seed(0 if kind == "deepspeed" else rank)  # replicated: every rank must start from rank 0's
    head = RatingHead(0.2)
    engine = ReplicatedHead(head, LR) if kind == "replicated" else DeepSpeedEngine(head, LR, deepspeed_config(
        4, 2, False, 0))
    for logits, labels in batches(rank):
        engine.backward(engine.module.loss(logits, labels)[0])
        engine.step()
    save_file(engine.state(), out / f"r{rank}.safetensors")


def spawn_ranks(kinds: tuple[str, ...], out: Path) -> Path:
    """Runs `kinds` on two fresh processes: spawned, never forked, and results through files, so nothing
    forks the test process with its Ray connection (other tests' session). A forked multiprocessing
    Manager here is the likely cause of a hang of the next test's Ray Data pipeline seen once."""
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(2, kinds, out), nprocs=2, start_method="spawn", join=True)
    return out


def rank_weights(out: Path) -> dict:
    """Rank 0's final weights in `out`, after checking that rank 1 holds the same."""
    r0, r1 = (load_file(out / f"r{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)  # the ranks never drift apart
    return r0


RESTARTS = ("resume-replicated", "resume-zero0", "resume-zero2", "resume-zero3", "reload-zero2", "reload-zero3")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Every kind of this module, run once on one process pair: out/<kind>/."""
    return spawn_ranks(("replicated", "deepspeed", *RESTARTS), tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def replicated(ranks) -> dict:
    return rank_weights(ranks / "replicated")


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
def test_replicated_head_takes_the_step_deepspeed_zero2_took(replicated, ranks):
    """What the prompt stage's head was before (a DeepSpeed ZeRO-2 engine) and is now give the same weights."""
    got, ds = replicated, rank_weights(ranks / "deepspeed")
    for k in ds:
        torch.testing.assert_close(got[k], ds[k], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", [k for k in RESTARTS if k.startswith("resume-")])
def test_an_engine_resumed_from_its_checkpoint_continues_as_the_uninterrupted_one(kind, ranks):
    """Weights alone are not enough: under ZeRO 1-3 the fp32 master copies must follow them (or the first step
    puts the initial weights back), and AdamW's moments and step count must come back (or the step differs)."""
    rank_weights(ranks / kind)  # the ranks agree on the straight run's weights
    for rank in (0, 1):
        straight, resumed = (load_file(ranks / kind / f"{p}{rank}.safetensors") for p in ("r", "c"))
        for k in straight:
            torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-7)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", [k for k in RESTARTS if k.startswith("reload-")])
def test_loaded_weights_are_where_the_next_step_starts(kind, ranks):
    """AdamW's first step moves a weight by at most its learning rate: from the loaded weights (0.5), not
    from the fp32 master copies the engine was built with."""
    got = rank_weights(ranks / kind)
    assert max((v - 0.5).abs().max().item() for v in got.values()) <= LR * 1.001
