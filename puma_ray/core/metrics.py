"""Exact dataset metrics that survive sharding across workers.

Rating metrics come from sums (squared error, absolute error, exact hits, count)
that add up across batches and workers, so RMSE is over the whole dataset, not a
mean of per-batch RMSEs. AUC needs every score: each worker's (user, score, label)
arrays are gathered, then AUC and uAUC are computed once.

torch is imported only where tensors are met: the per-user folds run in Ray tasks that
should not pay torch's ~200 MB per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _distributed() -> bool:
    import torch.distributed as dist

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
            import torch
            import torch.distributed as dist

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
            import torch.distributed as dist

            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (users, scores, labels))
            users, scores, labels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        u, used, skipped = uauc(users, scores, labels)
        return {"auc": auc(scores, labels), "uauc": u, "uauc_users": used, "uauc_users_skipped": skipped,
                "n": int(len(labels))}


# --------------------------------------------------------------------------- per user, streamed totals

USER_SUMS = {"rating": ("n", "n_bad", "loss_sum", "sse", "sae", "hits"),
             "click": ("n", "n_bad", "loss_sum", "auc_sum", "auc_used", "auc_skipped")}
"""Columns of a per-user row that add up across users into a split's totals."""


def user_row(task: str, finite: np.ndarray, pred: np.ndarray, label: np.ndarray, loss: np.ndarray) -> dict:
    """One user's scored rows -> the per-user metrics and the sums that add up across users.

    Rows whose prompt is not finite are counted (n_bad) and left out of everything else; n is
    the scored rows. rating: rmse, mae and the sums RatingSums keeps; click: the user's AUC
    (nan with one class) and auc_sum/auc_used/auc_skipped for uAUC."""
    finite = np.asarray(finite, dtype=bool)
    pred, label, loss = (np.asarray(a, dtype=np.float64)[finite] for a in (pred, label, loss))
    n = len(label)
    row = {"n": n, "n_bad": len(finite) - n, "loss_sum": float(loss.sum()),
           "loss": float(loss.mean()) if n else float("nan")}
    if task == "rating":
        err = pred - label
        sse, sae = float((err * err).sum()), float(np.abs(err).sum())
        row.update(sse=sse, sae=sae, hits=float((np.clip(np.round(pred), 1, 5) == label).sum()),
                   rmse=(sse / n) ** 0.5 if n else float("nan"), mae=sae / n if n else float("nan"))
    else:
        value = auc(pred, label) if n else float("nan")
        used = bool(np.isfinite(value))
        row.update(auc=value, auc_sum=value if used else 0.0, auc_used=int(used), auc_skipped=int(n > 0 and not used))
    return row


class UserTotals:
    """Folds a split's per-user rows (user_row dicts as column arrays, any batches) into its sums, the
    users with non-finite prompts and the `worst` highest-loss scored users; memory is one batch."""

    def __init__(self, task: str, worst: int = 5) -> None:
        self.task, self.keep = task, worst
        self.sums = {k: 0.0 for k in USER_SUMS[task]}
        self.users = 0
        self.bad: set[str] = set()
        self.worst: dict[str, np.ndarray] | None = None

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for k in self.sums:
            self.sums[k] += float(np.sum(batch[k]))
        scored = np.asarray(batch["n"]) > 0
        self.users += int(scored.sum())
        self.bad.update(np.asarray(batch["user_id"])[np.asarray(batch["n_bad"]) > 0].tolist())
        cand = {k: np.asarray(v)[scored] for k, v in batch.items()}
        if self.worst is not None:
            cand = {k: np.concatenate([self.worst[k], cand[k]]) for k in cand}
        top = np.argsort(-cand["loss"], kind="stable")[: self.keep]
        self.worst = {k: v[top] for k, v in cand.items()}

    def metrics(self) -> dict:
        return {**split_metrics(self.task, self.sums), "users": self.users,
                "quarantined_rows_skipped": int(self.sums["n_bad"])}


def split_metrics(task: str, sums: dict) -> dict:
    """A split's exact metrics from the per-user sums added over its users (USER_SUMS[task] keys)."""
    n = int(sums["n"])
    loss = sums["loss_sum"] / n if n else float("nan")
    if task == "rating":
        out = RatingSums(sse=sums["sse"], sae=sums["sae"], hits=sums["hits"], n=n).compute()
    else:
        used = int(sums["auc_used"])
        out = {"uauc": sums["auc_sum"] / used if used else float("nan"), "uauc_users": used,
               "uauc_users_skipped": int(sums["auc_skipped"]), "n": n}
    return {**out, "loss": loss}


class SortedAUC:
    """Exact ROC AUC from (score, positives, count) runs fed in ascending score order, one run per
    distinct score (ties counted half, as `auc`): memory is one batch, whatever the rows."""

    def __init__(self) -> None:
        self.num = 0.0
        self.neg_below = 0.0
        self.pos = 0.0

    def add(self, positives: np.ndarray, counts: np.ndarray) -> None:
        """positives, counts: [k] per distinct score of this batch, scores ascending across calls."""
        pos = np.asarray(positives, dtype=np.float64)
        neg = np.asarray(counts, dtype=np.float64) - pos
        below = self.neg_below + np.concatenate([[0.0], np.cumsum(neg)[:-1]])
        self.num += float((pos * (below + 0.5 * neg)).sum())
        self.neg_below += float(neg.sum())
        self.pos += float(pos.sum())

    def value(self) -> float:
        neg = self.neg_below
        return self.num / (self.pos * neg) if self.pos and neg else float("nan")
