"""The two tasks (rating, click): their answers, default template, head, metric sums and validation metric."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from puma_ray.core.metrics import ClickScores, RatingSums
from puma_ray.core.modules import ClickHead, RatingHead
from puma_ray.core.templates import CLICK_ANSWERS, RATING_ANSWERS


@dataclass(frozen=True)
class Task:
    """What a task needs: its answers, default template and head."""

    name: str
    answers: tuple[str, ...]
    template: str
    metric: str
    """Validation metric used for best-epoch selection."""
    mode: str
    """'min' or 'max' for that metric."""

    def head(self, lam: float, yes_minus_no: bool, label_mean: float | None = None) -> torch.nn.Module:
        """A fresh head; a rating head's output starts at `label_mean` (the train labels' mean) when given."""
        return RatingHead(lam, label_mean) if self.name == "rating" else ClickHead(yes_minus_no)

    def sums(self):
        return RatingSums() if self.name == "rating" else ClickScores()


TASKS = {"rating": Task("rating", RATING_ANSWERS, "rating_amazon", "rmse", "min"),
         "click": Task("click", CLICK_ANSWERS, "click_mind", "auc", "max")}
