"""Prompt recycling: a zero-user migration (issue 18, item 1).

A soft prompt lives in its model's input-embedding space. Both models embed the tokens their
tokenizers share, so a map fitted between the two embedding spaces on those tokens (least squares,
ridge-regularised, with a bias) carries any source prompt into the target space without a single
user interaction: a floor above random initialisation, and a start for the adapter.

Facts come from the tokenizers and the models' embedding modules, never from names:
- a token is identified by its decoded text, stripped of surrounding white space (byte-level BPE
  writes a leading space where SentencePiece writes "▁"; both decode to the same word); special
  tokens and tokens that decode to nothing are left out; when several ids decode to one text the
  lowest id stands for it;
- a token's vector is what the embedding module returns for it (a family that scales its input
  embeddings, as Gemma does, scales them there: the space prompts are injected into).
No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from puma_ray.errors import PumaError


def token_texts(tokenizer) -> dict[str, int]:
    """Decoded, stripped text of every ordinary token -> the lowest id with that text."""
    special = set(tokenizer.all_special_ids)
    texts: dict[str, int] = {}
    for i in range(len(tokenizer)):
        if i in special:
            continue
        text = tokenizer.decode([i]).strip()
        if text and text not in texts:
            texts[text] = i
    return texts


def shared_tokens(source_tokenizer, target_tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, target ids) of the token texts both tokenizers have, in text order."""
    a, b = token_texts(source_tokenizer), token_texts(target_tokenizer)
    common = sorted(set(a) & set(b))
    return np.array([a[t] for t in common], dtype=np.int64), np.array([b[t] for t in common], dtype=np.int64)


@torch.no_grad()
def input_vectors(model, ids: np.ndarray) -> torch.Tensor:
    """[n, d] float64: what the model's input-embedding module gives for `ids`."""
    emb = model.get_input_embeddings()
    return emb(torch.as_tensor(ids, device=emb.weight.device)).double().cpu()


@dataclass(frozen=True)
class RecycleMap:
    """y = x @ weight + bias, from source to target input-embedding space."""

    weight: torch.Tensor
    """[d_source, d_target] float64."""
    bias: torch.Tensor
    """[d_target] float64."""
    r2: float
    """Share of the target vectors' variance the map explains on the fitted tokens."""
    tokens: int
    """Shared tokens it was fitted on."""

    def apply(self, prompts: np.ndarray) -> np.ndarray:
        """[n, l, d_source] -> [n, l, d_target] float32."""
        x = torch.from_numpy(np.asarray(prompts, dtype=np.float64))
        return (x @ self.weight + self.bias).to(torch.float32).numpy()


def fit_map(x: torch.Tensor, y: torch.Tensor, ridge: float) -> RecycleMap:
    """Least squares y ~ x W + b over paired rows, ridge `ridge` x mean eigenvalue of the centred Gram matrix
    (scale-free). Needs more pairs than source dimensions."""
    n, d = x.shape
    if n <= d:
        raise PumaError(f"recycle: only {n} tokens are shared by the two tokenizers, fewer than the source's "
                        f"{d} dimensions: the map would be underdetermined")
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    gram += ridge * gram.diagonal().mean() * torch.eye(d, dtype=gram.dtype)
    weight = torch.linalg.solve(gram, xc.T @ yc)
    residual = ((yc - xc @ weight) ** 2).sum() / (yc**2).sum().clamp_min(1e-300)
    return RecycleMap(weight, my - mx @ weight, float(1 - residual), n)


def fit_recycle_map(source_model, source_tokenizer, target_model, target_tokenizer, ridge: float) -> RecycleMap:
    """The map between two models' input-embedding spaces, fitted on their shared tokens."""
    src_ids, tgt_ids = shared_tokens(source_tokenizer, target_tokenizer)
    return fit_map(input_vectors(source_model, src_ids), input_vectors(target_model, tgt_ids), ridge)


@dataclass(frozen=True)
class Distilled:
    """How closely an adapter reproduces the recycled prompts after `distil`."""

    mse_start: float
    """Mean squared error of the freshly initialised adapter."""
    mse: float
    """Mean squared error after the last step."""
    r2: float
    """Share of the recycled prompts' variance the adapter reproduces (1 - mse / variance)."""


def distil(adapter: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int, lr: float, batch: int,
           generator: torch.Generator) -> Distilled:
    """Fit `adapter` so that adapter(x) ~ y by mean squared error (AdamW, `steps` minibatches of `batch` users
    drawn by `generator`), dropout off: the recycled map's prompts as the adapter's starting point, before it
    trains end to end through the target model. x: [n, l, d_s], y: [n, l, d_t]; float32 numpy."""
    xs, ys = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.ascontiguousarray(y, np.float32))
    if xs.shape[:2] != ys.shape[:2]:
        raise PumaError(f"distil: {tuple(xs.shape)} source prompts for {tuple(ys.shape)} recycled ones")
    was_training = adapter.training
    adapter.eval()  # dropout off: the target is a deterministic map
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=0.0)
    variance = float(((ys - ys.mean((0, 1))) ** 2).mean().clamp_min(1e-12))
    with torch.no_grad():
        start = float(((adapter(xs) - ys) ** 2).mean())
    for _ in range(steps):
        rows = torch.randint(len(xs), (min(batch, len(xs)),), generator=generator)
        loss = ((adapter(xs[rows]) - ys[rows]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = float(((adapter(xs) - ys) ** 2).mean())
    adapter.train(was_training)
    return Distilled(start, mse, 1.0 - mse / variance)
