"""Storage URIs (s3://, gs://, hdfs://, any pyarrow.fs or fsspec file system) wherever a stage takes a path.

The stages read and write a local file system: atomic renames, manifests written last. A stage given
remote URIs (`@remote_paths` on its function) therefore runs on local copies, the same on the CLI, in
`ray job submit` jobs and from Python:

- Each remote input (file or directory) is mirrored into the node's cache
  (`PUMA_STORAGE_CACHE`, default `<tmp>/puma-ray-storage`), in a folder named by the URI and by its
  listing (every file's name, size and modification time): a re-run against unchanged remote files
  reuses the copy; a changed file makes a new one. On a multi-node cluster every node makes its copy
  (one zero-CPU task per node) before the stage starts, so Ray workers anywhere read the same path.
  Copies are never pruned: empty the cache when no stage runs.
- A remote `--out` is built in a fresh directory under the staging directory (`PUMA_OUT_STAGING`, default
  `<cache>/outputs`) seeded with what `--out` already holds (so the
  stage's own checks see it: refusing another kind of output, reusing finished work), and published
  only when the stage succeeded: uploaded whole beside it as `<out>.partial`, then copied over `<out>`
  (server-side) with top-level files last (manifests and markers are top-level), then `.partial` is
  deleted. The old output is deleted only once the new one is uploaded whole; if publishing dies while
  copying, `<out>` lacks its manifest (readers refuse it) and `<out>.partial` holds the whole result.
- On a multi-node cluster, workers on every node write parts of that directory (Ray Train checkpoints,
  migrated shards, scored rows), so a remote `--out` needs a staging directory every node sees (a shared
  mount: the cluster files set `PUMA_OUT_STAGING=/mnt/puma/.puma-staging`). Before anything runs, a
  token file written there is read back by a zero-CPU task on every node; if a node does not see it
  the stage is refused, naming the nodes and the variable. Nothing is written to `--out` before that.

Credentials come from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, instance roles), never
from configs. `file://` URIs are plain local paths and never reach this module (config.local_path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from puma_ray.errors import ConfigError, PumaError
from puma_ray.runtime.runs import Progress, log

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# paths Ray Train itself writes; they stay local or shared (a remote one would need Ray Train's own upload)
NOT_STAGED = ("storage_path",)


def is_remote(value: Any) -> bool:
    """A string naming storage other than this machine's file system (file:// is a local path)."""
    match = _URI.match(value) if isinstance(value, str) else None
    return match is not None and match.group(1).lower() != "file"


def filesystem(uri: str, key: str = "path"):
    """(pyarrow FileSystem, path inside it) for a URI: pyarrow's own file systems (s3, gs, hdfs, ...),
    then any fsspec protocol with its package installed; a ConfigError naming `key` otherwise."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    except (ValueError, TypeError, OSError) as first:
        try:
            import fsspec

            fsspec_fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError, OSError) as exc:
            raise ConfigError(f"{key}: {uri!r}: no file system for this URI ({first}; fsspec: {exc})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), path.rstrip("/")


def listing(fs, path: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime ns) of every file under `path` (one entry, name '', for a file); [] if absent."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [("", info.size, info.mtime_ns or 0)]
    if info.type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted((f.path[len(path):].lstrip("/"), f.size, f.mtime_ns or 0)
                  for f in found if f.type == pafs.FileType.File)


def cache_root() -> Path:
    """Where this node keeps its copies of remote inputs and builds remote outputs."""
    return Path(os.environ.get("PUMA_STORAGE_CACHE") or Path(tempfile.gettempdir()) / "puma-ray-storage")


def staging_root() -> Path:
    """Where remote outputs are built before they are published (on a multi-node cluster: seen by every node)."""
    return Path(os.environ.get("PUMA_OUT_STAGING") or cache_root() / "outputs")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or "root"


def download(fs, path: str, files: list[tuple[str, int, int]], dest: Path) -> None:
    """Copy the listed files of `path` to `dest` (a file when the listing is one unnamed file), logging progress."""
    progress = Progress(f"copying {path}: files", len(files), every_s=30.0)
    for rel, _, _ in files:
        target = dest / rel if rel else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{path}/{rel}" if rel else path) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 8 << 20)
        progress.step()


def mirror(uri: str, root: str | Path | None = None, key: str = "path") -> str:
    """This node's copy of a remote file or directory (made once per remote listing); its local path."""
    fs, path = filesystem(uri, key)
    files = listing(fs, path)
    if not files:
        raise PumaError(f"{key} {uri} does not exist (or is an empty directory)")
    home = Path(root or cache_root()) / "inputs" / _digest(uri) / _digest(files)
    local = home / _name(path)
    if not (home / "complete").is_file():
        partial = home.with_name(f"{home.name}.{uuid.uuid4().hex}.partial")  # unique on a disk nodes share
        shutil.rmtree(partial, ignore_errors=True)
        log.info("copying %s (%d files, %.1f MB) to %s", uri, len(files), sum(f[1] for f in files) / 1e6, local)
        download(fs, path, files, partial / _name(path))
        (partial / "complete").write_text(json.dumps({"uri": uri, "files": len(files)}))
        try:
            partial.rename(home)
        except OSError:  # another process on this node (nodes sharing a disk) finished the same copy first
            shutil.rmtree(partial, ignore_errors=True)
            if not (home / "complete").is_file():
                raise
    return str(local)


def _ordered(local: Path) -> list[Path]:
    """Files of a local tree, nested ones first and the top level last (its manifests and markers)."""
    files = [p for p in local.rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: (len(p.relative_to(local).parts) == 1, p.suffix == ".json", str(p)))


def upload(local: Path, fs, path: str) -> None:
    """Copy a local tree to `path`, nested files first and the top level last, logging progress."""
    fs.create_dir(path, recursive=True)
    files = _ordered(local)
    progress = Progress(f"uploading to {path}: files", len(files), every_s=30.0)
    for p in files:
        rel = p.relative_to(local).as_posix()
        with open(p, "rb") as src, fs.open_output_stream(f"{path}/{rel}") as out:
            shutil.copyfileobj(src, out, 8 << 20)
        progress.step()


def _delete(fs, path: str) -> None:
    import pyarrow.fs as pafs

    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def publish(local: Path, uri: str) -> None:
    """Replace the remote `uri` with the local tree, losing nothing if it fails (see the module docstring)."""
    fs, path = filesystem(uri, "--out")
    partial = f"{path}.partial"
    _delete(fs, partial)
    log.info("uploading %s to %s", local, uri)
    upload(local, fs, partial)
    _delete(fs, path)
    fs.create_dir(path, recursive=True)
    for p in _ordered(local):
        rel = p.relative_to(local).as_posix()
        fs.copy_file(f"{partial}/{rel}", f"{path}/{rel}")
    _delete(fs, partial)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def remote_fields(cfg: Any) -> dict[str, Any]:
    """Config fields naming remote storage (a string, or a list holding at least one remote string)."""
    found = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_remote(value) or (isinstance(value, (list, tuple)) and any(is_remote(v) for v in value)):
            found[f.name] = value
    return found


def ray_nodes() -> list[str]:
    """Alive nodes of the Ray cluster this process uses or will join (RAY_ADDRESS); [] for a local Ray not started."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return []
        from puma_ray.runtime.ray_utils import init_ray

        init_ray()
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def on_each_node(fn: Callable, nodes: list[str], *args: Any) -> list:
    """fn(*args) run once on each node (a zero-CPU Ray task pinned there); the results in node order."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(fn)
    return ray.get([task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                    .remote(*args) for node in nodes])


def mirror_on_nodes(uri: str, nodes: list[str], key: str) -> str:
    """mirror() on this node and, on a multi-node cluster, on every node (same path everywhere)."""
    local = mirror(uri, cache_root(), _flag(key))
    if len(nodes) > 1:
        paths = on_each_node(mirror, nodes, uri, str(cache_root()), _flag(key))
        if set(paths) != {local}:
            raise PumaError(f"{_flag(key)} {uri}: the nodes' copies landed in different places: {sorted(set(paths))}")
    return local


def _tree(path: Path) -> list[tuple[str, int, int]]:
    """listing() of a local directory."""
    import pyarrow.fs as pafs

    return listing(pafs.LocalFileSystem(), str(path))


def stage_out(uri: str) -> tuple[Path, list]:
    """A fresh directory under the staging root for a remote --out, holding a copy of what --out already holds;
    and its listing."""
    fs, path = filesystem(uri, "--out")
    files = listing(fs, path)
    work = staging_root() / _digest(uri, os.getpid(), time.time_ns()) / _name(path)
    shutil.rmtree(work.parent, ignore_errors=True)
    work.parent.mkdir(parents=True)
    if files:
        log.info("copying what --out %s holds (%d files) to build beside it", uri, len(files))
        download(fs, path, files, work)
    return work, _tree(work)


def _to_uris(value: Any, local: dict[str, str]) -> Any:
    """`value` (a summary) with every string that starts with a local copy's path naming its URI instead."""
    if isinstance(value, dict):
        return {k: _to_uris(v, local) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_uris(v, local) for v in value)
    if isinstance(value, str):
        for path, uri in local.items():
            if value == path or value.startswith(path + "/"):
                return uri + value[len(path):]
    return value


def check_remote(cfg: Any, remote: dict[str, Any]) -> list[str]:
    """Refuse what staging cannot do, before anything runs; the cluster's alive nodes."""
    for key, value in remote.items():
        if key in NOT_STAGED:
            raise ConfigError(f"{_flag(key)} {value}: give a path every node sees; remote storage is taken for "
                              "--out and the inputs, not for Ray Train's own storage")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if is_remote(v):
                filesystem(v, _flag(key))
    nodes = ray_nodes()
    if "out" in remote and len(nodes) > 1:
        blind = nodes_not_seeing(staging_root(), nodes)
        if blind:
            raise PumaError(
                f"--out {cfg.out}: a remote --out is built in {staging_root()} (PUMA_OUT_STAGING) and workers on every "
                f"node write parts of it, but {len(blind)} of this cluster's {len(nodes)} nodes do not see that "
                f"directory ({', '.join(n[:12] for n in blind)}): set PUMA_OUT_STAGING, in the job's environment, to a "
                "directory on storage every node mounts (the cluster files' /mnt/puma/.puma-staging), or give --out "
                "on such storage. Nothing was written")
    return nodes


def sees_token(path: str, token: str) -> bool:
    """Whether the file `path` exists here and holds `token`."""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def nodes_not_seeing(root: Path, nodes: list[str]) -> list[str]:
    """The nodes on which a token file written under `root` here is not found (one zero-CPU task per node)."""
    token = uuid.uuid4().hex
    probe = root / "probes" / token
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    except OSError as exc:
        raise PumaError(f"staging directory {root} (PUMA_OUT_STAGING): cannot write there: {exc}") from None
    try:
        seen = on_each_node(sees_token, nodes, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # left while another stage probes
            probe.parent.rmdir()
    return [node for node, ok in zip(nodes, seen) if not ok]


def mirror_inputs(remote: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    """field -> its local copy (a list field keeps its local entries as they are)."""
    local: dict[str, Any] = {}
    for key, value in remote.items():
        if key != "out":
            many = isinstance(value, (list, tuple))
            copies = [mirror_on_nodes(v, nodes, key) if is_remote(v) else v for v in (value if many else [value])]
            local[key] = copies if many else copies[0]
    return local


def remote_paths(run: Callable) -> Callable:
    """Let the stage function `run(cfg, ...)` take remote URIs for any path (see the module docstring)."""

    @functools.wraps(run)
    def staged(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        remote = remote_fields(cfg)
        if not remote:
            return run(cfg, *args, **kwargs)
        local = mirror_inputs(remote, check_remote(cfg, remote))
        if "out" not in remote:
            summary = run(dataclasses.replace(cfg, **local), *args, **kwargs)
            if getattr(cfg, "out", None):
                _name_uris(Path(cfg.out) / "config.yaml", _pairs(remote, local))
            return _to_uris(summary, _pairs(remote, local))
        work, before = stage_out(cfg.out)
        local["out"] = str(work)
        pairs = _pairs(remote, local)
        try:
            summary = run(dataclasses.replace(cfg, **local), *args, **kwargs)
            if _tree(work) != before:
                _name_uris(work / "config.yaml", pairs)
                publish(work, cfg.out)
            else:
                log.info("--out %s: nothing changed, nothing uploaded", cfg.out)
        finally:
            shutil.rmtree(work.parent, ignore_errors=True)
        return _to_uris(summary, pairs)

    return staged


def _pairs(remote: dict[str, Any], local: dict[str, Any]) -> dict[str, str]:
    """local copy -> URI, for every remote value."""
    pairs = {}
    for key, value in remote.items():
        many = isinstance(value, (list, tuple))
        for uri, path in zip(value if many else [value], local[key] if many else [local[key]]):
            if is_remote(uri):
                pairs[str(path)] = uri
    return pairs


def _name_uris(config: Path, pairs: dict[str, str]) -> None:
    """The resolved config written into --out names the URIs it was given, not this node's copies."""
    if config.is_file():
        text = config.read_text()
        for path, uri in sorted(pairs.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(path, uri)
        config.write_text(text)
