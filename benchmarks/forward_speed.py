# .venv/bin/python benchmarks/forward_speed.py [--model DIR ...] [--batch 32] [--steps 30] [--dtype float32 bfloat16]
#     [--reference-code] [--threads 2] [--device cuda] [--random-weights]
"""Training-step throughput: fast answer path vs the reference-style path (a benchmark, not a test).

One step = forward + rating loss + backward into the soft prompts + AdamW step, batch 32,
same model, same batch. Reference style = prompt + appended answer token through the
full model, full-vocabulary logits at every position (what the paper's code does).
Fast = final hidden state at the answer position only, projected on the 5 answer rows,
with and without the prefix key/value cache. Prints samples/s and the ratios, one JSON
line per model and dtype. Default models: a tiny llama whose tokenizer is trained on the synthetic
titles (vocabulary ~900: per-op overhead dominates, the honest worst case) and, when the
MIND sample is in ../shared/data, the same architecture with an 8,192-token vocabulary
trained on its news text (closer to real LLMs, whose 32k-256k vocabularies make the
reference path's full-vocabulary logits the dominant cost).

--dtype runs the fast path with the frozen model in each dtype (bfloat16 uses the CPU's AMX
units where it has them) and reports its achieved FLOP/s (4 x non-embedding parameters x
real tokens after the cached prefix: forward plus activation gradients, no weight gradients) against this machine's
matmul rate for that dtype, measured in the same run. --reference-code also runs the paper
authors' own training step (../shared/bench/ref_step_bench.py, float32, same batch and
threads) in the same run and reports fast / reference-code.

--device cuda runs everything on the GPU (the reference code through benchmarks/reference_step.py,
which runs the authors' model the way their code runs on a GPU: float16 weights). --random-weights
builds each --model from its config.json (seed 0) instead of loading weights: speed does not depend
on the weights, so a directory with only config and tokenizer times a real architecture and vocabulary.
Each row also reports the fast path's largest |difference| from the full forward in that dtype.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import ModelsConfig  # noqa: E402
from puma_ray.core.llm import FrozenLM  # noqa: E402
from puma_ray.core.modules import RatingHead, SoftPromptTable, sparse_adam  # noqa: E402
from puma_ray.core.templates import RATING_ANSWERS, load_template_text  # noqa: E402
from puma_ray.data.synthetic import make_catalogue  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402


SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
NEWS = SHARED / "data" / "mind-small-sample" / "news.tsv"
REFERENCE_BENCH = SHARED / "bench" / "ref_step_bench.py"
REFERENCE_ON_DEVICE = Path(__file__).resolve().parent / "reference_step.py"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def default_models(family: str, workdir: Path) -> list[Path]:
    titles = workdir / "titles.txt"
    titles.write_text("\n".join(make_catalogue(0, 400, 8, 8).titles))
    models = [workdir / "small-vocab"]
    run_models(ModelsConfig(family=family, text=str(titles), out=str(models[0])))
    if NEWS.is_file():
        news = workdir / "news.txt"
        news.write_text("\n".join(" ".join(line.split("\t")[3:5]) for line in NEWS.read_text().splitlines()))
        models.append(workdir / "vocab-8192")
        run_models(ModelsConfig(family=family, text=str(news), out=str(models[1]), vocab_size=8192))
    return models


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(lm: FrozenLM, path: str, titles: list[str], batch: int, steps: int,
                     device: torch.device) -> tuple[float, int]:
    """(samples/s, real tokens per step on average) of `steps` timed steps after 3 warm-up steps."""
    torch.manual_seed(0)
    table = SoftPromptTable(1000, 1, lm.hidden, generator=torch.Generator().manual_seed(0)).to(device)
    head = RatingHead().to(device)
    opts = [sparse_adam(table, 5e-4), torch.optim.AdamW(head.parameters(), lr=5e-4)]
    g = torch.Generator().manual_seed(1)
    tokens = []

    def step() -> None:
        users = torch.randint(0, 1000, (batch,), generator=g)
        b = lm.encode([titles[i % len(titles)] for i in users.tolist()])
        tokens.append(int(b.lengths.sum()))  # computed per step: the cached prefix is not
        soft = table(users.to(device))
        logits = lm.answer_logits(soft, b) if path == "fast" else lm.reference_logits(soft, b)
        loss, _ = head.loss(logits, torch.randint(1, 6, (batch,), generator=g).float().to(device))
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()

    for _ in range(3):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch * steps / (time.perf_counter() - t0), round(sum(tokens[3:]) / steps)


def fast_path_error(lm: FrozenLM, titles: list[str], device: torch.device) -> float:
    """Largest |fast-path logit - full-forward logit| over 8 samples (same dtype, same device)."""
    soft = torch.empty(8, 1, lm.hidden).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(2)).to(device)
    b = lm.encode(titles[:8])
    with torch.no_grad():
        return float((lm.answer_logits(soft, b) - lm.reference_logits(soft, b, append_answer=False)).abs().max())


def matmul_rate(dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """This machine's measured FLOP/s of an n x n matmul in `dtype` (current thread count on CPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            done += 1
        synchronize(device)
    return 2 * n ** 3 * done / (time.perf_counter() - t0)


def reference_code(model: Path, batch: int, steps: int, threads: int, device: torch.device,
                   ref: str | None) -> float | None:
    """samples/s of the paper authors' training step on `model` (None when their code is not beside us).
    CPU: ../shared/bench/ref_step_bench.py, the anchor; other devices: benchmarks/reference_step.py."""
    if device.type == "cpu" and ref is None:
        if not REFERENCE_BENCH.is_file():
            return None
        cmd = [sys.executable, str(REFERENCE_BENCH), "--model", str(model)]
    else:
        cmd = [sys.executable, str(REFERENCE_ON_DEVICE), "--model", str(model), "--device", device.type]
        cmd += ["--ref", ref] if ref else []
    out = subprocess.run(cmd + ["--batch", str(batch), "--steps", str(steps), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]


def load_model(path: Path, dtype: torch.dtype, random_weights: bool, device: torch.device):
    """The model at `path` in `dtype` on `device`; from its config.json alone (seed 0) with random_weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not random_weights:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", help="a Hugging Face model directory (repeatable); "
                    "default: tiny models built here")
    ap.add_argument("--family", default="llama")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32"],
                    help="dtype(s) of the frozen model for the fast path (the reference-style path runs in float32)")
    ap.add_argument("--reference-code", action="store_true",
                    help="also time the paper authors' training step in this run (../shared/bench/ref_step_bench.py)")
    ap.add_argument("--skip-reference-style", action="store_true",
                    help="do not time our reference-style path (slow on deep models)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--random-weights", action="store_true",
                    help="build each --model from its config.json with random weights (speed does not depend on them)")
    ap.add_argument("--ref", help="the reference checkout for --reference-code (default ../shared/reference/...)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from transformers import AutoTokenizer

    rates = {d: matmul_rate(DTYPES[d], device) for d in args.dtype}
    titles = list(make_catalogue(0, 400, 8, 8).titles)
    with tempfile.TemporaryDirectory() as tmp:
        for path in [Path(m) for m in args.model] if args.model else default_models(args.family, Path(tmp)):
            tok = AutoTokenizer.from_pretrained(path)
            text = load_template_text("rating_amazon")
            row = {"model": path.name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "batch": args.batch, "threads": args.threads, "random_weights": args.random_weights}
            ref_dir = path
            if args.reference_code and args.random_weights:  # their code loads weights: save the random ones
                ref_dir = Path(tmp) / f"{path.name}-random"
                load_model(path, torch.float32, True, torch.device("cpu")).save_pretrained(ref_dir)
                tok.save_pretrained(ref_dir)
            try:
                ref_code = (reference_code(ref_dir, args.batch, args.steps, args.threads, device, args.ref)
                            if args.reference_code else None)
            except subprocess.CalledProcessError as e:  # their code failed here: say so, time ours anyway
                ref_code, row["reference_code_error"] = None, e.stderr.strip().splitlines()[-1][:300]
            if ref_code is not None:
                row["reference_code_samples_per_s"] = ref_code
            for name in args.dtype:
                model = load_model(path, DTYPES[name], args.random_weights, device)
                body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
                cached = FrozenLM(model, tok, text, RATING_ANSWERS, prefix_cache=True)
                plain = FrozenLM(model, tok, text, RATING_ANSWERS, prefix_cache=False)
                fast, tokens = steps_per_second(cached, "fast", titles, args.batch, args.steps, device)
                flops = 4.0 * body * tokens * fast / args.batch
                out = {**row, "dtype": name, "family": model.config.model_type, "hidden": model.config.hidden_size,
                       "layers": model.config.num_hidden_layers, "vocab": model.config.vocab_size,
                       "fast_samples_per_s": round(fast, 1), "tokens_per_sample": round(tokens / args.batch, 1),
                       "achieved_gflops": round(flops / 1e9, 1), "matmul_gflops": round(rates[name] / 1e9, 1),
                       "fraction_of_matmul_rate": round(flops / rates[name], 3),
                       "fast_vs_full_max_abs_diff": fast_path_error(cached, titles, device)}
                if not args.skip_reference_style:
                    ref, _ = steps_per_second(plain, "reference", titles, args.batch, args.steps, device)
                    fast_plain, _ = steps_per_second(plain, "fast", titles, args.batch, args.steps, device)
                    out.update({"reference_samples_per_s": round(ref, 1),
                                "fast_no_cache_samples_per_s": round(fast_plain, 1),
                                "speedup_fast_vs_reference": round(fast / ref, 2),
                                "speedup_prefix_cache": round(fast / fast_plain, 2)})
                if ref_code is not None:
                    out["speedup_vs_reference_code"] = round(fast / ref_code, 2)
                print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
