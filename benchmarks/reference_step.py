# .venv/bin/python benchmarks/reference_step.py --model DIR [--device cuda] [--batch 32] [--steps 20]
#     [--ref ../shared/reference/dont-start-over]
"""The paper authors' adapter-training step timed on any device (a benchmark, not a test).

../shared/bench/ref_step_bench.py is the CPU anchor: it forces float32 weights and the CPU.
On a GPU the authors' code runs differently, so this times it the way it runs there: their
AdapterModelRP loads the LLM in float16 itself (their choice, kept), the whole module moves
to the device, a batch is their sample dict (UserID, ItemTitle, Rating), the loss is their
0.8 MSE + 0.2 CE, AdamW over their trainable parameters. Their code is imported from --ref
and run, not copied; the one shim is the `SoftPromptDataset` name their model module imports
and their checkout lacks (ref_step_bench.py needs the same). On CPU it forces float32 like
the anchor. Prints one JSON line: step_s and samples_per_s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REF = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "dont-start-over"
TITLES = ["The Quiet Harbor", "Midnight Express Returns", "A Tale of Two Gardens", "Blue Mountain Diaries",
          "Secrets of the Old Mill", "Starlight Over Kansas", "The Last Lighthouse Keeper", "Winter in Lisbon"]


def reference_model(ref: Path, model: str, device: torch.device, src_dim: int):
    """Their AdapterModelRP on `model`, on `device` (float32 weights on CPU, their float16 elsewhere)."""
    sys.path.insert(0, str(ref))
    import utils.datasets as their_datasets

    if not hasattr(their_datasets, "SoftPromptDataset"):
        their_datasets.SoftPromptDataset = type("SoftPromptDataset", (), {})
    import transformers
    import utils.model as their_model

    if device.type == "cpu":
        load = transformers.AutoModelForCausalLM.from_pretrained
        their_model.AutoModelForCausalLM = type("Float32Loader", (), {"from_pretrained": staticmethod(
            lambda *a, **k: load(*a, **{**k, "torch_dtype": torch.float32}))})
    m = their_model.AdapterModelRP(llm_model=model, prompt_path=str(ref / "prompts" / "amazon_title.txt"), nuser=1000,
                                   nitem=10, max_txt_len=256, adapter_input_dim=src_dim, adapter_dropout=0.1)
    return m.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a Hugging Face causal-LM directory")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--src-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref", default=str(REF), help="the reference checkout (utils/ and prompts/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = reference_model(Path(args.ref), args.model, device, args.src_dim)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        users = torch.randint(0, 1000, (args.batch,), generator=g)
        ratings = torch.randint(1, 6, (args.batch,), generator=g)
        out = model({"UserID": users.to(device), "ItemTitle": [TITLES[i % len(TITLES)] for i in users.tolist()],
                     "Rating": ratings.to(device)})
        loss = 0.8 * out["mse_loss"] + 0.2 * out["ce_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    print(json.dumps({"impl": "reference", "model": args.model, "device": device.type, "batch": args.batch,
                      "llm_dtype": str(model.llm_model.dtype).removeprefix("torch."), "step_s": round(dt, 4),
                      "samples_per_s": round(args.batch / dt, 1)}))


if __name__ == "__main__":
    main()
