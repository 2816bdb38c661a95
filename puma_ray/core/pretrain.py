"""Foundation pretraining of a tiny model: it learns the task the way a real LLM knows its catalogue.

A real LLM arrives knowing its items and knowing how to read what precedes a question; a
random-weight tiny model knows neither, and per-user prompts trained on it learned less than a
per-user mean (issue 45). So a tiny model is trained, before anyone's prompts, on the training
split's interactions written in the task's own template (the sequences the frozen-LM wrapper
builds, the same answer tokens) with the user slot filled by a vector per training user, learned
jointly with the model and thrown away afterwards:

- the model learns the items (what the item mean knows) and to read a user vector in the slot
  (so per-user prompts trained later on the frozen model can express a user's bias and taste);
- every user vector stays within +-`slot_bound` a coordinate, the scale a per-user prompt reaches from its
  uniform(-0.1, 0.1) start in a few hundred steps at the paper's learning rate: the model learns to read
  vectors at the scale prompts can move to (unbounded, it reads large vectors that prompts never reach, and
  prompts trained at 5e-4 learned less than a per-user mean on the demo's synthetic users);
- with probability `slot_dropout` a row's user vector is replaced by fresh uniform(-0.1, 0.1)
  noise, the prompts' own initialisation, so a random prompt reads as "an average user": the
  floor (random prompts, trained head) lands near the item mean, as on a real LLM;
- the target is the label's distribution over the answers (a rating between two integers splits
  its mass between them; a click is Yes or No), so the answer logits carry the expected rating.

Only `train` rows are read: no valid or test row reaches pretraining. The user vectors are the
only per-user state and are never saved; prompts are trained on the frozen model from scratch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from puma_ray.core.llm import FrozenLM
from puma_ray.core.modules import SoftPromptTable
from puma_ray.core.templates import CLICK_ANSWERS, RATING_ANSWERS, load_template_text
from puma_ray.data.schema import read_manifest, shard_paths
from puma_ray.runtime.runs import Progress

SLOT_INIT = 0.1
"""Half-width of the uniform noise a dropped slot gets (SoftPromptTable's initialisation)."""


def train_rows(data_dir: str) -> pd.DataFrame:
    """user_id, item_text, label of every train row, one shard at a time (no other split is read)."""
    parts = [pq.read_table(p, columns=["user_id", "item_text", "label"], filters=[("split", "==", "train")])
             .to_pandas() for p in shard_paths(data_dir)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["user_id", "item_text", "label"])


def answer_targets(labels: np.ndarray, task: str) -> torch.Tensor:
    """[B, A] target distribution over the task's answers: a rating y in [1, 5] puts 1 - frac(y) on floor(y)
    and frac(y) on the next answer; a click puts its label on Yes (answer 0) and the rest on No."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if task == "click":
        return torch.stack([y, 1 - y], 1)
    y = y.clamp(1, 5) - 1
    low = y.floor().long().clamp(max=4)
    frac = y - low
    t = torch.zeros(len(y), len(RATING_ANSWERS))
    t[torch.arange(len(y)), low] = 1 - frac
    t[torch.arange(len(y)), (low + 1).clamp(max=4)] += frac
    return t


def slot_vectors(table: SoftPromptTable, users: torch.Tensor, dropout: float, gen: torch.Generator) -> torch.Tensor:
    """[B, l, d] the batch's user vectors, each replaced by fresh initialisation noise with probability `dropout`."""
    soft = table(users)
    if dropout <= 0:
        return soft
    drop = (torch.rand(len(users), generator=gen) < dropout)[:, None, None]
    noise = (torch.rand(soft.shape, generator=gen) * 2 - 1) * SLOT_INIT
    return torch.where(drop, noise, soft)


def bound_rows(table: SoftPromptTable, users: torch.Tensor, bound: float) -> None:
    """Clamp the batch's rows of the table to +-bound (only those rows: a step stays O(batch))."""
    rows = users.unique()
    with torch.no_grad():
        table.weight[rows] = table.weight[rows].clamp(-bound, bound)


def pretrain(model, tokenizer, data_dir: str, steps: int, batch_size: int, lr: float, seed: int,
             template: str | None = None, prompt_len: int = 1, user_lr: float = 1e-2,
             slot_dropout: float = 0.2, slot_bound: float = 0.2) -> dict:
    """Train `model` in place on the training interactions (module docstring); returns
    {"loss_first", "loss_last", "tokens", "rows", "users", "items"}."""
    task = read_manifest(data_dir)["task"]
    answers = RATING_ANSWERS if task == "rating" else CLICK_ANSWERS
    text = load_template_text(template or ("rating_amazon" if task == "rating" else "click_mind"))
    rows = train_rows(data_dir)
    users = pd.Index(sorted(rows["user_id"].unique()))
    user_idx = users.get_indexer(rows["user_id"])
    lm = FrozenLM(model, tokenizer, text, answers, prompt_len=prompt_len, prefix_cache=False)
    model.train().requires_grad_(True)  # the wrapper froze it: here it is the thing that learns
    gen = torch.Generator().manual_seed(seed)
    table = SoftPromptTable(len(users), prompt_len, lm.hidden, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    slot_opt = torch.optim.SparseAdam([table.weight], lr=user_lr)
    rng = np.random.default_rng(seed)
    losses, tokens = [], 0
    progress = Progress("models: pretraining steps", steps, every_s=15)
    for _ in range(steps):
        pick = rng.integers(0, len(rows), size=batch_size)
        batch = lm.encode(rows["item_text"].to_numpy()[pick].tolist())
        users_now = torch.as_tensor(user_idx[pick])
        soft = slot_vectors(table, users_now, slot_dropout, gen)
        logits = lm.answer_logits(soft, batch)
        loss = -(answer_targets(rows["label"].to_numpy()[pick], task) * F.log_softmax(logits, -1)).sum(-1).mean()
        opt.zero_grad()
        slot_opt.zero_grad()
        loss.backward()
        opt.step()
        slot_opt.step()
        bound_rows(table, users_now, slot_bound)
        sched.step()
        losses.append(loss.item())
        tokens += int(batch.lengths.sum()) + len(lm.template.prefix_ids) * batch_size
        progress.step()
    model.eval().requires_grad_(True)
    return {"loss_first": losses[0] if losses else None, "loss_last": float(np.mean(losses[-20:])) if losses else None,
            "tokens": tokens, "rows": len(rows), "users": len(users), "items": int(rows["item_text"].nunique())}
