"""Storage URIs: every path a stage takes may name S3 (or any pyarrow.fs / fsspec file system).

An S3 API is served by moto's server on 127.0.0.1 (conftest's `s3` fixture: credentials and endpoint in the
environment as a cluster would give them); pyarrow's own S3 client talks to it."""

from __future__ import annotations

import json
import os

import pyarrow.fs as pafs
import pytest

from puma_ray.config import AdapterStageConfig, DataConfig, EvaluateConfig, MigrateConfig, SelectConfig
from puma_ray.errors import ConfigError, PumaError
from puma_ray.runtime import storage
from puma_ray.stages.adapter import run_adapter
from puma_ray.stages.data import run_data
from puma_ray.stages.evaluate import run_evaluate
from puma_ray.stages.migrate import run_migrate
from puma_ray.stages.select import run_select

from conftest import BUCKET, put_tree


def remote_files(fs, path):
    return {rel: size for rel, size, _ in storage.listing(fs, path)}


def test_a_mirror_is_made_once_per_remote_listing(s3, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("one")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"\0" * 1000)
    uri = put_tree(s3, tmp_path / "d", f"{BUCKET}/mirror/d")
    first = storage.mirror(uri)
    assert open(f"{first}/a.txt").read() == "one" and os.path.getsize(f"{first}/sub/b.bin") == 1000
    stamp = os.stat(f"{first}/a.txt").st_mtime_ns
    assert storage.mirror(uri) == first and os.stat(f"{first}/a.txt").st_mtime_ns == stamp  # reused, not copied
    with s3.open_output_stream(f"{BUCKET}/mirror/d/a.txt") as out:
        out.write(b"two!")
    second = storage.mirror(uri)
    assert second != first and open(f"{second}/a.txt").read() == "two!"
    with pytest.raises(PumaError, match="does not exist"):
        storage.mirror(f"s3://{BUCKET}/mirror/absent")


def test_publish_replaces_the_output_whole_and_a_failed_upload_changes_nothing(s3, tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    for d, files in ((old, {"manifest.json": "{}", "parts/p0": "0" * 10, "parts/stale": "s"}),
                     (new, {"manifest.json": "{\"v\": 2}", "parts/p0": "1" * 20, "parts/p1": "2"})):
        for rel, text in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
    uri = f"s3://{BUCKET}/publish/out"
    storage.publish(old, uri)
    before = remote_files(s3, f"{BUCKET}/publish/out")
    assert before == {"manifest.json": 2, "parts/p0": 10, "parts/stale": 1}

    calls = []
    real = storage.shutil.copyfileobj

    def dies_on_the_second_file(src, dst, length=0):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("connection reset (injected)")
        return real(src, dst, length)

    monkeypatch.setattr(storage.shutil, "copyfileobj", dies_on_the_second_file)
    with pytest.raises(OSError, match="injected"):
        storage.publish(new, uri)
    monkeypatch.undo()
    assert remote_files(s3, f"{BUCKET}/publish/out") == before  # the old output, whole
    storage.publish(new, uri)
    assert remote_files(s3, f"{BUCKET}/publish/out") == {"manifest.json": 8, "parts/p0": 20, "parts/p1": 1}
    assert storage.listing(s3, f"{BUCKET}/publish/out.partial") == []
    order = [p.relative_to(new).as_posix() for p in storage._ordered(new)]
    assert order[-1] == "manifest.json"  # top-level markers and manifests are written last


def test_a_bad_uri_is_refused_naming_its_flag_before_anything_runs(s3, tmp_path):
    with pytest.raises(ConfigError, match="^--out: 'nosuchfs://x/y': no file system"):
        run_data(DataConfig(source="synthetic", out="nosuchfs://x/y", users=20, items=10))
    with pytest.raises(PumaError, match="--data s3://puma-test/absent does not exist"):
        run_evaluate(EvaluateConfig(data=f"s3://{BUCKET}/absent", model=str(tmp_path), prompts=str(tmp_path),
                                    out=str(tmp_path / "e")))
    assert not (tmp_path / "e").exists()


def test_a_node_sees_the_staging_directory_only_where_the_token_file_holds_the_token(tmp_path, ray_local):
    probe = tmp_path / "probe"
    assert not storage.sees_token(str(probe), "t1")  # absent
    probe.write_text("t2")
    assert not storage.sees_token(str(probe), "t1") and storage.sees_token(str(probe), "t2")
    import ray

    nodes = storage.ray_nodes()  # the session's one-node local Ray: its task sees this process's directory
    assert len(nodes) == 1 and storage.nodes_not_seeing(tmp_path / "staging", nodes) == []
    assert ray.is_initialized() and not (tmp_path / "staging" / "probes").exists()  # the token file is removed
    (tmp_path / "file").write_text("")
    with pytest.raises(PumaError, match=r"staging directory .*/file \(PUMA_OUT_STAGING\): cannot write there"):
        storage.nodes_not_seeing(tmp_path / "file", nodes)


def chain(data, model, src, out, **kw):
    """select -> adapter -> migrate -> evaluate, every path built by `out(name)`; the summaries."""
    sel = run_select(SelectConfig(data=data, prompts=src, out=out("sel"), budget=30, clusters=3, min_per_cluster=2,
                                  kmeans_passes=1))
    ad = run_adapter(AdapterStageConfig(data=data, source=[src], target_model=model, users=out("sel"),
                                        out=out("adapter"), workers=2, epochs=1, min_steps=0, width=32, lr=3e-3))
    mig = run_migrate(MigrateConfig(adapter=out("adapter"), source=[src], out=out("target")))
    ev = run_evaluate(EvaluateConfig(data=data, model=model, prompts=out("target"), out=out("eval")))
    return sel, ad, mig, ev


def test_a_chain_on_s3_gives_the_results_of_plain_paths(s3, workspace, tmp_path):
    """The workspace's dataset, target model and source store uploaded to S3; select, adapter, migrate and
    evaluate read and write only s3:// URIs; every figure equals the same chain's on plain paths. A rerun of
    migrate finds its output complete (the remote output was seen) and uploads nothing."""
    root = workspace
    remote = {name: put_tree(s3, root / name, f"{BUCKET}/ws/{name}") for name in ("data", "qwen2", "src")}
    plain = chain(str(root / "data"), str(root / "qwen2"), str(root / "src"), lambda n: str(tmp_path / n))
    on_s3 = chain(remote["data"], remote["qwen2"], remote["src"], lambda n: f"s3://{BUCKET}/runs/{n}")
    assert on_s3[0]["selected"] == plain[0]["selected"] == 30
    assert on_s3[1]["valid_rmse"] == pytest.approx(plain[1]["valid_rmse"], abs=1e-6)
    assert on_s3[2]["users"] == plain[2]["users"] == 120
    assert on_s3[3]["rmse"] == pytest.approx(plain[3]["rmse"], abs=1e-6) and on_s3[3]["out"] == f"s3://{BUCKET}/runs/eval"
    metrics = json.loads(s3.open_input_stream(f"{BUCKET}/runs/eval/metrics.json").read())
    assert metrics["rmse"] == pytest.approx(plain[3]["rmse"], abs=1e-6)
    config = s3.open_input_stream(f"{BUCKET}/runs/eval/config.yaml").read().decode()
    assert f"s3://{BUCKET}/runs/target" in config and str(storage.cache_root()) not in config
    assert s3.get_file_info(f"{BUCKET}/runs/target/manifest.json").type == pafs.FileType.File
    stamp = s3.get_file_info(f"{BUCKET}/runs/target/manifest.json").mtime_ns
    again = run_migrate(MigrateConfig(adapter=f"s3://{BUCKET}/runs/adapter", source=[remote["src"]],
                                      out=f"s3://{BUCKET}/runs/target"))
    assert again["already_complete"] and s3.get_file_info(f"{BUCKET}/runs/target/manifest.json").mtime_ns == stamp
    assert not list((storage.cache_root() / "outputs").iterdir())  # build directories removed


def test_the_cli_joined_to_a_cluster_writes_and_replaces_a_dataset_on_s3(s3, ray_local):
    """`puma-ray data --out s3://...` as a client of a running Ray (RAY_ADDRESS, as a job has): the JSON summary
    names the URI, the remote manifest is there; a rerun with other flags replaces the dataset whole."""
    import subprocess

    from conftest import cli_in_ray

    uri = f"s3://{BUCKET}/cli/data"
    for users in (30, 40):
        argv, env = cli_in_ray(["data", "--source", "synthetic", "--out", uri, f"users={users}", "items=20"])
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["out"] == uri and summary["users"] == users
        manifest = json.loads(s3.open_input_stream(f"{BUCKET}/cli/data/manifest.json").read())
        assert manifest["users"] == users
    assert storage.listing(s3, f"{BUCKET}/cli/data.partial") == []
