"""Brief pretraining of a tiny model on catalogue knowledge (no user information).

Random-weight tiny models do not respond to item titles the way a real LLM does, and
migration on them is a poor test bed (DESIGN.md "Offline defaults"). So a tiny model
reads template sentences in which the user slot is empty and the answer is the item's
mean TRAINING label (rounded rating, or Yes when the item's training click rate is at
least one half): what a real LLM knows about its catalogue. Sequences are built exactly
as the frozen-LM wrapper builds them (same template encoding, same answer token).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import torch

from puma_ray.core.templates import CLICK_ANSWERS, RATING_ANSWERS, SampleEncoder, encode_template, load_template_text
from puma_ray.data.schema import read_manifest, shard_paths
from puma_ray.runtime.runs import Progress


def item_train_means(data_dir: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(item texts, mean training label, training interactions) per item, one shard at a time."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for path in shard_paths(data_dir):
        df = pq.read_table(path, columns=["item_text", "label", "split"]).to_pandas()
        g = df[df["split"] == "train"].groupby("item_text")["label"].agg(["sum", "count"])
        for text, s, c in g.itertuples():
            sums[text] += float(s)
            counts[text] += int(c)
    texts = sorted(sums)
    n = np.array([counts[t] for t in texts], dtype=np.float64)
    return texts, np.array([sums[t] for t in texts]) / np.maximum(n, 1), n


def answer_index(mean: np.ndarray, task: str) -> np.ndarray:
    """Index into the task's answers: rounded rating 1..5 -> 0..4; click rate >= .5 -> Yes (0)."""
    if task == "rating":
        return np.clip(np.rint(mean), 1, 5).astype(np.int64) - 1
    return np.where(mean >= 0.5, 0, 1)


def pretrain(model, tokenizer, data_dir: str, steps: int, batch_size: int, lr: float, seed: int,
             template: str | None = None) -> dict:
    """Causal-LM training on catalogue sentences; returns {"loss_first", "loss_last", "tokens"}."""
    task = read_manifest(data_dir)["task"]
    answers = RATING_ANSWERS if task == "rating" else CLICK_ANSWERS
    text = load_template_text(template or ("rating_amazon" if task == "rating" else "click_mind"))
    encoded = encode_template(tokenizer, text, answers, getattr(model.config, "max_position_embeddings", 512))
    encoder = SampleEncoder(tokenizer, encoded, prompt_len=0)
    titles, means, weight = item_train_means(data_dir)
    target = answer_index(means, task)
    rng = np.random.default_rng(seed)
    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses, tokens = [], 0
    progress = Progress("models: pretraining steps", steps, every_s=15)
    for _ in range(steps):
        pick = rng.choice(len(titles), size=batch_size, p=weight / weight.sum())
        rows = [encoded.prefix_ids + encoder(titles[i]) + [encoded.answer_ids[target[i]]] for i in pick]
        width = max(len(r) for r in rows)
        ids = torch.full((batch_size, width), pad)
        mask = torch.zeros(batch_size, width, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)], mask[k, : len(r)] = torch.tensor(r), 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        tokens += int(mask.sum())
        progress.step()
    model.eval()
    return {"loss_first": losses[0] if losses else None, "loss_last": float(np.mean(losses[-20:])) if losses else None,
            "tokens": tokens, "items": len(titles)}
