"""Exact dataset metrics that survive sharding across workers.

Rating metrics come from sums (squared error, absolute error, exact hits, count)
that add up across batches and workers, so RMSE is over the whole dataset, not a
mean of per-batch RMSEs. AUC needs every score: each worker's (user, score, label)
arrays are gathered, then AUC and uAUC are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class RatingSums:
    """Running sums for RMSE, MAE and accuracy (prediction rounded and clamped to 1..5)."""

    sse: float = 0.0
    sae: float = 0.0
    hits: float = 0.0
    n: float = 0.0

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """pred, label: [B] float (any device)."""
        pred, label = pred.detach().double().cpu(), label.detach().double().cpu()
        err = pred - label
        self.sse += float((err * err).sum())
        self.sae += float(err.abs().sum())
        self.hits += float((pred.round().clamp(1, 5) == label).sum())
        self.n += len(label)

    def all_reduce(self) -> "RatingSums":
        """Sum over every worker of the process group (no-op without one)."""
        if _distributed():
            t = torch.tensor([self.sse, self.sae, self.hits, self.n], dtype=torch.float64)
            dist.all_reduce(t)
            self.sse, self.sae, self.hits, self.n = t.tolist()
        return self

    def compute(self) -> dict:
        if self.n == 0:
            return {"rmse": float("nan"), "mae": float("nan"), "accuracy": float("nan"), "n": 0}
        return {"rmse": (self.sse / self.n) ** 0.5, "mae": self.sae / self.n, "accuracy": self.hits / self.n,
                "n": int(self.n)}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; nan with one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def uauc(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[float, int, int]:
    """Mean per-user AUC over users with both classes -> (uAUC, users used, users skipped)."""
    users = np.asarray(users)
    order = np.argsort(users, kind="mergesort")
    u, s, y = users[order], np.asarray(scores)[order], np.asarray(labels)[order]
    bounds = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1, len(u)]
    values = [auc(s[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    used = [v for v in values if not np.isnan(v)]
    return (float(np.mean(used)) if used else float("nan")), len(used), len(values) - len(used)


@dataclass
class ClickScores:
    """Collects (user, score, label) for AUC/uAUC; gathers across workers before computing."""

    users: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def update(self, users, score: torch.Tensor, label: torch.Tensor) -> None:
        self.users.extend(list(users))
        self.scores.append(score.detach().float().cpu().numpy())
        self.labels.append(label.detach().float().cpu().numpy())

    def compute(self) -> dict:
        users = np.asarray(self.users)
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0)
        if _distributed():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (users, scores, labels))
            users, scores, labels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        u, used, skipped = uauc(users, scores, labels)
        return {"auc": auc(scores, labels), "uauc": u, "uauc_users": used, "uauc_users_skipped": skipped,
                "n": int(len(labels))}
