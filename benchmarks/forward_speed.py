# .venv/bin/python benchmarks/forward_speed.py [--model DIR ...] [--batch 32] [--steps 30]
"""Training-step throughput: fast answer path vs the reference-style path (a benchmark, not a test).

One step = forward + rating loss + backward into the soft prompts + AdamW step, batch 32,
same model, same batch. Reference style = prompt + appended answer token through the
full model, full-vocabulary logits at every position (what the paper's code does).
Fast = final hidden state at the answer position only, projected on the 5 answer rows,
with and without the prefix key/value cache. Prints samples/s and the ratios, one JSON
line per model. Default models: a tiny llama whose tokenizer is trained on the synthetic
titles (vocabulary ~900: per-op overhead dominates, the honest worst case) and, when the
MIND sample is in ../shared/data, the same architecture with an 8,192-token vocabulary
trained on its news text (closer to real LLMs, whose 32k-256k vocabularies make the
reference path's full-vocabulary logits the dominant cost).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import ModelsConfig  # noqa: E402
from puma_ray.data.synthetic import make_catalogue  # noqa: E402
from puma_ray.llm import FrozenLM  # noqa: E402
from puma_ray.modules import RatingHead, SoftPromptTable, sparse_adam  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402
from puma_ray.templates import RATING_ANSWERS, load_template_text  # noqa: E402


NEWS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mind-small-sample" / "news.tsv"


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


def steps_per_second(lm: FrozenLM, path: str, titles: list[str], batch: int, steps: int) -> float:
    torch.manual_seed(0)
    table = SoftPromptTable(1000, 1, lm.hidden, generator=torch.Generator().manual_seed(0))
    head = RatingHead()
    opts = [sparse_adam(table, 5e-4), torch.optim.AdamW(head.parameters(), lr=5e-4)]
    g = torch.Generator().manual_seed(1)

    def step() -> None:
        users = torch.randint(0, 1000, (batch,), generator=g)
        b = lm.encode([titles[i % len(titles)] for i in users.tolist()])
        soft = table(users)
        logits = lm.answer_logits(soft, b) if path == "fast" else lm.reference_logits(soft, b)
        loss, _ = head.loss(logits, torch.randint(1, 6, (batch,), generator=g).float())
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", help="a Hugging Face model directory (repeatable); "
                    "default: tiny models built here")
    ap.add_argument("--family", default="llama")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    titles = list(make_catalogue(0, 400, 8, 8).titles)
    with tempfile.TemporaryDirectory() as tmp:
        for path in [Path(m) for m in args.model] if args.model else default_models(args.family, Path(tmp)):
            model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
            text = load_template_text("rating_amazon")
            cached = FrozenLM(model, tok, text, RATING_ANSWERS, prefix_cache=True)
            plain = FrozenLM(model, tok, text, RATING_ANSWERS, prefix_cache=False)
            ref = steps_per_second(plain, "reference", titles, args.batch, args.steps)
            fast_plain = steps_per_second(plain, "fast", titles, args.batch, args.steps)
            fast = steps_per_second(cached, "fast", titles, args.batch, args.steps)
            print(json.dumps({"model": path.name, "family": model.config.model_type,
                              "hidden": model.config.hidden_size, "vocab": model.config.vocab_size,
                              "batch": args.batch, "reference_samples_per_s": round(ref, 1),
                              "fast_no_cache_samples_per_s": round(fast_plain, 1),
                              "fast_samples_per_s": round(fast, 1), "speedup_fast_vs_reference": round(fast / ref, 2),
                              "speedup_prefix_cache": round(fast / fast_plain, 2)}), flush=True)

if __name__ == "__main__":
    main()
