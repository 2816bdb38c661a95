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

from puma_ray.data.population import Population

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


def make_catalogue(seed: int, items: int, genres: int, dim: int, popularity_exponent: float = 0.8) -> Catalogue:
    """Deterministic item catalogue for `seed`; item weights (popularity rank + 10)^-popularity_exponent."""
    rng = np.random.default_rng([seed, 1 << 30])
    centres = rng.normal(size=(genres, dim))
    genre = rng.permutation(np.arange(items) % genres)
    latent = (centres[genre] + 0.5 * rng.normal(size=(items, dim))).astype(np.float32)
    vocab = np.array_split(rng.permutation(WORDS), genres)
    titles = []
    for i, g in enumerate(genre):
        words = rng.choice(vocab[g], size=min(3, len(vocab[g])), replace=False)
        titles.append(" ".join(w.capitalize() for w in words) + f" {i % 97 + 1}")
    log_pop = -popularity_exponent * np.log(rng.permutation(items) + 10.0)
    return Catalogue(np.array([f"i{i:05d}" for i in range(items)]), np.array(titles), genre, latent, log_pop)


def user_counts(rng: np.random.Generator, n: int, floor: int, mean: float, items: int) -> np.ndarray:
    """Heavy-tailed interactions per user: floor + (mean - floor) x Lomax(2), at most `items`."""
    extra = max(mean - floor, 0.0) * rng.pareto(2.0, size=n)
    return np.minimum(floor + np.floor(extra).astype(np.int64), items)


def generate_shard(seed: int, shard: int, first_user: int, n_users: int, cat: Catalogue, task: str,
                   floor: int, mean: float, history_len: int,
                   population: Population | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (user_id, item_id, label, ts, history_text) and user latents for one shard (a calibrated
    population's when one is given: rating task only, its own activity floor)."""
    if population is not None:
        return calibrated_shard(seed, shard, first_user, n_users, cat, population)
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


def group_centres(seed: int, groups: int, dim: int) -> np.ndarray:
    """[groups, dim] taste group centres, the same for every shard of `seed`."""
    return np.random.default_rng([seed, 1 << 29]).normal(size=(groups, dim))


def choose_items(rng: np.random.Generator, log_pop: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Each user's items: `counts[k]` distinct item numbers drawn by popularity (Gumbel top-k). Users go in
    chunks that bound the [users, items] key matrix at ~32 MB; the draws do not depend on the chunking."""
    chosen, step = [], max(1, 4_000_000 // len(log_pop))
    for lo in range(0, len(counts), step):
        order = np.argsort(-(log_pop[None, :] + rng.gumbel(size=(len(counts[lo:lo + step]), len(log_pop)))), axis=1)
        chosen += [order[k, :n] for k, n in enumerate(counts[lo:lo + step])]
    return chosen


def calibrated_labels(rng: np.random.Generator, quality: np.ndarray, taste: np.ndarray, mean: float, spread: float,
                      pop: Population) -> np.ndarray:
    """A user's labels: mean + spread x (sqrt(quality_share) x item quality + sqrt(taste_share) x their group's
    standardized item scores + the rest noise), snapped to the nearest label level."""
    noise = max(1.0 - pop.quality_share - pop.taste_share, 0.0)
    raw = mean + spread * (np.sqrt(pop.quality_share) * quality + np.sqrt(pop.taste_share) * taste
                           + np.sqrt(noise) * rng.normal(size=len(quality)))
    levels = np.asarray(pop.label_levels, dtype=np.float64)
    return levels[np.abs(raw[:, None] - levels[None, :]).argmin(axis=1)]


def group_tastes(seed: int, cat: Catalogue, groups: int) -> np.ndarray:
    """[groups, items] each group's scores of the items (its centre . item latent), centred over items and made
    uncorrelated with unit variance (QR): every pair of groups is equally far apart, and what groups agree on
    is item quality, drawn apart. Groups beyond the latent dimension get random item scores."""
    dim = cat.latent.shape[1]
    scores = group_centres(seed, groups, dim) @ cat.latent.T.astype(np.float64)
    if groups > dim:
        scores[dim:] = np.random.default_rng([seed, 1 << 26]).normal(size=(groups - dim, scores.shape[1]))
    scores -= scores.mean(1, keepdims=True)
    q, _ = np.linalg.qr(scores.T)
    return q.T * np.sqrt(scores.shape[1])


def calibrated_shard(seed: int, shard: int, first_user: int, n_users: int, cat: Catalogue,
                     pop: Population) -> tuple[pd.DataFrame, pd.DataFrame]:
    """generate_shard for a calibrated population (rating task)."""
    rng = np.random.default_rng([seed, shard, 1 << 28])
    items, dim = cat.latent.shape
    group = rng.choice(len(pop.group_shares), size=n_users, p=np.asarray(pop.group_shares) / sum(pop.group_shares))
    u_lat = group_centres(seed, len(pop.group_shares), dim)[group].astype(np.float32)  # a group's shared taste
    means = rng.normal(pop.label_base, pop.bias_std, size=n_users)
    spreads = np.exp(rng.normal(pop.spread_log_mean, pop.spread_log_std, size=n_users))
    counts = np.minimum(pop.floor + np.floor(pop.activity_scale * rng.pareto(pop.activity_shape, size=n_users)),
                        items).astype(np.int64)
    chosen = [rng.permutation(c) for c in choose_items(rng, cat.log_pop, counts)]  # recency independent of popularity
    quality = np.random.default_rng([seed, 1 << 27]).normal(size=items)  # the same for every shard
    tastes = group_tastes(seed, cat, len(pop.group_shares))
    labels = [calibrated_labels(rng, quality[c], tastes[group[k], c], means[k], spreads[k], pop)
              for k, c in enumerate(chosen)]
    user_ids = np.array([f"u{first_user + k:08d}" for k in range(n_users)])
    rows = pd.DataFrame({
        "user_id": np.repeat(user_ids, counts),
        "item_id": cat.item_ids[np.concatenate(chosen)] if n_users else np.array([], dtype=str),
        "label": (np.concatenate(labels) if n_users else np.array([])).astype(np.float32),
        "ts": np.concatenate([1_500_000_000 + np.cumsum(rng.exponential(86400.0, size=n).astype(np.int64) + 1)
                              for n in counts]) if n_users else np.array([], dtype=np.int64),
    })
    rows["history_text"] = [[] for _ in range(len(rows))]
    latents = pd.DataFrame({"user_id": user_ids, "latent": list(u_lat), "bias": means, "noise": spreads,
                            "group": group})
    return rows, latents
