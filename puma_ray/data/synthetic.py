"""Synthetic users and items with known latent structure, generated shard by shard from a seed.

Items: latent vector = its genre's centre + noise; title = words of its genre's
vocabulary, so a language model can learn genre from text. Popularity is Zipf-like.
Users: latent preference vector, rating bias, and their own noise level (so
users differ in rating variance, which PUMA's selection stratifies on); activity
is heavy-tailed (Lomax) above a floor. A rating is
round(3 + bias + 1.2 * <u, v> / sqrt(dim) + noise) clipped to 1..5; a click is
Bernoulli(sigmoid(bias + 2 * <u, v> / sqrt(dim) - 2)).
Shard s uses Generator(seed, s), so any shard can be regenerated alone and
re-running gives identical rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

WORDS = (
    "amber anchor arrow aurora autumn beacon blade blossom breeze bridge canyon castle cedar cipher "
    "comet coral crimson crystal dagger dawn delta desert dragon dream dune eagle echo ember empire "
    "falcon feather fern fire forest fortress frost galaxy garden ghost glacier harbor hawk haven "
    "horizon hunter iron island ivory jade jungle kingdom knight lagoon lantern legend lion lotus "
    "marble meadow meteor midnight mirror monsoon moon mountain nebula night oasis ocean onyx orbit "
    "orchid palace phantom pine planet prairie prism quartz quest raven reef river rose ruby saga "
    "sapphire scarlet shadow shore silver sky spark spirit star stone storm summit sun tempest "
    "thunder tide tiger timber tower valley velvet violet voyage willow winter wolf"
).split()


@dataclass(frozen=True)
class Catalogue:
    """Items of a synthetic dataset (arrays indexed by item number)."""

    item_ids: np.ndarray
    """[items] str ids 'i00000'."""
    titles: np.ndarray
    """[items] str titles built from the item's genre words."""
    genre: np.ndarray
    """[items] int64 genre of each item."""
    latent: np.ndarray
    """[items, dim] float32 item latent vectors."""
    log_pop: np.ndarray
    """[items] float64 log popularity weights."""


def make_catalogue(seed: int, items: int, genres: int, dim: int) -> Catalogue:
    """Deterministic item catalogue for `seed`."""
    rng = np.random.default_rng([seed, 1 << 30])
    centres = rng.normal(size=(genres, dim))
    genre = rng.permutation(np.arange(items) % genres)
    latent = (centres[genre] + 0.5 * rng.normal(size=(items, dim))).astype(np.float32)
    vocab = np.array_split(rng.permutation(WORDS), genres)
    titles = []
    for i, g in enumerate(genre):
        words = rng.choice(vocab[g], size=min(3, len(vocab[g])), replace=False)
        titles.append(" ".join(w.capitalize() for w in words) + f" {i % 97 + 1}")
    log_pop = -0.8 * np.log(rng.permutation(items) + 10.0)
    return Catalogue(np.array([f"i{i:05d}" for i in range(items)]), np.array(titles), genre, latent, log_pop)


def user_counts(rng: np.random.Generator, n: int, floor: int, mean: float, items: int) -> np.ndarray:
    """Heavy-tailed interactions per user: floor + (mean - floor) x Lomax(2), at most `items`."""
    extra = max(mean - floor, 0.0) * rng.pareto(2.0, size=n)
    return np.minimum(floor + np.floor(extra).astype(np.int64), items)


def generate_shard(seed: int, shard: int, first_user: int, n_users: int, cat: Catalogue, task: str,
                   floor: int, mean: float, history_len: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (user_id, item_id, label, ts, history_text) and user latents for one shard."""
    rng = np.random.default_rng([seed, shard])
    items, dim = cat.latent.shape
    u_lat = rng.normal(size=(n_users, dim)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=n_users)
    noise = np.exp(rng.uniform(np.log(0.1), np.log(1.2), size=n_users))
    counts = user_counts(rng, n_users, floor, mean, items)
    user_ids = np.array([f"u{first_user + k:08d}" for k in range(n_users)])
    parts = []
    for lo in range(0, n_users, 2048):  # chunks bound the [users, items] key matrix
        hi = min(lo + 2048, n_users)
        keys = cat.log_pop[None, :] + rng.gumbel(size=(hi - lo, items))
        order = np.argsort(-keys, axis=1)
        for k in range(lo, hi):
            chosen = order[k - lo, : counts[k]]
            score = (cat.latent[chosen] @ u_lat[k]) / np.sqrt(dim)
            if task == "rating":
                label = np.clip(np.rint(3 + bias[k] + 1.2 * score + noise[k] * rng.normal(size=len(chosen))), 1, 5)
            else:
                label = (rng.random(len(chosen)) < 1 / (1 + np.exp(-(bias[k] + 2 * score - 2)))).astype(float)
            gaps = rng.exponential(86400.0, size=len(chosen)).astype(np.int64) + 1
            parts.append((k, chosen, label, 1_500_000_000 + np.cumsum(gaps)))
    rows = pd.DataFrame({
        "user_id": np.concatenate([np.repeat(user_ids[k], len(c)) for k, c, _, _ in parts]),
        "item_id": cat.item_ids[np.concatenate([c for _, c, _, _ in parts])],
        "label": np.concatenate([lab for _, _, lab, _ in parts]).astype(np.float32),
        "ts": np.concatenate([t for _, _, _, t in parts]),
    })
    if task == "click":
        rows["history_text"] = [list(cat.titles[c[max(0, j - history_len):j]])
                                for _, c, _, _ in parts for j in range(len(c))]
    else:
        rows["history_text"] = [[] for _ in range(len(rows))]
    latents = pd.DataFrame({"user_id": user_ids, "latent": list(u_lat), "bias": bias, "noise": noise})
    return rows, latents
