# .venv/bin/python benchmarks/prompt_scaling.py --users 1000 100000 [--dim 2048] [--batch 32]
"""Prompt-training step time vs the number of users a rank owns (a benchmark, not a test).

One process, one tiny llama (built here from a few lines of text), the real training step of
`puma-ray prompts`: encode a batch, answer logits through the frozen model with the batch's soft
prompts, rating loss, backward, then the table's optimizer step and the head's. The table has
`users` rows of `dim` floats; the batch (same size for every table) draws random rows. With the
row-sparse table (SparseAdam) a step touches only the batch's rows, so its time should not grow
with the table; the dense AdamW step it replaced is measured too. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import ModelsConfig  # noqa: E402
from puma_ray.core.hf import load_causal_lm, load_tokenizer  # noqa: E402
from puma_ray.core.llm import FrozenLM  # noqa: E402
from puma_ray.core.modules import RatingHead, SoftPromptTable, sparse_adam  # noqa: E402
from puma_ray.core.templates import RATING_ANSWERS, load_template_text  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402

TITLES = [f"The Crimson Harbor {i}" for i in range(50)]


def step_times(lm: FrozenLM, users: int, dim: int, batch: int, steps: int, sparse: bool) -> list[float]:
    torch.manual_seed(0)
    table = SoftPromptTable(users, 1, dim, generator=torch.Generator().manual_seed(0))
    head = RatingHead()
    table_opt = sparse_adam(table, 5e-4) if sparse else torch.optim.AdamW([table.weight], lr=5e-4, weight_decay=0.0)
    if not sparse:  # the dense path this replaced: a dense lookup, so a dense table-sized gradient
        table.forward = lambda rows: table.weight[rows].view(-1, 1, dim)
    head_opt = torch.optim.AdamW(head.parameters(), lr=5e-4)
    g = torch.Generator().manual_seed(1)
    enc = lm.encode([TITLES[i % len(TITLES)] for i in range(batch)])
    out = []
    for k in range(steps + 3):
        t0 = time.perf_counter()
        rows = torch.randint(0, users, (batch,), generator=g)
        logits = lm.answer_logits(table(rows), enc)
        loss, _ = head.loss(logits, torch.randint(1, 6, (batch,), generator=g).float())
        table_opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        loss.backward()
        table_opt.step()
        head_opt.step()
        if k >= 3:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, nargs=2, default=[1000, 100_000])
    ap.add_argument("--dim", type=int, default=2048, help="prompt width (the tiny model's hidden size is projected)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "t.txt"
        text.write_text("\n".join(TITLES))
        run_models(ModelsConfig(family="llama", text=str(text), out=f"{tmp}/m", hidden=args.dim, heads=16, layers=2,
                                intermediate=2 * args.dim))
        lm = FrozenLM(load_causal_lm(f"{tmp}/m"), load_tokenizer(f"{tmp}/m"), load_template_text("rating_amazon"),
                      RATING_ANSWERS)
        res = {}
        for sparse in (True, False):
            for n in args.users:
                res[(sparse, n)] = statistics.median(step_times(lm, n, args.dim, args.batch, args.steps, sparse))
    small, large = args.users
    print(json.dumps({"users": args.users, "dim": args.dim, "batch": args.batch,
                      "sparse_step_s": {str(n): round(res[(True, n)], 4) for n in args.users},
                      "dense_step_s": {str(n): round(res[(False, n)], 4) for n in args.users},
                      "step_time_ratio": round(res[(True, large)] / res[(True, small)], 3),
                      "dense_step_time_ratio": round(res[(False, large)] / res[(False, small)], 3)}))


if __name__ == "__main__":
    main()
