"""The CLI frame: help, one-line errors with non-zero exit, a final JSON summary line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from puma_ray.cli import COMMANDS, build_parser


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "puma_ray.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_only_working_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    for name in ("data", "models", "demo"):
        assert name in res.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:  # what `puma-ray NAME --help` runs, in-process
        build_parser().parse_args([name, "--help"])
    assert exit_.value.code == 0 and "--config FILE.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["models", "--out", "o", "--text", "t", "colour=blue"], "unknown key 'colour'"),
    (["models", "--out", "o", "--text", "t", "--layers", "two"], "layers: got 'two'"),
    (["models", "--family", "mistral", "--out", "o", "--text", "t"], "family: got 'mistral'"),
    (["data", "--source", "movielens", "--out", "o"], "input"),
    (["data", "--bogus-flag", "1"], "unrecognized arguments"),
    (["models", "--config", "/nonexistent.yaml"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(args, needle):
    res = run_cli(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and needle in summary["error"]


def test_runtime_failure_exits_1_with_json(tmp_path):
    res = run_cli("models", "--out", str(tmp_path / "m"), "--text", str(tmp_path / "missing.txt"))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "no such file" in json.loads(res.stdout.strip().splitlines()[-1])["error"]


def test_models_cli_ends_with_json_summary(tmp_path, text_file):
    res = run_cli("models", "--family", "qwen2", "--text", str(text_file), "--out", str(tmp_path / "m"), "hidden=32")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["hidden_size"] == 32 and summary["family"] == "qwen2"
    assert (tmp_path / "m" / "costs.jsonl").is_file() and (tmp_path / "m" / "config.yaml").is_file()


def damaged_class():
    """A class whose constructor raises an actionable error of ours, defined in a function so that Ray ships it
    to its workers by value (the tests folder is not importable there)."""
    class Damaged:
        def __init__(self, *_):
            from puma_ray.errors import PumaError

            raise PumaError("shard part-00003.parquet is damaged; re-create it")

        def __call__(self, batch):
            return batch

    return Damaged


def fail_in_a_task():
    import ray

    def task():
        from puma_ray.errors import PumaError

        raise PumaError("shard part-00003.parquet is damaged; re-create it")

    ray.get(ray.remote(max_retries=0)(task).remote())


def fail_in_an_actor_constructor():
    import ray

    actor = ray.remote(max_restarts=0)(damaged_class()).options(num_cpus=0.25).remote()
    ray.get(actor.__call__.remote({}))


def fail_in_a_ray_data_actor():
    import ray

    from puma_ray.runtime.ray_utils import actor_pool

    ray.data.range(4).map_batches(damaged_class(), compute=actor_pool(1), num_cpus=0.25).materialize()


@pytest.mark.ray
@pytest.mark.parametrize("where", [fail_in_a_task, fail_in_an_actor_constructor, fail_in_a_ray_data_actor])
def test_a_failure_inside_a_ray_worker_is_one_line_with_the_workers_own_error(ray_local, monkeypatch, capsys, where):
    """Ray wraps a worker's exception (RayTaskError, ActorDiedError, Ray Data's UserCodeException); the CLI
    reports the worker's own error line and where its logs are, exit 1, no traceback from the driver."""
    import puma_ray.cli as cli

    monkeypatch.setattr(cli, "resolve", lambda name: lambda cfg: where())
    with pytest.raises(SystemExit) as code:
        cli.main(["select", "--data", "d", "--prompts", "p", "--out", "o", "--budget", "3"])
    out, err = capsys.readouterr()
    assert code.value.code == 1
    # the driver prints no traceback (Ray still streams the worker's own output, each line tagged "(Worker pid=N)")
    assert not [ln for ln in err.splitlines() if "Traceback" in ln and "pid=" not in ln], err
    line = json.loads(out.strip().splitlines()[-1])["error"]
    assert "\n" not in line and line.startswith("in a Ray worker: PumaError: shard part-00003.parquet is damaged")
    assert "worker logs:" in line


def test_a_bug_outside_ray_keeps_its_traceback(monkeypatch, capsys):
    import puma_ray.cli as cli

    def bug(cfg):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "resolve", lambda name: bug)
    with pytest.raises(SystemExit):
        cli.main(["select", "--data", "d", "--prompts", "p", "--out", "o", "--budget", "3"])
    assert "Traceback" in capsys.readouterr().err
