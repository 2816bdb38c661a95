"""Trainable pieces: the per-user soft prompt table, the task heads and the PUMA migration adapter.

Shapes: prompts [B, l, d] float32; answer logits [B, A] float32; predictions [B] float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- soft prompts


class SoftPromptTable(nn.Module):
    """l x d trainable vectors per user, rows addressed by the dense user_idx of the dataset.

    Initialised uniform(-0.1, 0.1) like the paper. One row per user holds l*d floats, so the
    table is partitioned by rows (row ownership across workers). The lookup's gradient is
    row-sparse (only the batch's rows), to be stepped by a sparse optimizer (`sparse_adam`):
    a step costs O(batch) whatever the number of users.
    """

    def __init__(self, num_users: int, prompt_len: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.prompt_len, self.dim = prompt_len, dim
        self.weight = nn.Parameter(torch.empty(num_users, prompt_len * dim).uniform_(-0.1, 0.1, generator=generator))

    def forward(self, user_idx: torch.Tensor) -> torch.Tensor:
        """[B] int64 -> [B, l, d]."""
        return nn.functional.embedding(user_idx, self.weight, sparse=True).view(-1, self.prompt_len, self.dim)


def sparse_adam(table: SoftPromptTable, lr: float) -> torch.optim.Optimizer:
    """Lazy Adam over the table (torch SparseAdam): each step reads and updates only the rows of the
    batch, moments included; rows absent from a batch do not move (dense AdamW would keep moving them
    on stale moments, at O(table) per step). Bias correction uses the table's global step count."""
    return torch.optim.SparseAdam([table.weight], lr=lr)


# --------------------------------------------------------------------------- heads


class RatingHead(nn.Module):
    """Cross-entropy on the 5 answer logits + an MLP (5->32->12->1) regressing the rating.

    loss = (1 - lam) * MSE(mlp(logits), y) + lam * CE(logits, y - 1); prediction = mlp(logits).
    """

    def __init__(self, lam: float = 0.2, label_mean: float | None = None) -> None:
        super().__init__()
        self.lam = lam
        self.mlp = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 1))
        if label_mean is not None:  # start about the train mean: a fresh head otherwise predicts ~0 on a 1..5
            with torch.no_grad():  # scale, and in few steps (Amazon 5-core) never climbed to its 4.8 mean
                self.mlp[-1].bias.fill_(label_mean)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, 5] -> [B] predicted ratings."""
        return self.mlp(logits).squeeze(-1)

    def row_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 5], [B] ratings 1..5) -> ([B] per-row loss, [B] predictions)."""
        pred = self.predict(logits)
        target = labels.round().clamp(1, 5).long() - 1
        ce = F.cross_entropy(logits, target, reduction="none")
        return (1 - self.lam) * (pred - labels) ** 2 + self.lam * ce, pred

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 5], [B] ratings 1..5) -> (scalar loss, [B] predictions)."""
        rows, pred = self.row_loss(logits, labels)
        return rows.mean(), pred


class ClickHead(nn.Module):
    """BCE on the "Yes" logit (or on Yes minus No); prediction = the click probability."""

    def __init__(self, yes_minus_no: bool = False) -> None:
        super().__init__()
        self.yes_minus_no = yes_minus_no

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, 2] (Yes, No) -> [B] click logit."""
        return logits[:, 0] - logits[:, 1] if self.yes_minus_no else logits[:, 0]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score(logits))

    def row_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 2], [B] 0/1) -> ([B] per-row BCE, [B] click probabilities)."""
        s = self.score(logits)
        return F.binary_cross_entropy_with_logits(s, labels.float(), reduction="none"), torch.sigmoid(s)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 2], [B] 0/1) -> (scalar loss, [B] click probabilities)."""
        rows, prob = self.row_loss(logits, labels)
        return rows.mean(), prob


# --------------------------------------------------------------------------- adapter


@dataclass(frozen=True)
class AdapterConfig:
    """Shape of a migration adapter; saved next to its weights."""

    source_dim: int
    """Input width: the source prompt dimension (sum of dimensions for several sources)."""
    target_dim: int
    """Output width: the target model's hidden size."""
    width: int = 4096
    """Hidden width w of every FFN (4096 in the paper)."""
    rank: int = 0
    """0 = full-rank linears; r > 0 factorises every linear a->b as a->r->b (the cost knob)."""
    dropout: float = 0.1
    """Dropout inside each FFN."""

    def to_dict(self) -> dict:
        return asdict(self)


def _linear(a: int, b: int, rank: int) -> nn.Module:
    if rank <= 0 or rank >= min(a, b):
        return nn.Linear(a, b)
    return nn.Sequential(nn.Linear(a, rank, bias=False), nn.Linear(rank, b))


class FFN(nn.Module):
    """Linear(a->w) -> SiLU -> Dropout -> Linear(w->b)."""

    def __init__(self, a: int, w: int, b: int, rank: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(_linear(a, w, rank), nn.SiLU(), nn.Dropout(dropout), _linear(w, b, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MigrationAdapter(nn.Module):
    """PUMA's adapter: LN -> FFN(ds->w->ds) + residual -> LN -> FFN(ds->w->dt) -> LN ->
    FFN(dt->w->dt) + residual -> LN -> FFN(dt->w->dt).

    Applied per token: [..., d_s] -> [..., d_t], so l > 1 prompts map vector by vector.
    For aggregated migration the input is the concatenation of the sources' prompts.
    """

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ds, dt, w, r, p = cfg.source_dim, cfg.target_dim, cfg.width, cfg.rank, cfg.dropout
        self.ln1, self.ffn1 = nn.LayerNorm(ds), FFN(ds, w, ds, r, p)
        self.ln2, self.ffn2 = nn.LayerNorm(ds), FFN(ds, w, dt, r, p)
        self.ln3, self.ffn3 = nn.LayerNorm(dt), FFN(dt, w, dt, r, p)
        self.ln4, self.ffn4 = nn.LayerNorm(dt), FFN(dt, w, dt, r, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_s] float -> [..., d_t] float."""
        x = x + self.ffn1(self.ln1(x))
        x = self.ffn2(self.ln2(x))
        x = x + self.ffn3(self.ln3(x))
        return self.ffn4(self.ln4(x))


def adapter_param_count(cfg: AdapterConfig) -> int:
    """Closed-form parameter count (what a test checks the module against)."""

    def lin(a: int, b: int) -> int:
        r = cfg.rank
        return a * b + b if r <= 0 or r >= min(a, b) else a * r + r * b + b

    def ffn(a: int, b: int) -> int:
        return lin(a, cfg.width) + lin(cfg.width, b)

    ds, dt = cfg.source_dim, cfg.target_dim
    norms = 2 * (2 * ds) + 2 * (2 * dt)
    return ffn(ds, ds) + ffn(ds, dt) + ffn(dt, dt) + ffn(dt, dt) + norms
