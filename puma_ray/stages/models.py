"""`puma-ray models`: build a tiny Hugging Face causal LM of a real family, offline, or import a
real pretrained LLM from a GGUF file.

Tiny: config -> texts -> tokenizer -> model -> save -> report.
Imported (--gguf FILE, --package NAME): config -> the file (a package's chunks joined and its
sha256 checked) -> dequantized model + the file's own tokenizer -> saved beside --out ->
smoke test (the saved directory reproduces the file's logits and generates) -> answer tokens
of every shipped template -> swapped into --out -> report.
Both are cached by content: a directory already holding a model made from the same inputs is
reused as is.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Iterator

import torch

from puma_ray import __version__
from puma_ray.config import ModelsConfig
from puma_ray.core.gguf_models import PACKAGES, load_gguf, package_gguf, smoke_test
from puma_ray.core.hf import load_causal_lm, load_tokenizer, model_fingerprint
from puma_ray.core.pretrain import pretrain
from puma_ray.core.tasks import TASKS
from puma_ray.core.templates import encode_template, load_template_text
from puma_ray.core.tiny_models import FAMILIES, build_config, build_model
from puma_ray.core.tokenizer import check_answers_single_token, train_tokenizer
from puma_ray.data.schema import file_sha256, iter_item_texts, read_required_json
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.errors import PumaError
from puma_ray.runtime.runs import CostMeter, build_beside, check_out, log, open_run, swap_in
from puma_ray.runtime.storage import remote_paths

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
    # pretraining reads the dataset's train labels, not only its item texts
    data = read_data_manifest(cfg.data)["fingerprint"] if cfg.data is not None else None
    h.update(json.dumps({"sizes": sizes, "version": __version__, "data": data}, sort_keys=True).encode())
    for text in _texts(cfg):
        h.update(text.encode("utf-8", errors="replace") + b"\0")
    return h.hexdigest()


def reusable(out: Path, key: str, overwrite: bool) -> dict | None:
    """The summary of the model already in `out` when it was made from the same inputs; None when `out`
    may be (re)written; a PumaError when it holds another model and `overwrite` is not given, or anything
    that is not a model (overwrite=true replaces only a model)."""
    check_out(out, "model")
    marker = out / MARKER
    if marker.is_file():
        existing = read_required_json(marker, f"{marker} is missing")
        if existing.get("content_key") == key:
            log.info("models: %s already holds this model (content key %s); reusing it", out, key[:12])
            return {**existing, "path": str(out), "cached": True}
        if not overwrite:
            raise PumaError(f"--out {out} holds a model built from other inputs; nothing was changed (pass "
                            "overwrite=true to replace it, or give another --out)")
    return None


@remote_paths
def run_models(cfg: ModelsConfig) -> dict:
    """Build, import (or reuse) the model directory `cfg.out`; returns the JSON summary."""
    check_out(cfg.out, "model")  # first: an --out holding another kind of output is refused untouched
    if cfg.gguf is not None or cfg.package is not None:
        return import_model(cfg)
    out = Path(cfg.out)
    key = content_key(cfg)
    cached = reusable(out, key, cfg.overwrite)
    if cached is not None:
        return cached
    # built beside, swapped in when complete: another model there (overwrite=true) is replaced only then
    final, summary = build_beside(out, "models", cfg, lambda work: build_tiny_model(cfg, key, work, out))
    return {**summary, "path": str(final)}


def build_tiny_model(cfg: ModelsConfig, key: str, out: Path, final: Path) -> dict:
    """A tiny model of cfg.family (tokenizer trained on the catalogue, optionally pretrained) saved in `out`,
    the directory that becomes `final`."""
    spec = FAMILIES[cfg.family]
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
        steps = cfg.resolved_pretrain_steps(read_data_manifest(cfg.data)["splits"]["train"]["rows"] if cfg.data else 0)
        pretrained = {}
        if steps:
            log.info("models: pretraining %d steps on the train interactions of %s (user slots learned, then dropped)", steps, cfg.data)
            torch.manual_seed(cfg.seed)
            pretrained = pretrain(model, reloaded, cfg.data, steps, cfg.pretrain_batch, cfg.pretrain_lr, cfg.seed,
                                  cfg.template, user_lr=cfg.pretrain_user_lr, slot_dropout=cfg.pretrain_slot_dropout,
                                  slot_bound=cfg.pretrain_slot_bound)
            log.info("models: pretraining loss %.3f -> %.3f", pretrained["loss_first"], pretrained["loss_last"])
            meter.samples, meter.tokens = steps * cfg.pretrain_batch, pretrained["tokens"]
            meter.flops = 6.0 * n_params * pretrained["tokens"]
        log.info("models: %s hidden=%d layers=%d params=%d; saving to %s", cfg.family, model_cfg.hidden_size,
                 cfg.layers, n_params, out)
        model.save_pretrained(out)
        fingerprint = model_fingerprint(load_causal_lm(str(out)), reloaded)
    summary = {"path": str(final), "family": cfg.family, "model_type": model_cfg.model_type,
               "hidden_size": model_cfg.hidden_size, "layers": cfg.layers, "vocab_size": len(tokenizer),
               "parameters": n_params, "tokenizer_class": type(reloaded).__name__,
               "space_answers_single_token": space_answers, "pretrain_steps": steps,
               "pretrain": pretrained, "fingerprint": fingerprint, "content_key": key, "cached": False}
    (out / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def template_answers(tokenizer, max_length: int) -> dict[str, list[str] | str]:
    """Each shipped template's answer tokens on this tokenizer (or why they do not resolve)."""
    found = {}
    for task in TASKS.values():
        for name in sorted(p.name[:-4] for p in (resources.files("puma_ray.core") / "templates").iterdir()
                           if p.name.startswith(f"{task.name}_") and p.name.endswith(".txt")):
            try:
                t = encode_template(tokenizer, load_template_text(name), task.answers, max_length)
                found[name] = tokenizer.convert_ids_to_tokens(t.answer_ids)
            except PumaError as exc:
                found[name] = f"unresolved: {exc}"
    return found


def gguf_source(cfg: ModelsConfig, workdir: Path) -> tuple[Path, dict]:
    """The GGUF file to import (a package's file, its chunks joined under `workdir`) and where it came from."""
    if cfg.package is not None:
        path = package_gguf(cfg.package, workdir)
        return path, {"package": cfg.package, "pip": list(PACKAGES[cfg.package].pip),
                      "licence": PACKAGES[cfg.package].licence, "sha256": PACKAGES[cfg.package].sha256}
    path = Path(cfg.gguf)
    if not path.is_file():
        raise PumaError(f"--gguf {path}: no such file")
    return path.resolve(), {"gguf": str(path.resolve()), "sha256": file_sha256(path)}


def import_model(cfg: ModelsConfig) -> dict:
    """A pretrained LLM from a GGUF file as a Hugging Face directory in `cfg.out`, written beside and
    swapped in once its smoke test passed; returns the JSON summary."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.import-") as tmp:
        staging = Path(tmp) / "model"
        path, source = gguf_source(cfg, Path(tmp))
        key = hashlib.sha256(json.dumps({"source_sha256": source["sha256"], "version": __version__},
                                        sort_keys=True).encode()).hexdigest()
        cached = reusable(out, key, cfg.overwrite)  # checked before anything under --out changes
        if cached is not None:
            return cached
        open_run(staging, "models", cfg, final=out)
        with CostMeter(staging, "models", cfg) as meter:
            log.info("models: reading %s (dequantizing to float32)", path)
            model, tokenizer = load_gguf(path)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            saved, saved_tok = load_causal_lm(str(staging)), load_tokenizer(str(staging))
            smoke = smoke_test(model, tokenizer, saved, saved_tok, cfg.smoke_prompt, cfg.smoke_tokens)
            log.info("models: smoke test: %r -> %r", smoke["prompt"], smoke["completion"])
            max_length = getattr(saved.config, "max_position_embeddings", None) or 2048
            answers = template_answers(saved_tok, max_length)
            fingerprint = model_fingerprint(saved, saved_tok)
        mcfg = saved.config
        summary = {"path": str(out), "family": mcfg.model_type, "model_type": mcfg.model_type,
                   "hidden_size": mcfg.hidden_size, "layers": mcfg.num_hidden_layers,
                   "vocab_size": len(saved_tok), "parameters": sum(p.numel() for p in saved.parameters()),
                   "tokenizer_class": type(saved_tok).__name__, "template_answers": answers, "source": source,
                   "smoke": smoke, "pretrain_steps": 0, "pretrain": {}, "fingerprint": fingerprint,
                   "content_key": key, "import_wall_s": meter.record.wall_s, "cached": False}
        (staging / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        swap_in(staging, out)
    log.info("models: %s (%s, hidden %d, %d layers, %d parameters) -> %s", source.get("package") or path.name,
             summary["model_type"], summary["hidden_size"], summary["layers"], summary["parameters"], out)
    return summary
