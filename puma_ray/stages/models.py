"""`puma-ray models`: build a tiny Hugging Face causal LM of a real family, offline.

config -> texts -> tokenizer -> model -> save -> report. Cached by content: a
directory already holding a model built from the same inputs is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import torch

from puma_ray import __version__
from puma_ray.config import ModelsConfig
from puma_ray.data.schema import iter_item_texts
from puma_ray.errors import PumaError
from puma_ray.hf import load_causal_lm, load_tokenizer, model_fingerprint
from puma_ray.pretrain import pretrain
from puma_ray.runs import CostMeter, log, open_run
from puma_ray.tiny_models import FAMILIES, build_config, build_model
from puma_ray.tokenizer import check_answers_single_token, train_tokenizer

MARKER = "puma_model.json"


def _texts(cfg: ModelsConfig) -> Iterator[str]:
    if cfg.data is not None:
        yield from iter_item_texts(cfg.data)
    if cfg.text is not None:
        path = Path(cfg.text)
        if not path.is_file():
            raise PumaError(f"--text {path}: no such file")
        with path.open(encoding="utf-8", errors="replace") as fh:
            yield from (line.rstrip("\n") for line in fh if line.strip())


def content_key(cfg: ModelsConfig) -> str:
    """Digest of everything the built model depends on (inputs, sizes, seed, package version)."""
    h = hashlib.sha256()
    sizes = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "data", "text", "overwrite")}
    h.update(json.dumps({"sizes": sizes, "version": __version__}, sort_keys=True).encode())
    for text in _texts(cfg):
        h.update(text.encode("utf-8", errors="replace") + b"\0")
    return h.hexdigest()


def run_models(cfg: ModelsConfig) -> dict:
    """Build (or reuse) the model directory `cfg.out`; returns the JSON summary."""
    out = Path(cfg.out)
    key = content_key(cfg)
    marker = out / MARKER
    if marker.is_file():
        existing = json.loads(marker.read_text())
        if existing.get("content_key") == key:
            log.info("models: %s already holds this model (content key %s); reusing it", out, key[:12])
            return {**existing, "path": str(out), "cached": True}
        if not cfg.overwrite:
            raise PumaError(f"{out} holds a model built from other inputs; pass overwrite=true or another --out")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise PumaError(f"{out} exists and is not a puma-ray model directory; pass overwrite=true or another --out")

    spec = FAMILIES[cfg.family]
    open_run(out, "models", cfg)
    with CostMeter(out, "models", cfg) as meter:
        log.info("models: training a %d-token BPE tokenizer for %s", cfg.vocab_size, cfg.family)
        tokenizer = train_tokenizer(_texts(cfg), cfg.vocab_size, add_bos=spec.add_bos, bos_is_eos=spec.bos_is_eos,
                                    padding_side=spec.padding_side)
        model_cfg = build_config(cfg.family, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                                 kv_heads=cfg.kv_heads, intermediate=cfg.intermediate,
                                 vocab_size=len(tokenizer), max_positions=cfg.max_positions, tokenizer=tokenizer)
        # Everything below uses the tokenizer as a user of the directory will load it: the
        # family's own tokenizer class may split text differently from the trained object.
        # AutoTokenizer picks that class from config.json, so the config is written first.
        model_cfg.save_pretrained(out)
        tokenizer.save_pretrained(out)
        reloaded = load_tokenizer(str(out))
        space_answers = check_answers_single_token(reloaded)
        model = build_model(model_cfg, cfg.seed)
        n_params = sum(p.numel() for p in model.parameters())
        steps = cfg.resolved_pretrain_steps
        pretrained = {}
        if steps:
            log.info("models: pretraining %d steps on catalogue sentences from %s", steps, cfg.data)
            torch.manual_seed(cfg.seed)
            pretrained = pretrain(model, reloaded, cfg.data, steps, cfg.pretrain_batch, cfg.pretrain_lr, cfg.seed,
                                  cfg.template)
            log.info("models: pretraining loss %.3f -> %.3f", pretrained["loss_first"], pretrained["loss_last"])
            meter.samples, meter.tokens = steps * cfg.pretrain_batch, pretrained["tokens"]
            meter.flops = 6.0 * n_params * pretrained["tokens"]
        log.info("models: %s hidden=%d layers=%d params=%d; saving to %s", cfg.family, model_cfg.hidden_size,
                 cfg.layers, n_params, out)
        model.save_pretrained(out)
        fingerprint = model_fingerprint(load_causal_lm(str(out)), reloaded)
    summary = {"path": str(out), "family": cfg.family, "model_type": model_cfg.model_type,
               "hidden_size": model_cfg.hidden_size, "layers": cfg.layers, "vocab_size": len(tokenizer),
               "parameters": n_params, "tokenizer_class": type(reloaded).__name__,
               "space_answers_single_token": space_answers, "pretrain_steps": steps,
               "pretrain": pretrained, "fingerprint": fingerprint, "content_key": key, "cached": False}
    marker.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
