"""What selection strategies ask about the eligible users, computed once each and streamed.

Label variance (per-user partial sums of streamed pyarrow batches of the train rows), mini-batch K-means and
incremental PCA over prompt vectors read `batch_rows` at a time by this process (scikit-learn
partial_fit), 2-D coordinates for the plot. No process holds all prompts: what is kept per user is
a few numbers (cluster, stratum, value, 2-D coordinates).
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from puma_ray.config import SelectConfig
from puma_ray.core.scoring import prompt_matrix
from puma_ray.data.schema import shard_paths
from puma_ray.errors import PumaError
from puma_ray.runtime.runs import Progress

PLOT_SAMPLE = 20000
"""Prompts the 2-D PCA of the selection plot is fitted on."""


MOMENTS = [("label", "count"), ("label", "sum"), ("label2", "sum")]
"""Per-user partial sums of training labels: n, sum, sum of squares."""


def _train_moments(batch: pa.RecordBatch) -> pa.Table:
    """Per-user (n, sum, sum of squares) of one batch's training labels."""
    label = pc.cast(batch.column("label"), pa.float64())
    t = pa.table({"user_id": batch.column("user_id"), "label": label, "label2": pc.multiply(label, label)})
    return t.group_by("user_id").aggregate(MOMENTS)


def label_variance(data_dir: str, batch_rows: int = 1 << 20) -> pd.Series:
    """Population variance of each user's training labels: the shards streamed by this process with
    pyarrow (only the train rows of three columns, `batch_rows` at a time), partial sums per batch
    added up per user. Through Ray Data this was one short pipeline whose workers' start-up cost
    ~10 s on a local Ray and ~30 s on a fresh 3-node cluster, for a few seconds of arithmetic."""
    paths = [str(p) for p in shard_paths(data_dir)]
    scan = ds.dataset(paths, format="parquet").to_batches(columns=["user_id", "label"], batch_size=batch_rows,
                                                          filter=pc.field("split") == "train")
    parts = [_train_moments(b) for b in scan if b.num_rows]
    if not parts:
        return pd.Series(dtype=np.float64, name="label")
    total = pa.concat_tables(parts).group_by("user_id").aggregate(
        [("label_count", "sum"), ("label_sum", "sum"), ("label2_sum", "sum")]).to_pandas().set_index("user_id")
    n = total["label_count_sum"].astype(np.float64)
    mean = total["label_sum_sum"] / n
    return (total["label2_sum_sum"] / n - mean * mean).clip(lower=0.0)


class VectorFiles:
    """Parquet files with `user_id` + a fixed-size float vector column, streamed in batches of eligible rows."""

    def __init__(self, paths: list[str], column: str, width: int, index: pd.Index, batch_rows: int) -> None:
        self.paths, self.column, self.width, self.index, self.batch_rows = paths, column, width, index, batch_rows

    def batches(self, what: str):
        """Yield (positions [n] int64, vectors [n, width] float32) file by file, in a fixed order.

        Read here rather than through Ray Data: partial_fit consumes batches one after the
        other on this process anyway, and a direct read keeps memory at one batch (through
        Ray Data the whole object store fills with blocks waiting for the consumer)."""
        progress = Progress(what, len(self.index))
        for path in self.paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_rows, columns=["user_id", self.column]):
                yield from self._eligible(batch, progress)

    def _eligible(self, batch, progress):
        pos = self.index.get_indexer(batch.column("user_id").to_pylist())
        keep = pos >= 0
        if keep.any():
            x = prompt_matrix(batch.column(self.column), self.width)[keep]
            progress.step(int(keep.sum()))
            yield pos[keep].astype(np.int64), x


def fit_kmeans(vectors: VectorFiles, k: int, passes: int, seed: int, transform=None, visit=None):
    """Mini-batch K-means over streamed vectors (scikit-learn partial_fit) -> ([N] clusters, fitted model).

    visit(positions, vectors), if given, sees every batch of the final (assignment) pass."""
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=vectors.batch_rows)
    buffer = []  # k-means++ needs at least k points in its first batch
    for p in range(passes):
        for _, x in vectors.batches(f"k-means pass {p + 1}/{passes}"):
            x = transform(x) if transform else x
            buffer.append(x)
            if sum(len(b) for b in buffer) >= 3 * k:
                km.partial_fit(np.concatenate(buffer))
                buffer = []
    if buffer:
        km.partial_fit(np.concatenate(buffer))
    labels = np.full(len(vectors.index), -1, dtype=np.int64)
    for pos, x in vectors.batches("k-means assignment"):
        labels[pos] = km.predict(transform(x) if transform else x)
        if visit:
            visit(pos, x)
    return labels, km


def fit_pca(vectors: VectorFiles, dim: int):
    """Incremental PCA (scikit-learn partial_fit) over streamed vectors."""
    from sklearn.decomposition import IncrementalPCA

    dim = min(dim, vectors.width)
    pca, buffer = IncrementalPCA(n_components=dim), []
    for _, x in vectors.batches("incremental PCA"):
        buffer.append(x)
        if sum(len(b) for b in buffer) >= max(dim, vectors.batch_rows):
            pca.partial_fit(np.concatenate(buffer))
            buffer = []
    rest = sum(len(b) for b in buffer)
    if rest >= dim:
        pca.partial_fit(np.concatenate(buffer))
    elif not getattr(pca, "n_samples_seen_", 0):
        raise PumaError(f"--pca-dim {dim} needs at least {dim} eligible users, there are {rest}")
    # else: a last chunk smaller than dim cannot be a partial_fit batch; the estimate comes from the rest
    return pca


class SelectionInputs:
    """The lazy per-user facts strategies ask for (see strategies.py), computed once each."""

    def __init__(self, cfg: SelectConfig, store: dict, users: pd.Index, losses: Callable[[], pd.Series],
                 features: Callable[[], VectorFiles]) -> None:
        """losses(): mean source-model training loss per user_id; features(): the FFN feature vectors
        (both computed only when a strategy asks, by the stage, which knows how)."""
        self.cfg, self.store, self.users = cfg, store, users
        self._losses, self._features = losses, features
        self.n = len(users)
        self.timings: dict[str, float] = {}
        self._clusters: dict[str, np.ndarray] = {}
        self.coords: np.ndarray | None = None  # [N, 2] for the scatter, filled by project()
        self._pca2 = None
        paths = [str((Path(cfg.prompts) / s["name"]).resolve()) for s in store["shards"]]
        self.prompts = VectorFiles(paths, "prompt", store["prompt_len"] * store["dim"], users, cfg.batch_rows)

    def project(self, pos: np.ndarray, x: np.ndarray) -> None:
        """2-D PCA coordinates of a batch of prompts (the PCA is fitted on the first batch seen)."""
        from sklearn.decomposition import PCA

        if self._pca2 is None:
            self._pca2 = PCA(n_components=2, random_state=self.cfg.seed).fit(x[:PLOT_SAMPLE]) if len(x) >= 2 else None
            self.coords = np.zeros((self.n, 2), dtype=np.float32)
        if self._pca2 is not None:
            self.coords[pos] = self._pca2.transform(x)

    def _timed(self, what: str, fn):
        t0 = time.perf_counter()
        value = fn()
        self.timings[what] = round(time.perf_counter() - t0, 3)
        return value

    @cached_property
    def _variance(self) -> np.ndarray:
        var = self._timed("variance", lambda: label_variance(self.cfg.data))
        return var.reindex(self.users).fillna(0.0).to_numpy(np.float64)

    def variance(self) -> np.ndarray:
        return self._variance

    @cached_property
    def _loss(self) -> np.ndarray:
        return self._timed("loss", self._losses).reindex(self.users).to_numpy(np.float64)

    def loss(self) -> np.ndarray:
        if np.isnan(self._loss).any():
            missing = self.users[np.isnan(self._loss)]
            raise PumaError(f"--losses has no loss for {len(missing)} eligible users (e.g. {list(missing[:3])}); "
                            "give an `evaluate --split train` output of this store")
        return self._loss

    @cached_property
    def pca(self):
        return self._timed("pca", lambda: fit_pca(self.prompts, self.cfg.pca_dim))

    def reduced(self) -> np.ndarray:
        out = np.zeros((self.n, self.pca.n_components_), dtype=np.float32)
        for pos, x in self.prompts.batches("PCA projection"):
            out[pos] = self.pca.transform(x)
        return out

    def clusters(self, space: str) -> np.ndarray:
        if space not in self._clusters:
            k, passes, seed = self.cfg.clusters, self.cfg.kmeans_passes, self.cfg.seed
            if k > self.n:
                raise PumaError(f"--clusters {k} exceeds the {self.n} eligible users")
            if space == "prompts":
                labels, _ = self._timed("kmeans", lambda: fit_kmeans(self.prompts, k, passes, seed,
                                                                     visit=self.project))
            elif space == "pca":
                labels, _ = self._timed("kmeans", lambda: fit_kmeans(self.prompts, k, passes, seed,
                                                                     transform=self.pca.transform, visit=self.project))
            else:
                feats = self._timed("ffn_features", self._features)
                labels, _ = self._timed("kmeans", lambda: fit_kmeans(feats, k, passes, seed))
            self._clusters[space] = labels
        return self._clusters[space]
