"""Ray Data callables that run a frozen model over prompts; plain classes (Ray builds one per actor).

PromptScorer: interaction rows joined with their user's prompt -> per-row prediction and loss
  (evaluate; the loss-based selection strategies).
FFNFeatures:  prompt rows -> the source model's FFN outputs of its last layers (the `ffn` strategy).
FFNShardFeatures: store shards -> one feature file per shard, rows in the shard's order (what K-means reads:
  the same users in the same order every run, whichever actor finishes first).

Batches arrive as pyarrow Tables; prompts are `fixed_size_list<float32>[l*d]`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file

from puma_ray.core.hf import load_causal_lm, load_scoring_model, load_tokenizer, resolve_dtype
from puma_ray.core.llm import FrozenLM
from puma_ray.core.tasks import TASKS
from puma_ray.errors import PumaError


def prompt_matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """fixed_size_list<float>[width] column -> [n, width] float32 (nulls become NaN), writable, with one copy
    of the values (a broadcast store of a million users is read into every scorer: no transient copies)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = np.empty((len(column), width), dtype=np.float32)
    at = 0
    for chunk in chunks:
        n = len(chunk)
        if chunk.null_count:
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            out[at:at + n] = np.nan
            out[at:at + n][valid] = chunk.filter(pa.array(valid)).flatten().to_numpy(
                zero_copy_only=False).reshape(-1, width)
        elif n:
            out[at:at + n] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(n, width)
        at += n
    return out


@dataclasses.dataclass(frozen=True)
class BroadcastStore:
    """A whole prompt store as numpy arrays, for a broadcast join. Put in Ray's object store once, it is mapped
    (read-only, not copied) by every scorer of a node: the store's memory is counted once per node, not once
    per scorer (a million users x 64 dims: 256 MB, plus their ids)."""

    sorted_ids: np.ndarray  # user ids (str), ascending
    rows: np.ndarray  # int64: the row of sorted_ids[i] in matrix
    matrix: np.ndarray  # [users, prompt_len * dim] float32; NaN rows where a prompt is null

    @classmethod
    def from_table(cls, table: pa.Table, width: int) -> "BroadcastStore":
        ids = np.asarray(table.column("user_id").to_pylist(), dtype=str)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], order.astype(np.int64), prompt_matrix(table.column("prompt"), width))

    def positions(self, user_ids: list[str]) -> np.ndarray:
        """The matrix row of each user; -1 for a user not in the store."""
        query = np.asarray(user_ids, dtype=str)
        if not len(self.sorted_ids) or not len(query):
            return np.full(len(query), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted_ids, query), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[at] == query, self.rows[at], -1)


def _device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


class PromptScorer:
    """Per-row scores of a prompt store on a model: label, pred, loss, finite (False = not scored)."""

    def __init__(self, model: str, template_text: str, task: str, head_path: str, lam: float, yes_minus_no: bool,
                 prompt_len: int, dim: int, prefix_cache: bool = True, use_gpu: bool = False,
                 broadcast=None, dtype: str = "auto", lora: str | None = None) -> None:
        """broadcast: a zero-argument callable giving the whole store as a BroadcastStore (broadcast join: rows
        arrive without their prompt and find it here; the stage passes one that fetches a Ray object); None
        when rows come joined. lora: the store's LoRA co-adaptation (PEFT directory), merged into the model."""
        self.lookup: BroadcastStore | None = broadcast() if broadcast is not None else None
        self.device = _device(use_gpu)
        self.task = TASKS[task]
        lm = load_scoring_model(model, lora, dtype=resolve_dtype(dtype, self.device))
        self.lm = FrozenLM(lm.to(self.device), load_tokenizer(model), template_text,
                           self.task.answers, prompt_len=prompt_len, prefix_cache=prefix_cache)
        self.head = self.task.head(lam, yes_minus_no)
        self.head.load_state_dict(load_file(head_path))
        self.head.to(self.device).eval()
        self.l, self.d = prompt_len, dim

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.lookup is not None:  # inner join against the broadcast store: rows of users without a prompt go
            pos = self.lookup.positions(batch.column("user_id").to_pylist())
            batch = batch.filter(pa.array(pos >= 0))
            prompts = self.lookup.matrix[pos[pos >= 0]]  # a copy: the shared matrix is read-only
        else:
            prompts = prompt_matrix(batch.column("prompt"), self.l * self.d)
        finite = np.isfinite(prompts).all(axis=1)
        labels = batch.column("label").to_numpy().astype(np.float32)
        pred = np.full(len(labels), np.nan, dtype=np.float32)
        loss = np.full(len(labels), np.nan, dtype=np.float32)
        keep = np.flatnonzero(finite)
        if len(keep):
            titles = batch.column("item_text").take(keep).to_pylist()
            hist = [h or [] for h in batch.column("history_text").take(keep).to_pylist()]
            soft = torch.from_numpy(prompts[keep]).view(-1, self.l, self.d).to(self.device)
            logits = self.lm.answer_logits(soft, self.lm.encode(titles, hist)).float()
            rows, p = self.head.row_loss(logits, torch.from_numpy(labels[keep]).to(self.device))
            pred[keep], loss[keep] = p.float().cpu().numpy(), rows.float().cpu().numpy()
        split = batch.column("split").cast(pa.string()) if "split" in batch.column_names else \
            pa.nulls(batch.num_rows, pa.string())
        return pa.table({"user_id": batch.column("user_id").cast(pa.string()), "split": split, "label": labels,
                         "pred": pred, "loss": loss, "finite": finite})


def ffn_modules(model, layers: int) -> list[torch.nn.Module]:
    """The FFN (`mlp`) module of each of the last `layers` decoder layers; a clear error when absent."""
    blocks = getattr(model.get_decoder(), "layers", None)
    if blocks is None or not len(blocks):
        raise PumaError(f"{type(model).__name__}: no decoder `layers` list, so the ffn strategy cannot find "
                        "its FFN activations; use another strategy")
    if layers > len(blocks):
        raise PumaError(f"--ffn-layers {layers} exceeds the model's {len(blocks)} decoder layers")
    mlps = [getattr(b, "mlp", None) for b in blocks[-layers:]]
    if any(m is None for m in mlps):
        raise PumaError(f"{type(model).__name__}: a decoder layer has no `mlp` module; use another strategy")
    return mlps


class FFNFeatures:
    """[n] prompts -> [n, layers * d] float32: each last layer's FFN output, averaged over the l prompt
    positions, when the prompt alone is fed to the source model."""

    def __init__(self, model: str, prompt_len: int, dim: int, layers: int, use_gpu: bool = False) -> None:
        self.device = _device(use_gpu)
        self.model = load_causal_lm(model).to(self.device)
        self.l, self.d = prompt_len, dim
        self._outputs: list[torch.Tensor] = []
        for m in ffn_modules(self.model, layers):
            m.register_forward_hook(lambda _m, _i, out: self._outputs.append(out.float().mean(dim=1)))

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = torch.from_numpy(prompt_matrix(batch.column("prompt"), self.l * self.d))
        self._outputs.clear()
        self.model(inputs_embeds=prompts.view(-1, self.l, self.d).to(self.device), use_cache=False)
        feats = torch.cat(self._outputs, dim=-1).cpu().numpy().astype(np.float32)
        values = pa.array(feats.reshape(-1), type=pa.float32())
        return pa.table({"user_id": batch.column("user_id").cast(pa.string()),
                         "prompt": pa.FixedSizeListArray.from_arrays(values, feats.shape[1])})


class FFNShardFeatures:
    """Rows {index, path} of store shards -> each shard's FFN features written to `out`/part-<index>.parquet
    (rows in the shard's order, `batch_size` prompts at a time; temp name, then renamed); returns {index, rows}."""

    def __init__(self, out: str, batch_size: int, **features) -> None:
        self.out, self.batch_size, self.features = out, batch_size, FFNFeatures(**features)

    def __call__(self, batch: dict) -> dict:
        import os

        import pyarrow.parquet as pq

        rows = []
        for index, path in zip(batch["index"], batch["path"]):
            final = os.path.join(self.out, f"part-{int(index):05d}.parquet")
            writer, n = None, 0
            for part in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size, columns=["user_id", "prompt"]):
                table = self.features(pa.Table.from_batches([part]))
                writer = writer or pq.ParquetWriter(final + ".tmp", table.schema)
                writer.write_table(table)
                n += table.num_rows
            if writer is not None:
                writer.close()
                os.replace(final + ".tmp", final)
            rows.append(n)
        return {"index": np.asarray(batch["index"]), "rows": np.asarray(rows)}
