"""The canonical dataset directory (DESIGN.md "Data contracts"): schema, layout, readers.

    DIR/manifest.json                   written last; a directory without it is incomplete
    DIR/interactions/part-NNNNN.parquet one row per interaction, INTERACTIONS schema;
                                        every user's rows live in exactly one shard
    DIR/users.parquet                   user_id -> dense user_idx (shard order, then user_id)
    DIR/items.parquet                   item_id -> dense item_idx, item_text, interactions
    DIR/latents/                        synthetic only: ground-truth latents for diagnostics
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from puma_ray.errors import PumaError

INTERACTIONS = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("item_text", pa.string()),
    ("history_text", pa.list_(pa.string())),
    ("label", pa.float32()),
    ("ts", pa.int64()),
    ("split", pa.string()),
])
USERS = pa.schema([("user_id", pa.string()), ("user_idx", pa.int64()), ("n_train", pa.int64()),
                   ("n_valid", pa.int64()), ("n_test", pa.int64())])
ITEMS = pa.schema([("item_id", pa.string()), ("item_idx", pa.int64()), ("item_text", pa.string()),
                   ("interactions", pa.int64())])
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def split_label_mean(data_dir: str | Path, split: str) -> float | None:
    """Mean label of a split's rows (one column read per shard); None when the split has no row."""
    total, count = 0.0, 0
    for shard in read_manifest(data_dir)["shards"]:  # the stage verified the shards already
        path = Path(data_dir) / "interactions" / shard["name"]
        labels = pq.read_table(path, columns=["label"], filters=[("split", "==", split)]).column("label")
        total += float(pc.sum(labels).as_py() or 0.0)
        count += len(labels)
    return total / count if count else None


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temporary name and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.replace_schema_metadata(None), tmp, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    """JSON to a temporary name, then renamed: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def copy_atomic(src: str | Path, dst: Path) -> None:
    """A file copied to a temporary name, then renamed: a reader sees the old file or the whole new one."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_required_json(path: Path, missing: str) -> dict:
    """A manifest that marks its directory complete; `missing` is the error when it is absent."""
    if not path.is_file():
        raise PumaError(missing)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PumaError(f"{path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0]}); re-create its "
                        "directory with the stage that wrote it") from None
    if not isinstance(data, dict):
        raise PumaError(f"{path} is corrupt (not a JSON object); re-create its directory with the stage that wrote it")
    return data


def read_manifest(data_dir: str | Path) -> dict:
    """The manifest of a complete dataset directory, or a PumaError saying what is wrong."""
    return read_required_json(Path(data_dir) / MANIFEST, f"{data_dir} is not a complete puma-ray dataset (no "
                              f"{MANIFEST}); create one with `puma-ray data --out DIR`")


def fingerprint(out: Path, shards: list[dict]) -> str:
    """The dataset's identity: the checksums of its shards, users.parquet and items.parquet."""
    h = hashlib.sha256()
    for s in shards:
        h.update(s["sha256"].encode())
    for name in ("users.parquet", "items.parquet"):
        h.update(file_sha256(out / name).encode())
    return h.hexdigest()


def verify_dataset(data_dir: str | Path) -> dict:
    """Check every shard's checksum, and users/items against the fingerprint; returns the manifest."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    for s in manifest["shards"]:
        path = data_dir / "interactions" / s["name"]
        if not path.is_file() or file_sha256(path) != s["sha256"]:
            raise PumaError(f"dataset {data_dir}: shard interactions/{s['name']} is missing or does not match its "
                            "checksum; re-create the dataset with `puma-ray data`")
    missing = [n for n in ("users.parquet", "items.parquet") if not (data_dir / n).is_file()]
    if missing or ("fingerprint" in manifest and fingerprint(data_dir, manifest["shards"]) != manifest["fingerprint"]):
        raise PumaError(f"dataset {data_dir}: {', '.join(missing) or 'users.parquet or items.parquet'} "
                        f"{'is missing' if missing else 'does not match the fingerprint'}; re-create the dataset "
                        "with `puma-ray data`")
    return manifest


def shard_paths(data_dir: str | Path) -> list[Path]:
    """The interaction shards of a complete dataset, checked against their checksums first."""
    manifest = verify_dataset(data_dir)
    return [Path(data_dir) / "interactions" / s["name"] for s in manifest["shards"]]


def iter_item_texts(data_dir: str | Path, batch_size: int = 65536) -> Iterator[str]:
    """Item texts of a dataset, streamed from items.parquet in item_idx order."""
    read_manifest(data_dir)
    pf = pq.ParquetFile(Path(data_dir) / "items.parquet")
    for batch in pf.iter_batches(batch_size=batch_size, columns=["item_text"]):
        yield from (t for t in batch.column(0).to_pylist() if t)
