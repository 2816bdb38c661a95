"""A byte-level BPE tokenizer trained on the dataset's own text, saved as a normal HF tokenizer.

Tiny offline models need a vocabulary that covers the item titles they will read.
The tokenizer is trained from an iterable of texts (item titles, the prompt
templates) plus anchor sentences that make every answer ("1".."5", "Yes", "No",
with and without a leading space) a single token: the rating and click heads read
exactly one logit per answer.
"""

from __future__ import annotations

from importlib import resources
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from puma_ray.errors import PumaError

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
ANSWERS = ("1", "2", "3", "4", "5", "Yes", "No")
# BPE merges by frequency: this many anchor lines per answer put each answer's merges
# far above any title word's in a tiny corpus.
_ANCHOR_REPEATS = 200


def shipped_templates() -> list[str]:
    """Texts of the prompt templates shipped in puma_ray/core/templates/."""
    root = resources.files("puma_ray.core") / "templates"
    return sorted((p.read_text() for p in root.iterdir() if p.name.endswith(".txt")))


def _anchor_lines() -> Iterator[str]:
    for _ in range(_ANCHOR_REPEATS):
        for answer in ANSWERS:
            yield f"#Answer: {answer}\n#Answer:{answer} {answer}"


def train_tokenizer(texts: Iterable[str], vocab_size: int, add_bos: bool, bos_is_eos: bool,
                    padding_side: str) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` + templates + answer anchors; bos/eos/pad/unk set.

    `add_bos`, `bos_is_eos` and `padding_side` reproduce the tokenizer conventions that
    real families differ in, so downstream code is exercised on each of them.
    """
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(SPECIAL_TOKENS.values()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)

    def corpus() -> Iterator[str]:
        yield from shipped_templates()
        yield from _anchor_lines()
        yield from texts

    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = SPECIAL_TOKENS["eos_token"] if bos_is_eos else SPECIAL_TOKENS["bos_token"]
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=SPECIAL_TOKENS["eos_token"],
                                   pad_token=SPECIAL_TOKENS["pad_token"], unk_token=SPECIAL_TOKENS["unk_token"],
                                   padding_side=padding_side)
    return fast


def check_answers_single_token(tokenizer) -> bool:
    """Every bare answer must be one token; returns whether the leading-space forms are too.

    A family's own tokenizer class may re-split what BPE merged (transformers maps
    model_type qwen2 to a tokenizer that splits digits, so " 4" -> ["Ġ", "4"]): the
    templates' answer position is resolved per tokenizer downstream, not assumed.
    """
    for answer in ANSWERS:
        ids = tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) != 1:
            raise PumaError(f"tokenizer {type(tokenizer).__name__}: answer {answer!r} is {len(ids)} tokens "
                            f"{tokenizer.convert_ids_to_tokens(ids)}; raise vocab_size")
    return all(len(tokenizer.encode(" " + a, add_special_tokens=False)) == 1 for a in ANSWERS)
